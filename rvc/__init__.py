"""RVC (Retrieval-based Voice Conversion) inference: whole-file and streaming.

Loads real RVC WebUI / Applio voice files and converts speech into the voice:
content features (HuBERT-base, :mod:`rvc.content`) + F0 (Praat ``pm`` or RMVPE,
:mod:`rvc.f0`) → the voice's VITS/NSF-HiFi-GAN synthesizer (:mod:`rvc.synthesizer`).
:class:`VoiceConverter` converts whole utterances; :class:`StreamingConverter` converts
block by block with left context, a pitch cache and a SOLA crossfade.

Typical use::

    voice = rvc.load_voice("voice.pth", index_path="voice.index")
    hubert = rvc.load_content_encoder("hubert_base.pt")
    f0 = rvc.load_f0_estimator("rmvpe", rmvpe_path="rmvpe.pt")
    converter = rvc.VoiceConverter(voice, hubert, f0)
    stream = rvc.StreamingConverter(converter, input_sample_rate=32000)
    out = stream.process(chunk, pitch_shift=0.0)   # float32 at stream.output_sample_rate

The names below are this package's public face. They are imported on first use, so
``import rvc`` (or ``from rvc import PITCH_SHIFT_LIMIT``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .content import ContentEncoder, load_content_encoder
    from .converter import SegmentSettings, VoiceConverter
    from .errors import VoiceFileError
    from .f0 import F0Estimator, load_f0_estimator
    from .pitch import PITCH_SHIFT_LIMIT
    from .runtime import Backend, cpu_has_bf16, openvino_available
    from .streaming import (
        CANDIDATE_BLOCKS_MS,
        CANDIDATE_CONTEXTS_MS,
        StreamingConverter,
        choose_block_settings,
        measure_block_ms,
    )
    from .voice import Voice, load_index, load_voice

#: Public name → the module that defines it.
_HOME = {
    "ContentEncoder": "content",
    "load_content_encoder": "content",
    "SegmentSettings": "converter",
    "VoiceConverter": "converter",
    "VoiceFileError": "errors",
    "F0Estimator": "f0",
    "load_f0_estimator": "f0",
    "PITCH_SHIFT_LIMIT": "pitch",
    "Backend": "runtime",
    "cpu_has_bf16": "runtime",
    "openvino_available": "runtime",
    "StreamingConverter": "streaming",
    "CANDIDATE_BLOCKS_MS": "streaming",
    "CANDIDATE_CONTEXTS_MS": "streaming",
    "choose_block_settings": "streaming",
    "measure_block_ms": "streaming",
    "Voice": "voice",
    "load_index": "voice",
    "load_voice": "voice",
}

__all__ = [
    "CANDIDATE_BLOCKS_MS",
    "CANDIDATE_CONTEXTS_MS",
    "PITCH_SHIFT_LIMIT",
    "Backend",
    "ContentEncoder",
    "F0Estimator",
    "SegmentSettings",
    "StreamingConverter",
    "Voice",
    "VoiceConverter",
    "VoiceFileError",
    "choose_block_settings",
    "cpu_has_bf16",
    "load_content_encoder",
    "load_f0_estimator",
    "load_index",
    "load_voice",
    "measure_block_ms",
    "openvino_available",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'rvc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
