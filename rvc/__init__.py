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
"""

from .content import ContentEncoder, load_content_encoder
from .converter import SegmentSettings, VoiceConverter
from .errors import VoiceFileError
from .f0 import F0Estimator, load_f0_estimator
from .streaming import StreamingConverter
from .voice import Voice, load_index, load_voice

__all__ = [
    "ContentEncoder", "F0Estimator", "SegmentSettings", "StreamingConverter", "Voice", "VoiceConverter",
    "VoiceFileError", "load_content_encoder", "load_f0_estimator", "load_index", "load_voice",
]
