"""Every faster backend against the float32 PyTorch path on the same input: SNR ≥ 30 dB.

Noise is off (prior mean, clean NSF sine), so both sides compute the same function and
the difference is only the backend's arithmetic. OpenVINO in float32 reorders sums
(float32 rounding, 2^-24 relative per operation, grows to ~1e-5 through ~100 layers, i.e.
-100 dB); 80 dB keeps more than 5× (14 dB) margin above that. bfloat16 keeps 8 bits of
mantissa (2^-9 per operation): the issue's 30 dB is the bar.
"""

from __future__ import annotations

import numpy as np
import pytest

import rvc
from rvc.runtime import Backend, cpu_has_bf16, openvino_available

pytestmark = pytest.mark.skipif(not openvino_available(), reason="openvino is not installed")

BACKENDS = [("openvino", "float32", 80.0), ("openvino", "bfloat16", 30.0)]


def snr_db(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = ours.astype(np.float64), ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ours - ref) ** 2)))


def converter(assets, backend: Backend, key: str = "v2_48k") -> rvc.VoiceConverter:
    voice = rvc.load_voice(
        assets[key], index_path=assets["index_768"] if key.startswith("v2") else None, backend=backend
    )
    hubert = rvc.load_content_encoder(assets["hubert_fp32"], backend=backend)
    return rvc.VoiceConverter(voice, hubert, rvc.load_f0_estimator("pm"), noise=False)


@pytest.fixture(scope="module")
def reference(assets, speech_16k):
    conv = converter(assets, Backend())
    stream = rvc.StreamingConverter(conv, 16000, block_ms=250, context_ms=500)
    return conv.convert(speech_16k, 16000), (stream.process(speech_16k), stream.flush())


@pytest.mark.parametrize(("runtime", "precision", "min_snr"), BACKENDS)
def test_backend_output_matches_float32_torch(assets, speech_16k, reference, runtime, precision, min_snr):
    if precision == "bfloat16" and not cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16")
    conv = converter(assets, Backend(runtime, precision))
    whole, streamed = reference
    ours = conv.convert(speech_16k, 16000)
    assert ours.shape == whole.shape
    whole_snr = snr_db(ours, whole)
    print(f"{runtime} {precision}: whole-file SNR {whole_snr:.1f} dB")
    assert whole_snr >= min_snr
    stream = rvc.StreamingConverter(conv, 16000, block_ms=250, context_ms=500)
    blocks, tail = stream.process(speech_16k), stream.flush()
    ref_blocks, ref_tail = streamed
    # Whole blocks have a fixed length. The flushed tail is the crossfade and search region
    # less the last SOLA offset: another rounding may pick an offset one frame (search) apart.
    assert blocks.shape == ref_blocks.shape
    assert abs(len(tail) - len(ref_tail)) <= stream.search_frames * stream.hop
    streamed_snr = snr_db(blocks, ref_blocks)
    print(f"{runtime} {precision}: streamed SNR {streamed_snr:.1f} dB")
    assert streamed_snr >= min_snr


def test_backend_runs_a_voice_without_pitch_guidance(assets, speech_16k):
    ref = converter(assets, Backend(), "v1_32k_nof0").convert(speech_16k, 16000)
    ours = converter(assets, Backend("openvino", "float32"), "v1_32k_nof0").convert(speech_16k, 16000)
    assert snr_db(ours, ref) >= 80.0


def test_unknown_runtime_or_precision_is_refused():
    with pytest.raises(ValueError, match="unknown runtime"):
        Backend("tensorrt")
    with pytest.raises(ValueError, match="unknown precision"):
        Backend("openvino", "int4")
