"""Random-weight RVC assets in the real file formats, built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testing import rvc_assets as ra

HUBERT_LAYERS = 2
HUBERT_FFN = 512


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Paths of small random assets; the fairseq file ``hubert_fp32`` and the directory
    ``hubert_dir`` hold the same network (same seed), ``hubert`` is the fp16 fairseq file."""
    d = tmp_path_factory.mktemp("rvc_assets")
    return {
        "v2_48k": ra.write_voice(d / "v2_48k.pth", "v2", 48000, seed=1),
        "v1_40k": ra.write_voice(d / "v1_40k.pth", "v1", 40000, seed=2),
        "v1_32k_nof0": ra.write_voice(d / "v1_32k_nof0.pth", "v1", 32000, f0=False, seed=3),
        "v2_40k_nof0": ra.write_voice(d / "v2_40k_nof0.pth", "v2", 40000, f0=False, seed=4),
        "v2_48k_nof0": ra.write_voice(d / "v2_48k_nof0.pth", "v2", 48000, f0=False, seed=4),
        "index_768": ra.write_index(d / "v2.index", 768, seed=5),
        "index_256": ra.write_index(d / "v1.index", 256, seed=6),
        "hubert": ra.write_fairseq_hubert(d / "hubert_base.pt", num_layers=HUBERT_LAYERS, ffn=HUBERT_FFN, seed=7),
        "hubert_fp32": ra.write_fairseq_hubert(
            d / "hubert_fp32.pt", num_layers=HUBERT_LAYERS, ffn=HUBERT_FFN, seed=7, fp16=False
        ),
        "hubert_dir": ra.write_transformers_hubert(d / "hubert_tf", num_layers=HUBERT_LAYERS, ffn=HUBERT_FFN, seed=7),
        "rmvpe": ra.write_rmvpe(d / "rmvpe.pt", seed=8),
        # no transformer layers: features depend only on nearby audio, like a trained
        # HuBERT's mostly do (random attention layers mix the whole buffer; see test_streaming)
        "hubert_local": ra.write_fairseq_hubert(d / "hubert_local.pt", num_layers=0, seed=7),
    }


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    """Real speech (espeak-ng, offline): ``(N,) float32`` and its sample rate (22 050 Hz)."""
    from tts_server.engines.espeak import synthesize_speech

    return synthesize_speech("The quick brown fox jumps over the lazy dog, and then it rests.")


@pytest.fixture(scope="session")
def speech_16k(speech) -> np.ndarray:
    from rvc.converter import resample

    audio, sr = speech
    return resample(audio, sr, 16000)


@pytest.fixture(scope="session")
def reference():
    from tests.rvc.rvc_reference import Reference

    return Reference()
