"""The Soprano engine: real loading code, exact streaming, the package as reference, bad files."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time

import numpy as np
import pytest
import torch

from tests.conftest import EXACT, TEST_AUDIO_TOKENS
from tts_server.engines import soprano as soprano_mod
from tts_server.engines.base import EngineLoadError
from tts_server.engines.soprano import TOKEN_SAMPLES, SopranoEngine, prepare_text, resolve_model_dir

SENTENCE = "Hello world, this is a test of the streaming system."

# Streamed and one-shot decoding of the same latents run the same float32 decoder over
# windows of different lengths, so they differ by float32 reordering only: measured ≤ 1.5e-6
# of the peak (≤ 1.7e-6 with the strong decoder below), against EXACT = 1e-5 (tests/conftest.py).
#: "Measurably wrong": 10× EXACT. The wrong schedules below err by ≥ 1.6e-3 of the peak (16×).
WRONG = 1e-4


@pytest.mark.numerical
def test_streamed_chunks_equal_one_shot_decoding(soprano_engine):
    chunks = list(soprano_engine.synthesize(SENTENCE))
    latents = torch.stack(list(soprano_engine.latents(prepare_text(SENTENCE))))
    assert latents.shape == (TEST_AUDIO_TOKENS, 512)
    one_shot = soprano_engine.decode(latents).numpy()
    streamed = np.concatenate(chunks)
    assert streamed.dtype == np.float32
    assert streamed.shape == one_shot.shape == ((TEST_AUDIO_TOKENS - 1) * TOKEN_SAMPLES,)
    np.testing.assert_allclose(streamed, one_shot, rtol=0, atol=EXACT * np.abs(one_shot).max())


def test_first_chunk_comes_after_four_latents_then_chunks_grow(soprano_engine):
    latents = iter(torch.randn(60, 512))  # all at once: the listener's lead grows fastest
    sizes = [len(c) for c in soprano_engine.stream_decode(latents)]
    assert sizes[0] == 4 * TOKEN_SAMPLES - soprano_mod.LOOKAHEAD_SAMPLES == 1536
    assert all(TOKEN_SAMPLES <= n <= soprano_engine.chunk_samples for n in sizes[1:-1])
    assert soprano_engine.chunk_samples in sizes  # grew to the largest chunk
    assert sum(sizes) == 59 * TOKEN_SAMPLES


def test_chunks_stay_small_while_the_listener_has_little_lead(soprano_engine):
    """When latents come at about real time (a slow machine), chunks must not grow: a
    long chunk would take longer to make than the audio the listener has left."""

    def realtime_latents():
        for latent in torch.randn(30, 512):
            time.sleep(0.064 * 0.9)  # one 64 ms token every 58 ms: rtf 0.9
            yield latent

    sizes = [len(c) for c in soprano_engine.stream_decode(realtime_latents())]
    assert max(sizes[:-1]) <= 2 * TOKEN_SAMPLES
    assert sum(sizes) == 29 * TOKEN_SAMPLES


@pytest.mark.numerical
def test_audio_equals_the_soprano_package_one_shot_infer(soprano_dir, soprano_engine):
    """Reference: ``soprano-tts``'s own ``SopranoTTS.infer`` on the same files and sentence."""
    from soprano.tts import SopranoTTS

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints device and latency
        reference = SopranoTTS(model_path=str(soprano_dir), device="cpu").infer(SENTENCE).numpy()
    ours = np.concatenate(list(soprano_engine.synthesize(SENTENCE)))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=EXACT * np.abs(reference).max())


def _strong_decoder_engine(soprano_dir) -> SopranoEngine:
    """An engine whose decoder uses its whole receptive field (random init decays too fast to show it).

    Residual gain 2 in the ConvNeXt blocks: with 1, one token less look-ahead erred by only
    1.9e-4 of the peak, too close to :data:`WRONG` for a test that must fail it; with 2 it
    errs by ≥ 1.6e-3 while exact decoding stays within 1.7e-6.
    """
    engine = SopranoEngine(soprano_dir, device="cpu")
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for block in engine.decoder.decoder.convnext:
            block.dwconv.weight.copy_(torch.randn(block.dwconv.weight.shape, generator=g) * 0.6)
            block.gamma.fill_(2.0)
        engine.decoder.decoder.embed.weight.mul_(20)
    return engine


@pytest.mark.numerical
def test_chunk_edges_are_exact_with_the_minimal_lookahead_and_not_with_less(soprano_dir, monkeypatch):
    engine = _strong_decoder_engine(soprano_dir)
    latents = torch.randn(30, 512, generator=torch.Generator().manual_seed(3))
    one_shot = engine.decode(latents).numpy()
    scale = np.abs(one_shot).max()
    streamed = np.concatenate(list(engine.stream_decode(iter(latents))))
    assert np.abs(streamed - one_shot).max() <= EXACT * scale  # measured ≤ 1.7e-6 (any schedule, any kernels)

    # Less look-ahead or left context is measurably wrong: the bounds are not loose guesses.
    monkeypatch.setattr(soprano_mod, "LOOKAHEAD_SAMPLES", soprano_mod.LOOKAHEAD_SAMPLES - TOKEN_SAMPLES)
    short_right = np.concatenate(list(engine.stream_decode(iter(latents))))
    assert np.abs(short_right - one_shot).max() > WRONG * scale  # measured ≥ 1.6e-3 (chunks of 1 to 8 tokens)
    monkeypatch.undo()

    monkeypatch.setattr(soprano_mod, "LEFT_CONTEXT_SAMPLES", soprano_mod.LEFT_CONTEXT_SAMPLES - 2 * TOKEN_SAMPLES)
    short_left = np.concatenate(list(engine.stream_decode(iter(latents))))
    assert np.abs(short_left - one_shot).max() > WRONG * scale  # measured ≥ 3.3e-2 (chunks of 1 to 8 tokens)


