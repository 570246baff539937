"""Stage 2: Soprano TTS, streamed token by token with exact chunk edges.

Soprano (``soprano-tts``, model ``ekwek/Soprano-1.1-80M``) is a Qwen3 language model
whose last-layer hidden states (512-d, after the final norm) are the audio latents,
one per 64 ms audio token, decoded to 32 kHz by a Vocos-style decoder
(``soprano.vocos.decoder.SopranoDecoder``). The loading, text normaliser
(``soprano.utils.text_normalizer.clean_text``) and decoder are the package's; the
generation loop and the streaming decoder schedule are ours:

* The latent of audio token *i* is the hidden state whose logits chose it (the
  ``infer`` / lmdeploy convention of the reference package: its own transformers
  streaming path is offset by one token). So the whole stream equals the package's
  one-shot ``SopranoTTS.infer`` on the same sentence.
* Decoding is exact at chunk edges with the least look-ahead the decoder allows. From
  the decoder's layout (linear ×4 upsampling, 8 ConvNeXt blocks with kernel 3, a
  centred ISTFT with n_fft 2048 and hop 512) an output sample ``p`` depends on tokens
  within −2.25…+3.25 tokens of ``p / 2048``. After ``T`` latents every sample below
  ``2048·T − 6656`` is final, and a window that starts 2.25 tokens before the first
  sample wanted reproduces one-shot decoding. The reference streamer holds back 4
  tokens and re-decodes a fixed window; we emit the first 48 ms after 4 latents
  instead of 64 ms after 5. Later chunks grow with the listener's lead (up to
  ``chunk_tokens``·64 ms), so the decoder's fixed cost is amortised once playback is
  safely ahead, and never at the price of a gap on a slow machine.
* Speculative prefill: while a sentence is still being written, :meth:`SopranoEngine.prefill`
  runs the prompt prefix written so far through the model; when the sentence is complete,
  only the tokens after the longest common prefix are computed (KV-cache reuse), which
  takes the prompt's prefill off the time to first audio.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import EngineLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ekwek/Soprano-1.1-80M"
SAMPLE_RATE = 32_000
TOKEN_SAMPLES = 2048  # decoder hop 512 × upsampling 4
LATENT_DIM = 512
#: With T latents, samples [0, 2048·T − LOOKAHEAD_SAMPLES) are final (see module docstring).
LOOKAHEAD_SAMPLES = 6656
#: A decode window must start this many samples before the first sample taken from it.
LEFT_CONTEXT_SAMPLES = 4608
#: Share of the listener's lead (audio sent ahead of the clock) one chunk may take to make.
CHUNK_LEAD_USE = 0.7
#: Prefill leaves the prompt's last tokens out: the word being written may still change them.
PREFILL_HOLDBACK_TOKENS = 2
STOP, TEXT, START = "[STOP]", "[TEXT]", "[START]"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "decoder.pth")
HUB_PATTERNS = ["*.json", "model.safetensors", "decoder.pth"]


@dataclass
class Prefill:
    """A prompt prefix already run through the language model (its KV cache).

    Attributes:
        ids: token ids in the cache, starting with ``[STOP][TEXT]``.
        cache: the transformers KV cache holding exactly ``ids``.
    """

    ids: list[int]
    cache: object


class EngineUnavailable(EngineLoadError):
    """The model's weights are not available here (not cached and not downloadable)."""


def resolve_model_dir(model: str = DEFAULT_MODEL, model_path: str | Path | None = None) -> Path:
    """Find the directory holding the Soprano files.

    Args:
        model: Hugging Face Hub repo id, fetched into (or read from) the HF cache.
        model_path: a local directory with the Hub repo's files; wins over ``model``.

    Raises:
        EngineLoadError: ``model_path`` does not exist or lacks a required file (named).
        EngineUnavailable: the Hub files are neither cached nor downloadable.
    """
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise EngineLoadError(f"Soprano model directory {path} does not exist")
    else:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(model, allow_patterns=HUB_PATTERNS))
        except Exception as exc:  # network, auth, missing cache: all mean "not available here"
            raise EngineUnavailable(
                f"Soprano weights for {model!r} are not in the Hugging Face cache and could not be "
                f"downloaded ({type(exc).__name__}). Run `huggingface-cli download {model}` on a "
                f"machine with network access, or set [soprano] model_path / --model-path to a "
                f"directory holding {', '.join(REQUIRED_FILES)}."
            ) from exc
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise EngineLoadError(f"Soprano model directory {path} lacks {', '.join(missing)}")
    return path


