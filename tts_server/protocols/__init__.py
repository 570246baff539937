"""The protocols of the other seeds' servers, each a thin adapter over the same pipeline.

One module per protocol, each with ``add_routes(app)`` (called by
:func:`tts_server.app.create_app`); ``/ws/stream`` and ``/api/speak`` (seed 004) stay in
:mod:`tts_server.app`. Every route passes :mod:`tts_server.guards` like the others.

- :mod:`.openai_speech`: ``POST /v1/audio/speech``, ``GET /v1/models``, ``GET /v1/audio/voices``.
- :mod:`.soprano_ws`: seed 002, ``/ws/tts``.
- :mod:`.kokoro_live`: seed 001, ``/ws/tts/live``.
- :mod:`.kokorox`: seed 000, ``/ws/kokorox`` and a WebSocket upgrade of ``/``.
"""