@pytest.mark.parametrize("tokens", [0, 1])
def test_sentence_with_no_decodable_audio_yields_nothing(make_soprano_dir, tokens):
    engine = SopranoEngine(make_soprano_dir(tokens), device="cpu")
    assert list(engine.synthesize(SENTENCE)) == []
    assert list(engine.synthesize("And the next sentence still works.")) == []


def test_unspeakable_text_yields_nothing(soprano_engine):
    assert list(soprano_engine.synthesize("😀 ... ---")) == []


def test_runaway_generation_is_capped_by_text_length(make_soprano_dir):
    engine = SopranoEngine(make_soprano_dir(None), device="cpu", max_tokens_per_char=2.0)
    text = prepare_text("Hi there.")
    latents = list(engine.latents(text, int(16 + 2.0 * len(text))))
    assert len(latents) == int(16 + 2.0 * len(text))  # random weights never stop by themselves


def test_engine_prints_nothing_to_stdout(soprano_dir, capfd):
    engine = SopranoEngine(soprano_dir, device="cpu")
    list(engine.synthesize(SENTENCE))
    assert capfd.readouterr().out == ""


def test_text_preparation_fixes_the_normaliser_quirks():
    assert prepare_text("We have 1,234 cats.") == "we have one thousand two hundred thirty-four cats."
    assert "for example" in prepare_text("Fruit, e.g. apples.")
    assert "dot" not in prepare_text("The U.S. team at 5 p.m. today.")
    assert prepare_text("😀") == ""


# -- bad model directories ---------------------------------------------------------------------


@pytest.fixture
def broken_dir(soprano_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(soprano_dir, target)
    return target


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(EngineLoadError, match="does not exist"):
        resolve_model_dir(model_path=tmp_path / "nope")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "decoder.pth", "tokenizer.json"])
def test_missing_file_is_named(broken_dir, name):
    (broken_dir / name).unlink()
    with pytest.raises(EngineLoadError, match=name.replace(".", r"\.")):
        resolve_model_dir(model_path=broken_dir)


def test_corrupt_config_is_named(broken_dir):
    (broken_dir / "config.json").write_text("{not json")
    with pytest.raises(EngineLoadError, match=r"config\.json.*JSON"):
        SopranoEngine(broken_dir, device="cpu")


def test_config_of_another_model_is_named(broken_dir):
    config = json.loads((broken_dir / "config.json").read_text())
    config["hidden_size"] = 768
    (broken_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineLoadError, match=r"config\.json.*not a Soprano backbone"):
        SopranoEngine(broken_dir, device="cpu")


def test_truncated_weights_are_named(broken_dir):
    weights = broken_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EngineLoadError, match=r"model\.safetensors"):
        SopranoEngine(broken_dir, device="cpu")


def test_corrupt_decoder_is_named(broken_dir):
    (broken_dir / "decoder.pth").write_bytes(b"garbage" * 100)
    with pytest.raises(EngineLoadError, match=r"decoder\.pth.*not a readable"):
        SopranoEngine(broken_dir, device="cpu")


def test_decoder_of_another_layout_is_named(broken_dir):
    torch.save({"weight": torch.zeros(3)}, broken_dir / "decoder.pth")
    with pytest.raises(EngineLoadError, match=r"decoder\.pth.*does not match"):
        SopranoEngine(broken_dir, device="cpu")


def test_corrupt_tokenizer_is_named(broken_dir):
    (broken_dir / "tokenizer.json").write_text("[]")
    with pytest.raises(EngineLoadError, match=r"tokenizer"):
        SopranoEngine(broken_dir, device="cpu")


def test_hub_model_unavailable_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(soprano_mod.EngineUnavailable, match="huggingface-cli download"):
        resolve_model_dir("ekwek/Soprano-1.1-80M")


# -- speculative prefill -----------------------------------------------------------------------


@pytest.mark.numerical
def test_prefill_while_the_sentence_is_written_gives_the_same_audio(soprano_engine):
    words = SENTENCE.split(" ")
    prefill = None
    lengths = []
    for k in range(1, len(words)):
        prefill = soprano_engine.prefill(" ".join(words[:k]), prefill)
        if prefill is not None:
            lengths.append(prefill.cache.get_seq_length())
            assert lengths[-1] == len(prefill.ids)
    assert lengths == sorted(lengths) and lengths[-1] > 10  # the cache grew with the text
    with_prefill = np.concatenate(list(soprano_engine.synthesize(SENTENCE, prefill)))
    without = np.concatenate(list(soprano_engine.synthesize(SENTENCE)))
    # prefill changes only the shapes of the language model's matrix products: latents differ by 3e-9,
    # the audio (two streamed decodes) by ≤ 1.8e-6 of the peak
    np.testing.assert_allclose(with_prefill, without, rtol=0, atol=EXACT * np.abs(without).max())


@pytest.mark.numerical
def test_a_prefill_of_other_text_is_only_partly_reused(soprano_engine):
    other = soprano_engine.prefill("Something else entirely, said before.")
    with_other = np.concatenate(list(soprano_engine.synthesize(SENTENCE, other)))
    without = np.concatenate(list(soprano_engine.synthesize(SENTENCE)))
    np.testing.assert_allclose(with_other, without, rtol=0, atol=EXACT * np.abs(without).max())
