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

from testing.soprano_model import float32_audio_error
from tests.conftest import EXACT, FLOAT32, TEST_AUDIO_TOKENS
from tts_server.engines import soprano as soprano_mod
from tts_server.engines.base import EngineLoadError
from tts_server.engines.soprano import TOKEN_SAMPLES, SopranoEngine, prepare_text, resolve_model_dir

SENTENCE = "Hello world, this is a test of the streaming system."

# Streamed and one-shot decoding of the same latents run the same float32 decoder over
# windows of different lengths, so they differ by float32 reordering only: measured ≤ 1.5e-6
# of the peak, against EXACT = 1e-5 (tests/conftest.py). That chunk edges are exact with the
# least look-ahead, and wrong with less, is shown on a decoder that uses its whole receptive
# field in tests/tts_server/test_soprano_decoder.py.


@pytest.fixture(scope="module")
def rounding(soprano_dir, soprano_engine) -> float:
    """The float32 rounding scale of SENTENCE's audio: how far the reference package's own
    ``infer`` (transformers + its decoder, float32) is from the same computation in float64.

    Two float32 implementations of the same model each land within about this distance of
    the exact audio, so they differ by at most about twice it: the audio tests allow 5×.
    """
    return float32_audio_error(soprano_dir, soprano_engine, SENTENCE)


@pytest.mark.numerical
def test_streamed_chunks_equal_one_shot_decoding(soprano_engine):
    chunks = list(soprano_engine.synthesize(SENTENCE))
    latents = torch.stack(list(soprano_engine.latents(prepare_text(SENTENCE))))
    assert latents.shape == (TEST_AUDIO_TOKENS, 512)
    one_shot = soprano_engine.decode_latents(latents).numpy()
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
def test_audio_equals_the_soprano_package_one_shot_infer(soprano_dir, soprano_engine, rounding):
    """Reference: ``soprano-tts``'s own ``SopranoTTS.infer`` on the same files and sentence."""
    from soprano.tts import SopranoTTS

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints device and latency
        reference = SopranoTTS(model_path=str(soprano_dir), device="cpu").infer(SENTENCE).numpy()
    ours = np.concatenate(list(soprano_engine.synthesize(SENTENCE)))
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 5 * rounding


def test_sentences_decoded_in_one_batch_each_equal_their_own_stream(soprano_engine, rounding):
    """Continuous batching: sequences join at different steps, prefill and generate in the
    same forward calls and are decoded together; each equals its sentence spoken alone."""
    texts = [SENTENCE, "A second voice joins a little later.", "Third."]
    alone = [np.concatenate(list(soprano_engine.synthesize(t))) for t in texts]
    seqs = [soprano_engine.start(t) for t in texts]
    audio: list[list[np.ndarray]] = [[] for _ in texts]
    step = 0
    while not all(s.ended for s in seqs):
        live = [s for i, s in enumerate(seqs) if step >= 2 * i and not s.finished]  # join at steps 0, 2, 4
        if live:
            soprano_engine.step([(s, 5) for s in live])  # prompts in chunks of 5 tokens next to decode rows
        due = [i for i, s in enumerate(seqs) if s.ready_samples or (s.finished and not s.ended)]
        for i, pcm in zip(due, soprano_engine.decode([seqs[i] for i in due]), strict=True):
            audio[i].append(pcm)
        step += 1
    for s in seqs:
        soprano_engine.release(s)
    assert soprano_engine.free_slots == soprano_engine.max_batch
    for got, want in zip(audio, alone, strict=True):
        got_all = np.concatenate(got)
        assert got_all.shape == want.shape == ((TEST_AUDIO_TOKENS - 1) * TOKEN_SAMPLES,)
        assert np.abs(got_all - want).max() <= 5 * rounding


def test_a_prompt_longer_than_the_model_holds_is_refused(soprano_engine):
    with pytest.raises(ValueError, match="positions"):
        soprano_engine.start("word " * 400)
    assert soprano_engine.free_slots == soprano_engine.max_batch


def test_a_dropped_sequence_gives_its_slot_back(soprano_dir):
    """A handle dropped without release (a bug elsewhere) must not leak a KV slot for good."""
    engine = SopranoEngine(soprano_dir, device="cpu", max_batch=1)
    seq = engine.start(SENTENCE)
    engine.step([(seq, 64)])
    assert engine.free_slots == 0
    del seq
    assert engine.free_slots == 1
    other = engine.start("Still speaks.")
    engine.step([(other, 64)])
    engine.release(other)


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
def test_prefill_while_the_sentence_is_written_gives_the_same_audio(soprano_engine, rounding):
    words = SENTENCE.split(" ")
    prefill = None
    lengths = []
    for k in range(1, len(words)):
        prefill = soprano_engine.prefill(" ".join(words[:k]), prefill)
        if prefill is not None:
            lengths.append(prefill.computed)
            assert lengths[-1] == len(prefill.ids)
    assert lengths == sorted(lengths) and lengths[-1] > 10  # the cache grew with the text
    with_prefill = np.concatenate(list(soprano_engine.synthesize(SENTENCE, prefill)))
    without = np.concatenate(list(soprano_engine.synthesize(SENTENCE)))
    assert np.abs(with_prefill - without).max() <= 5 * rounding
    assert soprano_engine.free_slots == soprano_engine.max_batch


@pytest.mark.numerical
def test_a_prefill_of_other_text_is_only_partly_reused(soprano_engine, rounding):
    other = soprano_engine.prefill("Something else entirely, said before.")
    with_other = np.concatenate(list(soprano_engine.synthesize(SENTENCE, other)))
    without = np.concatenate(list(soprano_engine.synthesize(SENTENCE)))
    assert np.abs(with_other - without).max() <= 5 * rounding


# -- precision ---------------------------------------------------------------------------------


def test_the_default_precision_keeps_audio_within_30_db_of_float32(make_soprano_dir):
    """The default (bfloat16 on a CPU with native bfloat16) against float32 on the same
    tokens (teacher-forced: a different sampled token would make the comparison moot),
    with plain random weights so every coordinate of the latents matters."""
    from tts_server.engines.qwen3 import Row
    from tts_server.engines.soprano import cpu_has_native_bfloat16
    from tts_server.engines.soprano_decoder import DecoderState

    model_dir = make_soprano_dir(None)
    default = SopranoEngine(model_dir, device="cpu")
    exact = SopranoEngine(model_dir, device="cpu", **FLOAT32)
    expected = "bfloat16" if cpu_has_native_bfloat16() else "float32"
    assert (default.dtype, default.decoder_dtype) == (expected, expected)
    prompt = exact.start(SENTENCE).ids
    ids = prompt + torch.randint(4, 8004, (40,), generator=torch.Generator().manual_seed(0)).tolist()

    def audio(engine: SopranoEngine) -> np.ndarray:
        first = len(prompt) - 1
        latents = [engine.backbone.forward(torch.tensor(ids[: first + 1]), [Row(0, 0, first + 1)])]
        for position in range(first + 1, len(ids) - 1):
            latents.append(engine.backbone.forward(torch.tensor(ids[position : position + 1]), [Row(0, position, 1)]))
        (pcm,) = engine.streaming_decoder.decode([DecoderState()], [torch.cat(latents)], [True])
        return pcm.double().numpy()

    reference, got = audio(exact), audio(default)
    snr_db = 10 * np.log10((reference**2).sum() / max(((got - reference) ** 2).sum(), 1e-30))
    assert snr_db >= 30
