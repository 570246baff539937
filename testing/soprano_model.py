"""Build a random-weight Soprano model directory in the Hub repo's exact layout.

Model weights cannot be downloaded in tests or CI, so tests and benchmarks build a
model directory that the real loading code (``transformers`` + ``SopranoDecoder``,
ours and the ``soprano-tts`` package's) accepts unmodified:

``config.json``, ``generation_config.json``, ``model.safetensors`` (a ``Qwen3ForCausalLM``),
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
``decoder.pth`` (a ``SopranoDecoder`` state dict), as in ``ekwek/Soprano-1.1-80M``.

With ``audio_tokens=N`` the weights are arranged so that greedy decoding (with
Soprano's repetition penalty 1.2) emits exactly N distinct audio tokens and then
``[STOP]``, whatever the text: column 0 of the input embeddings is a large constant,
so the last hidden state always has a large, positive coordinate 0 after the final
RMSNorm, and ``lm_head`` reads only that coordinate. Audio-token logits descend in
(l_stop, 1.2·l_stop); each one picked is divided by 1.2 by the penalty and drops
below [STOP], so the walk visits the N tokens in order and then stops.
With ``audio_tokens=None`` the weights stay random (generation runs to the
512-token cap, as pure random weights do).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

#: The 53 characters of Soprano's text alphabet (after its normaliser lower-cases text).
TEXT_ALPHABET = " !\"$%&'*+,-./0123456789<>?_" + string.ascii_lowercase
SPECIAL_TOKENS = ["[UNK]", "[TEXT]", "[START]", "[STOP]"]
STOP_ID = 3
NUM_AUDIO_TOKENS = 8000
FIRST_AUDIO_ID = 4
VOCAB_SIZE = 8192
HIDDEN_SIZE = 512  # hard-coded as the decoder's input width

#: Soprano-1.1-80M's backbone configuration (``config.json`` of the Hub repo).
REAL_CONFIG = {
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 2304,
    "num_hidden_layers": 17,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 128,
}
#: A small configuration for fast tests (same widths where the format fixes them).
SMALL_CONFIG = {
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 128,
}


def _merges(count: int) -> list[tuple[str, str]]:
    """Deterministic BPE merges over the alphabet (common English pairs first)."""
    base = [
        "th",
        "he",
        "in",
        "er",
        "an",
        "re",
        "on",
        "at",
        "en",
        "nd",
        "ti",
        "es",
        "or",
        "te",
        "of",
        "ed",
        "is",
        "it",
        "al",
        "ar",
        "st",
        "to",
        "nt",
        "ng",
        "se",
        "ha",
        "as",
        "ou",
        "io",
        "le",
        "ve",
        "co",
        "me",
        "de",
        "hi",
        "ri",
        "ro",
        "ic",
        "ne",
        "ea",
        "ra",
        "ce",
    ]
    merges: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pair in base:
        merges.append((pair[0], pair[1]))
        seen.add(pair)
    for a in string.ascii_lowercase:
        for b in " " + string.ascii_lowercase:
            if len(merges) >= count:
                return merges
            if a + b not in seen:
                merges.append((a, b))
                seen.add(a + b)
    return merges[:count]


def write_tokenizer(model_dir: Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Layout (as in the Hub repo): ids 0–3 ``[UNK] [TEXT] [START] [STOP]``; 4–8003 audio
    tokens ``[0]``…``[7999]``; 8004–8191 a lower-cased character BPE (53 characters then
    135 merges), digits split individually, padding on the left.
    """
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for i in range(NUM_AUDIO_TOKENS):
        vocab[f"[{i}]"] = FIRST_AUDIO_ID + i
    next_id = FIRST_AUDIO_ID + NUM_AUDIO_TOKENS
    for ch in TEXT_ALPHABET:
        vocab[ch] = next_id
        next_id += 1
    merges = _merges(VOCAB_SIZE - next_id)
    for a, b in merges:
        vocab[a + b] = next_id
        next_id += 1
    assert next_id == VOCAB_SIZE, next_id

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.save(str(model_dir / "tokenizer.json"))

    special = {"bos_token": "[STOP]", "eos_token": "[STOP]", "pad_token": "[STOP]", "unk_token": "[UNK]"}
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **special,
                "tokenizer_class": "PreTrainedTokenizerFast",
                "padding_side": "left",
                "model_max_length": 512,
                "clean_up_tokenization_spaces": False,
                "added_tokens_decoder": {
                    str(i): {
                        "content": t,
                        "special": True,
                        "normalized": False,
                        "lstrip": False,
                        "rstrip": False,
                        "single_word": False,
                    }
                    for i, t in enumerate(SPECIAL_TOKENS)
                },
            },
            indent=2,
        )
    )


def _force_length(model: Any, audio_tokens: int, seed: int) -> None:
    """Arrange embeddings and ``lm_head`` so greedy decoding emits ``audio_tokens`` then [STOP].

    ``model`` is a transformers ``Qwen3ForCausalLM`` (typed ``Any``: torch's ``Module``
    typing does not see its submodules' weights).
    """
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 0] = 200.0  # dominates the residual stream: h[0] ≈ +sqrt(512) after the final norm
        norm = model.model.norm.weight
        norm.fill_(1.0)
        head = model.lm_head.weight
        head.zero_()
        # The final hidden state's coordinate 0 is ≈ sqrt(512) ≈ 22.6; scale so logits are O(10).
        scale = 1.0 / 22.6
        l_stop = 10.0 * 1.2  # [STOP] is in the prompt, so the penalty divides its logit by 1.2
        head[STOP_ID, 0] = l_stop * scale
        if audio_tokens > 0:
            ids = torch.randperm(NUM_AUDIO_TOKENS, generator=g)[:audio_tokens] + FIRST_AUDIO_ID
            # Descending logits in (10.4, 11.8): above the penalised [STOP] (10.0) before being
            # picked, below it after (≤ 11.8 / 1.2 < 10).
            logits = torch.linspace(11.8, 10.4, audio_tokens) if audio_tokens > 1 else torch.tensor([11.0])
            head[ids, 0] = logits * scale
        else:
            head[STOP_ID, 0] = 20.0 * scale


