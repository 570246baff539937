"""The Discord voice bot: speaks an LLM's reply while it is still being written.

The way through, one module per stage::

    cog.py        the commands (join, leave, speak, say, stop, voice, pitch), thin
    session.py    per guild: voice connection, long-lived player, reply queue, settings
    speech.py     one reply: text pieces → TTS stream → audio buffer, start delay, barge-in
    llm.py        OpenAI-compatible streaming chat (llama.cpp, Ollama, vLLM, OpenAI, ...)
    tts.py        the TTS pipeline embedded in-process, or a remote tts-server
    pacing.py     when a reply may start so that it never stalls (from the measured rtf)
    audio.py      the AudioSource: float32 mono 48 kHz in, 20 ms s16le stereo frames out
    live_text.py  the reply text in the channel, edited as it grows
    history.py    short conversation history per channel
    app.py        assembles and runs it all (``voice-bot`` → :func:`bot.__main__.main`)

The bot reaches the TTS pipeline only through the :mod:`tts_server` package's public
face. Offline Discord stand-ins and a scripted LLM server for the tests and the
benchmark live outside the product, in ``testing/``.
"""
