"""Unusable files raise VoiceFileError naming the file and the problem."""

from __future__ import annotations

import pickle

import pytest
import torch

import rvc
from testing import rvc_assets as ra


def test_error_class_is_a_value_error():
    assert issubclass(rvc.VoiceFileError, ValueError)


def test_missing_voice(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(rvc.VoiceFileError, match=r"nope\.pth.*does not exist"):
        rvc.load_voice(path)


def test_truncated_voice(assets, tmp_path):
    path = tmp_path / "cut.pth"
    data = assets["v2_48k"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(rvc.VoiceFileError, match=r"cut\.pth.*truncated"):
        rvc.load_voice(path)


def test_text_file_as_voice(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(rvc.VoiceFileError, match=r"notes\.pth"):
        rvc.load_voice(path)


def test_state_dict_that_is_not_an_rvc_voice(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, path)
    with pytest.raises(rvc.VoiceFileError, match=r"other\.pth is not an RVC voice file"):
        rvc.load_voice(path)


def test_voice_with_missing_tensors(tmp_path):
    ckpt = ra.build_voice_checkpoint("v2", 48000)
    del ckpt["weight"]["dec.conv_post.weight"]
    path = tmp_path / "partial.pth"
    torch.save(ckpt, path)
    with pytest.raises(rvc.VoiceFileError, match=r"partial\.pth.*missing.*dec\.conv_post\.weight"):
        rvc.load_voice(path)


def test_voice_whose_config_does_not_fit_its_weights(tmp_path):
    ckpt = ra.build_voice_checkpoint("v2", 48000)
    ckpt["config"][3] = 64  # hidden_channels
    path = tmp_path / "mismatch.pth"
    torch.save(ckpt, path)
    with pytest.raises(rvc.VoiceFileError, match=r"mismatch\.pth.*do not match the config"):
        rvc.load_voice(path)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": Boom()}))
    with pytest.raises(rvc.VoiceFileError, match=r"evil\.pth.*cannot be read safely"):
        rvc.load_voice(path)


def test_index_of_the_wrong_dimension(assets):
    with pytest.raises(rvc.VoiceFileError, match=r"v1\.index.*dimension 256.*768"):
        rvc.load_voice(assets["v2_48k"], index_path=assets["index_256"])


def test_index_that_is_not_an_index(tmp_path, assets):
    path = tmp_path / "bad.index"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(rvc.VoiceFileError, match=r"bad\.index.*not a readable faiss index"):
        rvc.load_voice(assets["v2_48k"], index_path=path)
    with pytest.raises(rvc.VoiceFileError, match=r"gone\.index.*does not exist"):
        rvc.load_voice(assets["v2_48k"], index_path=tmp_path / "gone.index")


def test_hubert_of_the_wrong_size(tmp_path):
    path = ra.write_fairseq_hubert(tmp_path / "hubert_large.pt", num_layers=1, hidden=1024, ffn=256)
    with pytest.raises(rvc.VoiceFileError, match=r"hubert_large\.pt.*hidden size is 1024.*768"):
        rvc.load_content_encoder(path)


def test_transformers_hubert_of_the_wrong_size(tmp_path):
    from transformers import HubertConfig

    HubertConfig(hidden_size=512, num_attention_heads=8).save_pretrained(str(tmp_path / "small"))
    with pytest.raises(rvc.VoiceFileError, match=r"small.*hidden size is 512"):
        rvc.load_content_encoder(tmp_path / "small")


def test_truncated_and_missing_hubert(assets, tmp_path):
    path = tmp_path / "hubert_cut.pt"
    data = assets["hubert"].read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(rvc.VoiceFileError, match=r"hubert_cut\.pt.*truncated"):
        rvc.load_content_encoder(path)
    with pytest.raises(rvc.VoiceFileError, match=r"absent\.pt.*does not exist"):
        rvc.load_content_encoder(tmp_path / "absent.pt")


def test_voice_file_given_as_hubert(assets):
    with pytest.raises(rvc.VoiceFileError, match=r"v2_48k\.pth is not a fairseq HuBERT checkpoint"):
        rvc.load_content_encoder(assets["v2_48k"])


def test_hubert_without_final_proj_cannot_serve_a_v1_voice(assets, tmp_path):
    directory = ra.write_transformers_hubert(tmp_path / "nofp", num_layers=1, final_proj=False)
    encoder = rvc.load_content_encoder(directory)
    with pytest.raises(rvc.VoiceFileError, match=r"nofp.*final_proj"):
        rvc.VoiceConverter(rvc.load_voice(assets["v1_40k"]), encoder, rvc.load_f0_estimator("pm"))


def test_bad_rmvpe_files(assets, tmp_path):
    with pytest.raises(rvc.VoiceFileError, match=r"v2_48k\.pth is not an RMVPE"):
        rvc.load_f0_estimator("rmvpe", rmvpe_path=assets["v2_48k"])
    path = tmp_path / "rmvpe_cut.pt"
    data = assets["rmvpe"].read_bytes()
    path.write_bytes(data[:1000])
    with pytest.raises(rvc.VoiceFileError, match=r"rmvpe_cut\.pt.*truncated"):
        rvc.load_f0_estimator("rmvpe", rmvpe_path=path)
