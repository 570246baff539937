"""Our synthesizer, content features, RMVPE F0 and whole-file conversion equal the reference's.

The reference is infer-rvc-python 1.3.1 (the RVC WebUI's model code), run live on the
same random-weight files and inputs (see ``rvc_reference.py``); noise is drawn from
generators seeded alike. Tolerance: max abs error ≤ 1e-4 of the reference's peak.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rvc
from rvc.pitch import coarse_pitch
from rvc.rmvpe import mel_filterbank

pytestmark = pytest.mark.numerical

#: Max abs error as a fraction of the reference's peak. Ours and the reference run the same
#: float32 networks, not the same operations (weight norm folded, the NSF phase in float64,
#: other kernels by shape). Measured over 1 to 4 threads and ATen default/AVX2/AVX-512, oneDNN
#: SSE4.1/AVX2/AVX-512 and MKL SSE4.2/AVX2/AVX-512 kernels, and four renditions of the speech:
#: ≤ 1.7e-5 for the whole-file RMVPE conversion (F0 differences integrate into the sine's
#: phase), ≤ 5.3e-6 for the other conversions, ≤ 2.2e-6 for the synthesizer alone, 0 for
#: HuBERT and RMVPE. A pitch shift one cent off errs by 0.87.
TOLERANCE = 1e-4


def relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("key", ["v2_48k", "v1_40k", "v1_32k_nof0", "v2_40k_nof0"])
def test_synthesizer_equals_reference_with_seeded_noise(reference, assets, key):
    ref_net = reference.synthesizer(assets[key])
    voice = rvc.load_voice(assets[key])
    frames = 150
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, frames, voice.feature_dim, generator=gen)
    f0 = (140 + 60 * torch.sin(torch.arange(frames) / 9.0))[None]
    f0[:, 60:80] = 0  # an unvoiced stretch
    pitch = torch.from_numpy(coarse_pitch(f0[0].numpy()))[None]
    torch.manual_seed(123)
    with torch.no_grad():
        if voice.f0:
            expected = ref_net.infer(feats, torch.tensor([frames]), pitch, f0, torch.tensor([0]))[0][0, 0]
        else:
            expected = ref_net.infer(feats, torch.tensor([frames]), torch.tensor([0]))[0][0, 0]
    ours = voice.synthesizer.infer(feats, pitch, f0, 0, generator=torch.Generator().manual_seed(123))[0]
    assert ours.shape == (frames * voice.hop_length,)
    assert float(expected.abs().max()) > 0.01  # a real signal, not silence
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize(
    ("hubert_key", "version"),
    [("hubert_fp32", "v1"), ("hubert_fp32", "v2"), ("hubert_dir", "v1"), ("hubert_dir", "v2")],
)
def test_content_features_equal_reference(reference, assets, speech_16k, hubert_key, version):
    ref_model = reference.hubert(assets["hubert_dir"])
    x = torch.from_numpy(speech_16k)[None]
    with torch.no_grad():
        expected = ref_model.extract_features(x, output_layer=9 if version == "v1" else 12)[0]
        if version == "v1":
            expected = ref_model.final_proj(expected)
    ours = rvc.load_content_encoder(assets[hubert_key])(x[0], version)
    assert relative_error(ours, expected) <= TOLERANCE


def test_mel_filterbank_equals_transformers(reference):
    from tests.rvc.rvc_reference import transformers_mel

    ref = transformers_mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)
    assert relative_error(mel_filterbank(), ref) <= 1e-6  # numpy only (no torch kernels): measured 0


def test_rmvpe_f0_equals_reference(reference, assets, speech_16k):
    from tests.rvc.rvc_reference import transformers_mel

    ref_model = reference.rmvpe_model(assets["rmvpe"])
    # independent mel filters in the reference (ours are checked against them above)
    ref_model.mel_extractor.mel_basis = torch.from_numpy(
        transformers_mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000, htk=True)
    )
    expected = ref_model.infer_from_audio(speech_16k, thred=0.03)
    est = rvc.load_f0_estimator("rmvpe", rmvpe_path=assets["rmvpe"])
    ours = est.estimate(speech_16k, len(expected))
    assert (expected > 0).any()
    assert relative_error(ours, expected) <= TOLERANCE
    ref_sal = ref_model.mel2hidden(ref_model.mel_extractor(torch.from_numpy(speech_16k)[None]))[0].numpy()
    assert relative_error(est.salience(speech_16k), ref_sal) <= TOLERANCE


@pytest.mark.parametrize(
    ("voice_key", "f0_method", "index_key", "pitch_shift"),
    [("v2_48k", "pm", "index_768", 3.0), ("v1_40k", "rmvpe", None, -5.0), ("v1_32k_nof0", "pm", "index_256", 0.0)],
)
def test_whole_file_conversion_equals_reference(
    reference, assets, speech_16k, voice_key, f0_method, index_key, pitch_shift
):
    index = assets[index_key] if index_key else None
    expected, expected_int16 = reference.convert(
        assets[voice_key],
        assets["hubert_dir"],
        speech_16k,
        f0_method=f0_method,
        rmvpe_path=assets["rmvpe"],
        index_path=index,
        index_rate=0.75 if index else 0.0,
        pitch_shift=pitch_shift,
        seed=42,
    )
    voice = rvc.load_voice(assets[voice_key], index_path=index, index_rate=0.75)
    converter = rvc.VoiceConverter(
        voice,
        rvc.load_content_encoder(assets["hubert_fp32"]),
        rvc.load_f0_estimator(f0_method, rmvpe_path=assets["rmvpe"]),
        seed=42,
    )
    ours = converter.convert(speech_16k, 16000, pitch_shift=pitch_shift)
    assert ours.dtype == np.float32
    assert relative_error(ours, expected) <= TOLERANCE
    # Its int16 output is that float output ×32768, truncated: within 1 LSB of it, so ours is within
    # 1 LSB plus the tolerance (measured ≤ 1.2 LSB against 3.1). Rounding ours and allowing 1 LSB, as
    # before, left 0.5 LSB for float32 error, which reaches 0.35 LSB here.
    assert np.abs(ours * 32768.0 - expected_int16).max() < 1 + TOLERANCE * np.abs(expected).max() * 32768
