"""Test and benchmark support (not shipped): stand-ins for what cannot be had offline.

* :mod:`testing.soprano_model` — random-weight Soprano model directories in the Hub layout;
* :mod:`testing.rvc_assets` — random-weight RVC voices, indexes, HuBERT and RMVPE files
  in their exact on-disk formats;
* :mod:`testing.discord_voice` — discord.py's real voice client with the network
  replaced by a recorder, and the few Discord models the cog touches;
* :mod:`testing.llm_server` — a scripted OpenAI-compatible streaming chat server;
* :mod:`testing.segmenter_reference` — the segmenter before it became linear-time, the
  oracle of a differential test and the baseline of ``benchmarks.segmenter``.

The real loading and inference code runs on all of them: only the weights (and the
network) are stand-ins.
"""