def build_soprano_dir(
    model_dir: str | Path,
    *,
    audio_tokens: int | None = 12,
    config: dict | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a random-weight Soprano model directory.

    Args:
        model_dir: directory to create (parents too).
        audio_tokens: number of audio tokens every sentence generates before ``[STOP]``
            (64 ms of 32 kHz audio each), ``0`` for a sentence that yields none, or
            ``None`` for plain random weights.
        config: backbone sizes, :data:`SMALL_CONFIG` by default; :data:`REAL_CONFIG`
            gives Soprano-1.1-80M's real sizes (≈80 M parameters).
        seed: seed for the random weights.
        dtype: storage dtype of ``model.safetensors`` (the Hub file is bf16).

    Returns:
        The directory path.
    """
    from soprano.vocos.decoder import SopranoDecoder
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=STOP_ID,
        eos_token_id=STOP_ID,
        pad_token_id=STOP_ID,
        **(config or SMALL_CONFIG),
    )
    model = Qwen3ForCausalLM(cfg).eval()
    if audio_tokens is not None:
        _force_length(model, audio_tokens, seed)
    model.to(dtype).save_pretrained(model_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=STOP_ID, eos_token_id=STOP_ID, pad_token_id=STOP_ID).save_pretrained(model_dir)
    write_tokenizer(model_dir)
    torch.save(SopranoDecoder().state_dict(), model_dir / "decoder.pth")
    return model_dir


def one_shot_decode(decoder: Any, latents: torch.Tensor) -> torch.Tensor:
    """The package's ``SopranoDecoder`` on all latents at once, in the decoder's dtype.

    Args:
        decoder: a ``soprano.vocos.decoder.SopranoDecoder``.
        latents: ``(T, 512)``.

    Returns:
        ``(2048·(T−1),)`` samples at 32 kHz (empty when T < 2).
    """
    if latents.shape[0] < 2:
        return torch.zeros(0, dtype=latents.dtype)
    with torch.inference_mode():
        return decoder(latents.T[None].to(next(decoder.parameters()).dtype))[0]


def float32_decode_error(decoder: Any, latents: torch.Tensor) -> float:
    """Max abs difference between float32 and float64 one-shot decoding of ``latents``.

    The scale of rounding in the decoder's output: tests derive their tolerances from it.
    """
    import copy

    exact = one_shot_decode(copy.deepcopy(decoder).double(), latents.double())
    return float((one_shot_decode(decoder, latents.float()).double() - exact).abs().max())


def float64_reference_audio(model_dir: Path, token_ids: list[int], prompt_tokens: int) -> torch.Tensor:
    """Soprano's audio for a known token sequence, computed in float64 with the package's model and decoder.

    The latent of the audio token at position ``p`` is the final hidden state at ``p − 1``
    (the hidden state whose logits chose it), as ``SopranoTTS.infer`` takes them.

    Args:
        model_dir: a Soprano model directory.
        token_ids: prompt ids followed by the generated audio-token ids (no ``[STOP]``).
        prompt_tokens: how many of ``token_ids`` are the prompt.

    Returns:
        ``(2048·(T−1),)`` float64 samples at 32 kHz, T = generated tokens.
    """
    from soprano.vocos.decoder import SopranoDecoder
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.inference_mode():
        hidden = model.model(input_ids=torch.tensor([token_ids])).last_hidden_state[0]
    latents = hidden[prompt_tokens - 1 : len(token_ids) - 1]
    decoder = SopranoDecoder()
    decoder.load_state_dict(torch.load(model_dir / "decoder.pth", map_location="cpu", weights_only=True))
    return one_shot_decode(decoder.double().eval(), latents)


def float32_audio_error(model_dir: Path, engine: Any, text: str, sample_rate: int = 32_000) -> float:
    """The float32 rounding scale of ``text``'s audio, for deriving test tolerances.

    Max abs difference between the reference package's own float32 ``SopranoTTS.infer``
    and the same model computed in float64 (:func:`float64_reference_audio`) on the token
    sequence ``engine`` (a ``SopranoEngine``) generates. Two float32 implementations of the
    model each land within about this distance of the exact audio.

    Args:
        sample_rate: 32 000 (the model's rate) or another rate, reached by resampling both
            signals with soxr (float64 for the exact one), as the pipeline does.
    """
    import contextlib
    import io

    from soprano.tts import SopranoTTS

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints device and latency
        reference = SopranoTTS(model_path=str(model_dir), device="cpu").infer(text).double().numpy()
    seq = engine.start(text)
    prompt = len(seq.ids)
    while not seq.finished:
        engine.step([(seq, 64)])
    engine.release(seq)
    exact = float64_reference_audio(Path(model_dir), seq.ids, prompt).numpy()
    if reference.shape != exact.shape:
        raise ValueError(f"the package's audio has {reference.shape} samples, the float64 one {exact.shape}")
    if sample_rate != 32_000:
        import soxr

        reference = soxr.resample(reference.astype("float32"), 32_000, sample_rate, quality="HQ")
        exact = soxr.resample(exact, 32_000, sample_rate, quality="HQ")
    return float(abs(reference - exact).max())
