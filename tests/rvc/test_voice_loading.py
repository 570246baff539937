"""Loading voice files, indexes, HuBERT and RMVPE in their real formats."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import rvc
from rvc.voice import fold_weight_norm
from testing import rvc_assets as ra


@pytest.mark.parametrize(
    ("key", "version", "sample_rate", "f0", "feature_dim", "hop"),
    [
        ("v2_48k", "v2", 48000, True, 768, 480),
        ("v1_40k", "v1", 40000, True, 256, 400),
        ("v1_32k_nof0", "v1", 32000, False, 256, 320),
        ("v2_40k_nof0", "v2", 40000, False, 768, 400),
    ],
)
def test_voice_files_load_with_their_version_rate_and_pitch_guidance(
    assets, key, version, sample_rate, f0, feature_dim, hop
):
    voice = rvc.load_voice(assets[key])
    assert (voice.version, voice.sample_rate, voice.f0) == (version, sample_rate, f0)
    assert voice.feature_dim == feature_dim and voice.hop_length == hop
    assert voice.name == key and voice.dtype == torch.float32
    assert voice.synthesizer.emb_g.num_embeddings == 109


def test_files_are_in_the_webui_format(assets):
    ckpt = torch.load(assets["v2_48k"], map_location="cpu", weights_only=True)
    assert set(ckpt) == {"weight", "config", "info", "sr", "f0", "version"}
    assert len(ckpt["config"]) == 18 and ckpt["sr"] == "48k" and ckpt["version"] == "v2" and ckpt["f0"] == 1
    assert all(v.dtype == torch.float16 for v in ckpt["weight"].values())
    assert "dec.ups.0.weight_g" in ckpt["weight"] and "dec.ups.0.weight_v" in ckpt["weight"]
    assert "flow.flows.0.enc.in_layers.0.weight_v" in ckpt["weight"]
    assert not any(k.startswith("enc_q.") for k in ckpt["weight"])


@pytest.mark.numerical
def test_weight_norm_is_folded_to_g_times_direction_of_v(assets):
    ckpt = torch.load(assets["v2_48k"], map_location="cpu", weights_only=True)
    g, v = ckpt["weight"]["dec.ups.1.weight_g"].float(), ckpt["weight"]["dec.ups.1.weight_v"].float()
    expected = torch._weight_norm(v, g, 0)
    voice = rvc.load_voice(assets["v2_48k"])
    # the same norm, summed in another order (ATen's vectorised reduction): ≤ 1.5e-8, 0.07 of this bound
    torch.testing.assert_close(voice.synthesizer.dec.ups[1].weight, expected, rtol=1e-6, atol=1e-7)
    folded = fold_weight_norm({"a.weight_g": g, "a.weight_v": v, "b": v})
    assert set(folded) == {"a.weight", "b"}


@pytest.mark.numerical
def test_parametrization_names_and_extra_keys_load_the_same_network(assets, tmp_path):
    ckpt = ra.build_voice_checkpoint("v2", 48000, seed=1, weight_norm_names="parametrizations")
    ckpt.update(speaker_info={"name": "x"}, embedder_model="contentvec", vocoder="HiFi-GAN", author="someone")
    del ckpt["version"]  # some tools omit it; the weights say v2
    path = tmp_path / "applio.pth"
    torch.save(ckpt, path)
    a, b = rvc.load_voice(path), rvc.load_voice(assets["v2_48k"])
    assert a.version == "v2"
    for (ka, ta), (kb, tb) in zip(a.synthesizer.state_dict().items(), b.synthesizer.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(ta, tb)


@pytest.mark.numerical
def test_index_is_loaded_and_blends_retrieved_features(assets):
    voice = rvc.load_voice(assets["v2_48k"], index_path=assets["index_768"], index_rate=0.75)
    index = voice.index
    assert index is not None and index.dim == 768 and voice.index_rate == 0.75
    own = index.vectors[:5]
    # a stored vector is its own nearest neighbour: blending it keeps it (weights 1/d² ≈ ∞)
    np.testing.assert_allclose(index.blend(own + 1e-4, 1.0), own, atol=1e-3)  # measured 0
    feats = np.random.default_rng(0).standard_normal((7, 768)).astype(np.float32)
    np.testing.assert_array_equal(index.blend(feats, 0.0), feats)
    assert not np.allclose(index.blend(feats, 0.75), feats)


def test_fp16_hubert_checkpoint_loads_with_weights_only_and_no_fairseq(assets):
    import sys

    from rvc.checkpoint import FairseqDictionaryStub, load_checkpoint

    # like the real file, the pickle references fairseq's Dictionary: plain torch refuses it
    with pytest.raises(Exception, match=re.escape("fairseq.data.dictionary.Dictionary")):
        torch.load(assets["hubert"], map_location="cpu", weights_only=True)
    ckpt = load_checkpoint(assets["hubert"], "HuBERT")
    assert set(ckpt) >= {"args", "cfg", "model", "task_state"}
    dictionary = ckpt["task_state"]["dictionaries"][0]
    assert isinstance(dictionary, FairseqDictionaryStub) and len(dictionary.symbols) == 504
    assert ckpt["model"]["encoder.pos_conv.0.weight_g"].shape == (1, 1, 128)
    assert ckpt["model"]["label_embs_concat"].dtype == torch.float16
    encoder = rvc.load_content_encoder(assets["hubert"])
    assert "fairseq" not in sys.modules
    assert encoder.num_layers == 2 and encoder.final_proj is not None
    feats = encoder(torch.zeros(16000), "v2")
    assert feats.shape == (1, 49, 768)
    assert encoder(torch.zeros(16000), "v1").shape == (1, 49, 256)


@pytest.mark.numerical
def test_fairseq_file_and_transformers_directory_give_the_same_features(assets, speech_16k):
    a = rvc.load_content_encoder(assets["hubert_fp32"])(torch.from_numpy(speech_16k), "v2")
    b = rvc.load_content_encoder(assets["hubert_dir"])(torch.from_numpy(speech_16k), "v2")
    # The same float32 network from both files: equal to the bit (measured 0 with 1 to 4 threads and every
    # kernel variant). The fp16 file (weights rounded to float16) differs by 9.3e-4 of the peak: 9× the bound.
    assert float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def test_f0_estimators_by_name(assets):
    assert rvc.load_f0_estimator("pm").name == "pm"
    assert rvc.load_f0_estimator("rmvpe", rmvpe_path=assets["rmvpe"]).name == "rmvpe"
    with pytest.raises(ValueError, match="rmvpe_path"):
        rvc.load_f0_estimator("rmvpe")
    with pytest.raises(ValueError, match="unknown F0 method"):
        rvc.load_f0_estimator("yin")


@pytest.mark.numerical
def test_pm_finds_the_pitch_of_a_tone():
    t = np.arange(16000) / 16000
    f0 = rvc.load_f0_estimator("pm").estimate(0.5 * np.sin(2 * np.pi * 220 * t), 100)
    assert f0.shape == (100,)
    # Praat in float64: 219.9996 Hz, 94 % of the frames voiced
    assert np.median(f0[f0 > 0]) == pytest.approx(220, rel=0.01) and (f0 > 0).mean() > 0.8