def select_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` (NVIDIA CUDA or AMD ROCm builds of torch), else ``"cpu"``."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


_THOUSANDS = re.compile(r"(?<![$£€\d.,])\b\d{1,3}(?:,\d{3})+\b(?![.,]\d)")
_INITIALISM = re.compile(r"\b(?:[A-Za-z]\.){2,}")
_SPOKEN_ABBREVIATIONS = [
    (re.compile(r"\be\.g\.", re.IGNORECASE), "for example"),
    (re.compile(r"\bi\.e\.", re.IGNORECASE), "that is"),
    (re.compile(r"\bvs\.", re.IGNORECASE), "versus"),
]


def prepare_text(text: str) -> str:
    """Normalise one segment into Soprano's prompt alphabet.

    Fixes two measured quirks of the package's normaliser before calling it:
    ``1,234`` (read as a year, "twelve thirty-four") is spelled out as a cardinal, and
    dotted abbreviations (``e.g.``, ``U.S.``, ``p.m.``), which it reads as "e dot g",
    become words or letters. Then ``soprano.utils.text_normalizer.clean_text``.

    Returns:
        Lower-case ASCII text (possibly empty: nothing speakable for this model).
    """
    from soprano.utils.text_normalizer import _inflect, clean_text

    for pattern, spoken in _SPOKEN_ABBREVIATIONS:
        text = pattern.sub(spoken, text)
    text = _INITIALISM.sub(lambda m: " ".join(m.group(0).replace(".", " ").split()) + " ", text)
    text = _THOUSANDS.sub(lambda m: _inflect.number_to_words(m.group(0).replace(",", ""), andword="", comma=""), text)
    return clean_text(text) if any(ch.isalnum() for ch in text) else ""


class SopranoEngine:
    """Soprano TTS on an inference thread, streamed chunk by chunk (see module docstring).

    Output: ``(N,)`` float32 chunks at 32 kHz, not clipped (the decoder's range).

    Args:
        model_dir: a directory with the Hub repo's files (:func:`resolve_model_dir`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (``"auto"``: CUDA/ROCm when present).
        dtype: language-model dtype, ``"auto"`` = bfloat16 on GPU, float32 on CPU (as the
            reference package); the decoder always runs in float32.
        temperature: 0 = greedy (the reference's default, 0.001, is greedy in effect);
            above 0 samples with ``top_p``.
        top_p: nucleus sampling mass when sampling.
        repetition_penalty: divides (multiplies, if negative) the logits of every token
            already in the prompt or output, as transformers' ``RepetitionPenaltyLogitsProcessor``.
        max_new_tokens: hard cap of audio tokens per segment (512 = 32.8 s).
        max_tokens_per_char: caps runaway generation ("aah" hallucination) at
            ``16 + max_tokens_per_char × characters`` tokens.
        chunk_tokens: largest chunk, in 64 ms audio tokens.

    Raises:
        EngineLoadError: a file is missing, unreadable or does not match Soprano's
            layout; the message names the file.
    """

    name = "soprano"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        model_name: str | None = None,
        temperature: float = 0.0,
        top_p: float = 0.95,
        repetition_penalty: float = 1.2,
        max_new_tokens: int = 512,
        max_tokens_per_char: float = 6.0,
        chunk_tokens: int = 4,
        seed: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = model_name or str(self.model_dir)
        self.device = select_device(device)
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.max_new_tokens = max_new_tokens
        self.max_tokens_per_char = max_tokens_per_char
        self.chunk_samples = chunk_tokens * TOKEN_SAMPLES
        self._generator = torch.Generator(device="cpu")
        if seed is not None:
            self._generator.manual_seed(seed)
        if dtype == "auto":
            self.dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        else:
            self.dtype = getattr(torch, dtype)
        self._load()

    # -- loading -----------------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self.model_dir / name

    def _load(self) -> None:
        from soprano.vocos.decoder import SopranoDecoder
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        config_file = self._file("config.json")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EngineLoadError(f"{config_file}: not readable JSON ({exc})") from None
        if config.get("hidden_size") != LATENT_DIM or "qwen3" not in str(config.get("model_type", "")):
            raise EngineLoadError(
                f"{config_file}: not a Soprano backbone (expected model_type qwen3 with hidden_size "
                f"{LATENT_DIM}, found {config.get('model_type')!r} / {config.get('hidden_size')!r})"
            )

        tok_file = self._file("tokenizer.json")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        except Exception as exc:
            raise EngineLoadError(f"{tok_file}: cannot load the tokenizer ({exc})") from None
        ids = self.tokenizer.convert_tokens_to_ids([STOP, TEXT, START])
        if ids != [3, 1, 2]:
            raise EngineLoadError(
                f"{tok_file}: not Soprano's vocabulary ([STOP] [TEXT] [START] are {ids}, expected [3, 1, 2])"
            )
        self.stop_id = ids[0]

        weights = self._file("model.safetensors")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the loader's progress bars and notices are not ours to print
        hf_logging.disable_progress_bar()
        try:
            # With output_loading_info=True transformers returns (model, info); its type
            # hints do not say so.
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                self.model_dir, dtype=self.dtype, output_loading_info=True
            )
            lm, info = loaded
        except Exception as exc:
            raise EngineLoadError(f"{weights}: cannot load the language model ({type(exc).__name__}: {exc})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
        if problems:
            raise EngineLoadError(f"{weights}: weights do not match config.json: {problems}")
        self.lm: Any = lm.to(self.device).eval()

        decoder_file = self._file("decoder.pth")
        try:
            state = torch.load(decoder_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EngineLoadError(
                f"{decoder_file}: not a readable torch state dict ({type(exc).__name__}: {exc})"
            ) from None
        self.decoder = SopranoDecoder()
        try:
            self.decoder.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise EngineLoadError(f"{decoder_file}: does not match the Soprano 1.1 decoder ({exc})") from None
        self.decoder.to(self.device).eval()
        log.info("Soprano loaded from %s on %s (%s)", self.model_dir, self.device, self.dtype)

    # -- synthesis ---------------------------------------------------------------------

    def synthesize(self, text: str, prefill: Prefill | None = None) -> Iterator[np.ndarray]:
        """Speak one segment; yields ``(N,)`` float32 numpy chunks at 32 kHz (see :class:`TTSEngine`).

        Args:
            text: the segment.
            prefill: from :meth:`prefill` on a prefix of this text (consumed: its cache
                is extended in place); any mismatch only reduces what is reused.

        Yields nothing when the text normalises to nothing or the model emits no audio token.
        """
        prompt_text = prepare_text(text)
        if not prompt_text:
            return
        limit = min(self.max_new_tokens, int(16 + self.max_tokens_per_char * len(prompt_text)))
        for chunk in self.stream_decode(self.latents(prompt_text, limit, prefill)):
            yield chunk.numpy()

    def prefill(self, text: str, previous: Prefill | None = None) -> Prefill | None:
        """Run the prompt of a sentence that is still being written through the model.

        Args:
            text: the sentence so far (raw; normalised here).
            previous: an earlier prefill of this sentence; its common prefix is reused.

        Returns:
            The prefill to hand to :meth:`synthesize`, or ``previous`` unchanged when
            there is nothing new to compute (``None`` if there is nothing at all).
        """
        from transformers import DynamicCache

        prompt_text = prepare_text(text)
        ids = self.tokenizer(f"{STOP}{TEXT}{prompt_text}")["input_ids"][:-PREFILL_HOLDBACK_TOKENS]
        if len(ids) <= 2:
            return previous
        keep = _common_prefix(previous.ids, ids) if previous is not None else 0
        if previous is not None and keep == len(ids):
            return previous
        cache = previous.cache if previous is not None and keep > 0 else DynamicCache(config=self.lm.config)
        _crop(cache, keep)
        self._forward(torch.tensor([ids[keep:]], device=self.device), cache)
        return Prefill(ids, cache)

    def latents(
        self, prompt_text: str, max_new_tokens: int | None = None, prefill: Prefill | None = None
    ) -> Iterator[torch.Tensor]:
        """Generate the audio latents of one normalised sentence.

        Args:
            prompt_text: output of :func:`prepare_text`.
            max_new_tokens: cap of audio tokens (default: the engine's).
            prefill: a KV cache of a prompt prefix to start from (see :meth:`prefill`).

        Yields:
            ``(512,)`` float32 CPU tensors, one per audio token (64 ms), until ``[STOP]``
            or ``max_new_tokens``.
        """
        from transformers import DynamicCache

        limit = max_new_tokens or self.max_new_tokens
        ids = self.tokenizer(f"{STOP}{TEXT}{prompt_text}{START}")["input_ids"]
        seen = torch.zeros(self.lm.lm_head.out_features, dtype=torch.bool, device=self.device)
        seen[torch.tensor(ids, device=self.device)] = True
        keep = min(_common_prefix(prefill.ids, ids), len(ids) - 1) if prefill is not None else 0
        cache = prefill.cache if prefill is not None and keep > 0 else DynamicCache(config=self.lm.config)
        _crop(cache, keep)
        # No context manager may stay open across a `yield`: several streams' generators
        # interleave on one thread, and grad mode is per-thread state.
        hidden = self._forward(torch.tensor([ids[keep:]], device=self.device), cache)
        for _ in range(limit):
            token = self._next_token(hidden, seen)
            if token == self.stop_id:
                return
            yield hidden[0].float().cpu()
            seen[token] = True
            hidden = self._forward(torch.tensor([[token]], device=self.device), cache)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """Run the backbone over ``ids`` (1, L) with the KV cache; return the last position's (1, 512) state."""
        return self.lm.model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]

    @torch.inference_mode()
    def _next_token(self, hidden: torch.Tensor, seen: torch.Tensor) -> int:
        """Choose the next token from the (1, 512) hidden state: repetition penalty, then greedy or top-p."""
        logits = self.lm.lm_head(hidden)[0].float()
        if self.repetition_penalty != 1.0:
            penalised = torch.where(logits > 0, logits / self.repetition_penalty, logits * self.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs)).cpu()
        pick = torch.multinomial(sorted_probs, 1, generator=self._generator)
        return int(order[pick.to(order.device)])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """One-shot decode: ``(T, 512)`` latents → ``(2048·(T−1),)`` float32 at 32 kHz (empty if T < 2)."""
        if latents.shape[0] < 2:
            return torch.zeros(0)
        with torch.inference_mode():
            x = latents.T.unsqueeze(0).to(self.device, torch.float32)
            return self.decoder(x)[0].float().cpu()

    def stream_decode(self, latents: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode latents as they arrive into chunks whose concatenation equals :meth:`decode`.

        Each chunk is taken from a decode window reaching 2.25 tokens left of it. The
        first chunk is emitted as soon as anything is final (1536 samples after 4
        latents). After that the chunk size follows the listener's lead: a chunk may be
        as long as the audio already sent ahead of the clock, divided by the measured
        real-time factor (so the next chunk is ready before the listener runs dry),
        between one token (2048 samples) and ``chunk_tokens`` tokens. Fast machines thus
        reach the largest chunks at once (least decoder overhead); slow ones keep small
        chunks while their lead is small.

        Yields:
            ``(N,)`` float32 CPU tensors at 32 kHz.
        """
        window: list[torch.Tensor] = []
        window_start = 0  # token index of window[0]
        emitted = 0  # samples already yielded
        count = 0
        started = time.perf_counter()
        first_at: float | None = None
        for latent in latents:
            window.append(latent)
            count += 1
            final = count * TOKEN_SAMPLES - LOOKAHEAD_SAMPLES
            if final <= emitted:
                continue
            if first_at is not None:
                now = time.perf_counter()
                lead_s = emitted / SAMPLE_RATE - (now - first_at)
                rtf = (now - started) / (count * TOKEN_SAMPLES / SAMPLE_RATE)
                target = min(self.chunk_samples, max(TOKEN_SAMPLES, int(CHUNK_LEAD_USE * lead_s / rtf * SAMPLE_RATE)))
                if final - emitted < target:
                    continue
            chunk, window, window_start = self._decode_range(window, window_start, emitted, final)
            emitted = final
            first_at = first_at or time.perf_counter()
            yield chunk
        end = (count - 1) * TOKEN_SAMPLES
        if count >= 2 and end > emitted:
            chunk, _, _ = self._decode_range(window, window_start, emitted, end)
            yield chunk

    def _decode_range(
        self, window: list[torch.Tensor], window_start: int, begin: int, end: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        audio = self.decode(torch.stack(window))
        offset = window_start * TOKEN_SAMPLES
        chunk = audio[begin - offset : end - offset]
        # Keep only the latents the next window needs: 2.25 tokens left of `end`.
        keep_from = max(window_start, (end - LEFT_CONTEXT_SAMPLES) // TOKEN_SAMPLES)
        return chunk, window[keep_from - window_start :], keep_from


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _crop(cache, length: int) -> None:
    """Cut a KV cache back to its first ``length`` tokens (a negative count works across transformers versions)."""
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)
