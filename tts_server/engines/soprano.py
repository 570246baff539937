"""Stage 2: Soprano TTS, continuously batched across streams, streamed with exact chunk edges.

Soprano (``soprano-tts``, model ``ekwek/Soprano-1.1-80M``) is a Qwen3 language model
whose last-layer hidden states (512-d, after the final norm) are the audio latents,
one per 64 ms audio token, decoded to 32 kHz by a Vocos-style decoder
(``soprano.vocos.decoder.SopranoDecoder``). The files, the tokenizer, the text
normaliser (``soprano.utils.text_normalizer.clean_text``) and the decoder's weights are
the package's; the model's forward, the generation loop and the decoding schedule are ours:

* **Lean backbone** (:mod:`.qwen3`): the same Qwen3 arithmetic as transformers on the
  same ``model.safetensors``, with fused projections and a preallocated KV cache of
  ``max_batch`` slots, so one forward advances many sequences of different lengths.
* **Continuous batching** (:class:`~.base.BatchedEngine`): the scheduler owns the loop.
  Each :meth:`SopranoEngine.step` runs one forward over every sequence it is given: one
  token for each generating sequence, a chunk of the prompt for each that is still
  being prefilled; :meth:`SopranoEngine.decode` decodes several sequences in one call.
* The latent of audio token *i* is the hidden state whose logits chose it (the
  ``infer`` / lmdeploy convention of the reference package: its own transformers
  streaming path is offset by one token). So the whole stream equals the package's
  one-shot ``SopranoTTS.infer`` on the same sentence.
* **Exact streamed decoding** with the least look-ahead the decoder allows
  (:mod:`.soprano_decoder`): the decoder runs incrementally, every frame computed once;
  after ``T`` latents every sample below ``2048·T − 6656`` is final and emitted. The
  first 48 ms go out after 4 latents (the reference streamer waits for 5 and re-decodes
  a window of 4 + chunk tokens per chunk). Later chunks grow with the listener's lead
  (up to ``chunk_tokens``·64 ms), so the decoder's fixed cost per call is amortised once
  playback is safely ahead, and never at the price of a gap on a slow machine.
* **Speculative prefill**: while a sentence is still being written, its prompt prefix
  runs through the model (:meth:`SopranoEngine.speculate` in the batch, or
  :meth:`SopranoEngine.prefill` at once); when the sentence is complete, only the tokens
  after the longest common prefix are computed (KV-cache reuse), which takes the
  prompt's prefill off the time to first audio.
* **Precision** of the backbone's and the decoder's weights are load options (``dtype``,
  ``decoder_dtype``); the defaults on CPU (:data:`DEFAULT_CPU_DTYPE`,
  :data:`DEFAULT_CPU_DECODER_DTYPE`) are the fastest whose decoded audio stays within
  30 dB SNR of float32, measured by ``python -m benchmarks.backbone``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .base import BatchOutOfMemory, EngineLoadError, EngineSequence, chunk_target_samples
from .linear import PRECISIONS, Precision
from .qwen3 import Qwen3Backbone, Qwen3Shape, Row, load_weights
from .soprano_decoder import LOOKAHEAD_SAMPLES, TOKEN_SAMPLES, DecoderState, StreamingDecoder, final_samples

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ekwek/Soprano-1.1-80M"
SAMPLE_RATE = 32_000
LATENT_DIM = 512
#: Backbone weight precision on a CPU with native bfloat16 arithmetic when ``dtype = "auto"``:
#: measured (``benchmarks.backbone``, 2-core AMD EPYC with AVX-512 BF16) 2.0× faster per step
#: than float32 at one stream, audio 41 dB SNR from float32's. The checkpoint's weights are
#: bfloat16 already, so only the activations are rounded. int8 was faster still but 25 dB.
DEFAULT_CPU_DTYPE: Precision = "bfloat16"
#: Decoder weight precision on such a CPU when ``decoder_dtype = "auto"``: 2× faster than
#: float32, audio 40 dB SNR from all-float32 together with the bfloat16 backbone.
DEFAULT_CPU_DECODER_DTYPE: Precision = "bfloat16"
#: Prefill leaves the prompt's last tokens out: the word being written may still change them.
PREFILL_HOLDBACK_TOKENS = 2
STOP, TEXT, START = "[STOP]", "[TEXT]", "[START]"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "decoder.pth")
HUB_PATTERNS = ["*.json", "model.safetensors", "decoder.pth"]
__all__ = [
    "LOOKAHEAD_SAMPLES",
    "SAMPLE_RATE",
    "TOKEN_SAMPLES",
    "EngineUnavailable",
    "SopranoEngine",
    "SopranoSequence",
    "prepare_text",
    "resolve_model_dir",
    "select_device",
]


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


@dataclass(eq=False)
class SopranoSequence:
    """One segment in the :class:`SopranoEngine` (an :class:`~.base.EngineSequence`).

    Attributes:
        ids: prompt token ids (``[STOP][TEXT]…[START]``, or a prefix of them while
            speculative), then every audio token generated.
        computed: leading ``ids`` whose keys and values are in the KV cache.
        slot: its KV-cache slot, or ``None``.
        limit: most latents it may generate.
        latents: latents generated so far.
    """

    ids: list[int]
    speculative: bool
    limit: int = 0
    computed: int = 0
    slot: int | None = None
    latents: int = 0
    finished: bool = False
    released: bool = False
    seen: torch.Tensor | None = None  # (vocab,) bool: tokens the repetition penalty applies to
    queued: list[torch.Tensor] = field(default_factory=list)  # latents not yet decoded, (512,) each
    decoder: DecoderState = field(default_factory=DecoderState)
    started_at: float | None = None
    text: str = ""

    @property
    def ended(self) -> bool:
        """Finished and fully decoded."""
        return self.finished and not self.queued and (self.decoder.ended or self.latents < 2)

    @property
    def resident(self) -> bool:
        """Holds a KV-cache slot."""
        return self.slot is not None

    @property
    def pending_tokens(self) -> int:
        """Tokens to run before the next latent (0 once finished)."""
        return 0 if self.finished else len(self.ids) - self.computed

    @property
    def ready_samples(self) -> int:
        """Samples the next decode returns."""
        if self.speculative:
            return 0
        return final_samples(self.latents, self.finished) - self.decoder.samples

    @property
    def decoded_samples(self) -> int:
        """Samples decoded so far."""
        return self.decoder.samples

    @property
    def rtf(self) -> float:
        """Wall seconds per audio second since its first step (inf before any latent)."""
        if self.started_at is None or self.latents == 0:
            return float("inf")
        return (time.monotonic() - self.started_at) / (self.latents * TOKEN_SAMPLES / SAMPLE_RATE)


class SopranoEngine:
    """Soprano TTS: continuous batching over a lean Qwen3, exact streamed decoding (module docstring).

    A :class:`~.base.TTSEngine`, :class:`~.base.PrefillingEngine` and
    :class:`~.base.BatchedEngine`. Output: ``(N,)`` float32 chunks at 32 kHz, not clipped
    (the decoder's range).

    Args:
        model_dir: a directory with the Hub repo's files (:func:`resolve_model_dir`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (``"auto"``: CUDA/ROCm when present).
        dtype: precision of the backbone's weights: ``"auto"`` (:data:`DEFAULT_CPU_DTYPE`
            on CPU, bfloat16 on GPU), ``"float32"``, ``"bfloat16"``, ``"float16"`` or
            ``"int8"`` (CPU). Activations between the matrix products, the KV cache and
            the sampling stay float32.
        decoder_dtype: precision of the decoder's matrix products: ``"auto"``
            (:data:`DEFAULT_CPU_DECODER_DTYPE` on CPU, float32 on GPU), ``"float32"`` or
            ``"bfloat16"``; norms, convolutions and the inverse FFT stay float32.
        max_batch: KV-cache slots: segments that can be in flight at once (each slot is
            8.9 MB of float32 for Soprano's 512 positions).
        temperature: 0 = greedy (the reference's default, 0.001, is greedy in effect);
            above 0 samples with ``top_p``.
        top_p: nucleus sampling mass when sampling.
        repetition_penalty: divides (multiplies, if negative) the logits of every token
            already in the prompt or output, as transformers' ``RepetitionPenaltyLogitsProcessor``.
        max_new_tokens: hard cap of audio tokens per segment (512 = 32.8 s); the prompt
            and the generated tokens together never exceed the model's 512 positions.
        max_tokens_per_char: caps runaway generation ("aah" hallucination) at
            ``16 + max_tokens_per_char × characters`` tokens.
        chunk_tokens: largest chunk, in 64 ms audio tokens.
        prefill_chunk_tokens: prompt tokens one step of :meth:`synthesize` (and
            :meth:`prefill`) runs at once.

    Raises:
        EngineLoadError: a file is missing, unreadable or does not match Soprano's
            layout; the message names the file.
    """

    name = "soprano"
    sample_rate = SAMPLE_RATE
    min_chunk_samples = TOKEN_SAMPLES

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        decoder_dtype: str = "auto",
        max_batch: int = 16,
        model_name: str | None = None,
        temperature: float = 0.0,
        top_p: float = 0.95,
        repetition_penalty: float = 1.2,
        max_new_tokens: int = 512,
        max_tokens_per_char: float = 6.0,
        chunk_tokens: int = 4,
        prefill_chunk_tokens: int = 64,
        seed: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model = model_name or str(self.model_dir)
        self.device = select_device(device)
        self.max_batch = max_batch
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.max_new_tokens = max_new_tokens
        self.max_tokens_per_char = max_tokens_per_char
        self.max_chunk_samples = self.chunk_samples = chunk_tokens * TOKEN_SAMPLES
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._generator = torch.Generator(device="cpu")
        if seed is not None:
            self._generator.manual_seed(seed)
        native_bf16 = cpu_has_native_bfloat16()
        if dtype == "auto":
            if self.device != "cpu":
                dtype = "bfloat16"
            else:
                dtype = DEFAULT_CPU_DTYPE if native_bf16 or DEFAULT_CPU_DTYPE != "bfloat16" else "float32"
        self.dtype = _precision(dtype, PRECISIONS, "dtype")
        if decoder_dtype == "auto":
            if self.device != "cpu":
                decoder_dtype = "float32"
            else:
                decoder_dtype = (
                    DEFAULT_CPU_DECODER_DTYPE if native_bf16 or DEFAULT_CPU_DECODER_DTYPE != "bfloat16" else "float32"
                )
        self.decoder_dtype = _precision(decoder_dtype, ("float32", "bfloat16"), "decoder_dtype")
        self._free: list[int] = list(range(max_batch))
        self._slots = threading.RLock()  # _free and _holders: step and decode may run on two threads
        self._holders: dict[int, weakref.ref[SopranoSequence]] = {}
        self._load()

    # -- loading -----------------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self.model_dir / name

    def _load(self) -> None:
        from soprano.vocos.decoder import SopranoDecoder
        from transformers import AutoTokenizer

        config_file = self._file("config.json")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EngineLoadError(f"{config_file}: not readable JSON ({exc})") from None
        if (
            not isinstance(config, dict)
            or config.get("hidden_size") != LATENT_DIM
            or "qwen3" not in str(config.get("model_type", ""))
        ):
            found = (config.get("model_type"), config.get("hidden_size")) if isinstance(config, dict) else (None, None)
            raise EngineLoadError(
                f"{config_file}: not a Soprano backbone (expected model_type qwen3 with hidden_size "
                f"{LATENT_DIM}, found {found[0]!r} / {found[1]!r})"
            )
        shape = Qwen3Shape.from_config(config, str(config_file))

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

        weights = load_weights(self._file("model.safetensors"), shape)
        self.backbone = Qwen3Backbone(weights, shape, slots=self.max_batch, device=self.device, precision=self.dtype)

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
        self.streaming_decoder = StreamingDecoder(self.decoder, self.device, self.decoder_dtype)
        log.info(
            "Soprano loaded from %s on %s (%s backbone, %s decoder, %d slots)",
            self.model_dir,
            self.device,
            self.dtype,
            self.decoder_dtype,
            self.max_batch,
        )

    # -- the batched interface (BatchedEngine) -----------------------------------------------

    @property
    def free_slots(self) -> int:
        """KV-cache slots not held by any sequence."""
        with self._slots:
            self._reclaim()
            return len(self._free)

    def _reclaim(self) -> None:
        """Free the slots of sequences nobody holds any more (a handle dropped without :meth:`release`)."""
        with self._slots:
            for slot, ref in list(self._holders.items()):
                if ref() is None:
                    del self._holders[slot]
                    self._free.append(slot)
            self._free.sort()

    def start(self, text: str, prefill: EngineSequence | None = None) -> SopranoSequence:
        """A sequence for the complete segment ``text`` (see :meth:`BatchedEngine.start`).

        Raises:
            ValueError: the prompt does not fit the model's positions.
        """
        prompt_text = prepare_text(text)
        if not prompt_text:
            if isinstance(prefill, SopranoSequence):
                self.release(prefill)
            return SopranoSequence([], speculative=False, finished=True, text=text)
        ids = self.tokenizer(f"{STOP}{TEXT}{prompt_text}{START}")["input_ids"]
        positions = self.backbone.max_positions
        if len(ids) >= positions:
            if isinstance(prefill, SopranoSequence):
                self.release(prefill)
            raise ValueError(
                f"the segment is {len(ids)} tokens long after normalisation; Soprano holds {positions} "
                f"positions: split the text into shorter sentences"
            )
        limit = min(
            self.max_new_tokens, int(16 + self.max_tokens_per_char * len(prompt_text)), positions - len(ids) + 1
        )
        if isinstance(prefill, SopranoSequence) and not prefill.released:
            seq = prefill
            seq.computed = min(seq.computed, _common_prefix(seq.ids, ids), len(ids) - 1)
        else:
            seq = SopranoSequence([], speculative=False)
        seq.ids, seq.speculative, seq.limit, seq.text = list(ids), False, limit, text
        seq.seen = torch.zeros(self.backbone.shape.vocab_size, dtype=torch.bool, device=self.device)
        seq.seen[torch.tensor(ids, device=self.device)] = True
        return seq

    def speculate(self, text: str, previous: EngineSequence | None = None) -> SopranoSequence | None:
        """A prefill-only sequence for the unfinished sentence ``text`` (see :meth:`BatchedEngine.speculate`).

        The last :data:`PREFILL_HOLDBACK_TOKENS` tokens are left out: the word being
        written may still change them.
        """
        prev = previous if isinstance(previous, SopranoSequence) and not previous.released else None
        prompt_text = prepare_text(text)
        ids = self.tokenizer(f"{STOP}{TEXT}{prompt_text}")["input_ids"][:-PREFILL_HOLDBACK_TOKENS]
        if len(ids) <= 2 or len(ids) >= self.backbone.max_positions:
            return prev
        if prev is None:
            return SopranoSequence(list(ids), speculative=True, text=text)
        prev.computed = min(prev.computed, _common_prefix(prev.ids, ids))
        prev.ids, prev.text = list(ids), text
        return prev

    def step(self, rows: Sequence[tuple[EngineSequence, int]]) -> None:
        """One forward of every row's next tokens (see :meth:`BatchedEngine.step`).

        Raises:
            BatchOutOfMemory: the device ran out of memory; nothing changed.
            ValueError: a row is finished, released or has no token to run.
        """
        seqs = [_own(seq) for seq, _ in rows]
        counts = [min(seq.pending_tokens, max(1, budget)) for seq, (_, budget) in zip(seqs, rows, strict=True)]
        for seq, count in zip(seqs, counts, strict=True):
            if seq.finished or seq.released or count < 1:
                raise ValueError("a finished or released sequence, or one with nothing to run, was stepped")
        with self._slots:
            for seq in seqs:
                if seq.slot is None:
                    if not self._free:
                        self._reclaim()
                    if not self._free:
                        raise RuntimeError(f"all {self.max_batch} KV-cache slots are in use")
                    seq.slot = self._free.pop(0)
                    self._holders[seq.slot] = weakref.ref(seq)
                    seq.computed = 0
        ids = [tok for seq, n in zip(seqs, counts, strict=True) for tok in seq.ids[seq.computed : seq.computed + n]]
        batch_rows = [Row(_slot(seq), seq.computed, n) for seq, n in zip(seqs, counts, strict=True)]
        now = time.monotonic()
        try:
            hidden = self.backbone.forward(torch.tensor(ids, device=self.device), batch_rows)
            sampling = [
                i
                for i, (seq, n) in enumerate(zip(seqs, counts, strict=True))
                if not seq.speculative and seq.computed + n == len(seq.ids)
            ]
            tokens = self._next_tokens(hidden[sampling], [seqs[i] for i in sampling]) if sampling else []
        except torch.OutOfMemoryError as exc:
            raise BatchOutOfMemory(f"{len(seqs)} sequences do not fit: {exc}") from exc
        # Commit: nothing above changed a sequence.
        for seq, n in zip(seqs, counts, strict=True):
            seq.computed += n
            if seq.started_at is None and not seq.speculative:
                seq.started_at = now
        for i, token in zip(sampling, tokens, strict=True):
            seq = seqs[i]
            if token != self.stop_id:
                seq.queued.append(hidden[i])
                seq.latents += 1
                seq.ids.append(token)
                assert seq.seen is not None
                seq.seen[token] = True
            if token == self.stop_id or seq.latents >= seq.limit:
                seq.finished = True
                self.evict(seq)  # its KV cache is no longer needed: the slot is free for others
        for seq in seqs:
            if seq.released:  # released by the other thread while this step ran
                self.evict(seq)

    def decode(self, sequences: Sequence[EngineSequence]) -> list[np.ndarray]:
        """Decode what each sequence has ready, in one decoder call (see :meth:`BatchedEngine.decode`).

        Raises:
            BatchOutOfMemory: the device ran out of memory; nothing changed.
        """
        seqs = [_own(seq) for seq in sequences]
        work = [s for s in seqs if not s.decoder.ended and (s.queued or s.finished)]
        # What each sequence has now: ``finished`` first, then its latents (a concurrent step
        # appends a latent before it sets ``finished``, so a finished sequence's last latent
        # is always among those taken).
        ends = [s.finished for s in work]
        taken = []
        for s in work:
            taken.append(s.queued)
            s.queued = []
        try:
            out = self.streaming_decoder.decode(
                [s.decoder for s in work],
                [torch.stack(q) if q else torch.zeros(0, LATENT_DIM, device=self.device) for q in taken],
                ends,
            )
        except BaseException as exc:
            for s, q in zip(work, taken, strict=True):  # transactional: the latents go back first
                s.queued[:0] = q
            if isinstance(exc, torch.OutOfMemoryError):
                raise BatchOutOfMemory(f"decoding {len(work)} sequences does not fit: {exc}") from exc
            raise
        # One transfer to the host for the whole batch.
        sizes = [o.shape[0] for o in out]
        host = torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)
        pieces = dict(zip(map(id, work), np.split(host, np.cumsum(sizes)[:-1]) if sizes else [], strict=True))
        return [pieces.get(id(s), np.zeros(0, dtype=np.float32)) for s in seqs]

    def evict(self, sequence: EngineSequence) -> None:
        """Free its KV slot; its cache is recomputed from its tokens when it runs again."""
        seq = _own(sequence)
        with self._slots:
            if seq.slot is not None:
                self._holders.pop(seq.slot, None)
                self._free.append(seq.slot)
                self._free.sort()  # lowest slots first: running sequences stay close together
                seq.slot = None
            seq.computed = 0

    def release(self, sequence: EngineSequence) -> None:
        """Free everything the sequence holds; it cannot run again."""
        seq = _own(sequence)
        self.evict(seq)
        seq.released = True
        seq.queued.clear()

    @torch.inference_mode()
    def _next_tokens(self, hidden: torch.Tensor, seqs: list[SopranoSequence]) -> list[int]:
        """Choose each row's next token from its (R, 512) hidden state: repetition penalty, then greedy or top-p."""
        logits = self.backbone.logits(hidden)
        if self.repetition_penalty != 1.0:
            seen = torch.stack([s.seen for s in seqs if s.seen is not None])
            penalised = torch.where(logits > 0, logits / self.repetition_penalty, logits * self.repetition_penalty)
            logits = torch.where(seen, penalised, logits)
        if self.temperature <= 0:
            return torch.argmax(logits, dim=-1).tolist()
        probs = torch.softmax(logits / self.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs)).cpu()
        pick = torch.multinomial(sorted_probs, 1, generator=self._generator).to(order.device)
        return torch.gather(order, 1, pick)[:, 0].tolist()

    # -- one stream at a time (TTSEngine, PrefillingEngine) ------------------------------------

    def synthesize(self, text: str, prefill: SopranoSequence | None = None) -> Iterator[np.ndarray]:
        """Speak one segment; yields ``(N,)`` float32 numpy chunks at 32 kHz (see :class:`TTSEngine`).

        The batched machinery with a batch of one: each ``next()`` runs model steps until
        a chunk is due (:meth:`stream_decode`), so other streams can interleave.

        Args:
            text: the segment.
            prefill: from :meth:`prefill` on a prefix of this text (taken over); any
                mismatch only reduces what is reused.

        Yields nothing when the text normalises to nothing or the model emits no audio token.
        """
        for chunk in self.stream_decode(self._latents(self.start(text, prefill))):
            yield chunk.cpu().numpy()

    def prefill(self, text: str, previous: SopranoSequence | None = None) -> SopranoSequence | None:
        """Run the prompt of a sentence that is still being written through the model, now.

        Args:
            text: the sentence so far (raw; normalised here).
            previous: an earlier prefill of this sentence; its common prefix is reused.

        Returns:
            The prefill to hand to :meth:`synthesize`, or ``previous`` unchanged when
            there is nothing new to compute (``None`` if there is nothing at all). With
            every KV slot taken, nothing is computed (it is only a speed-up).
        """
        seq = self.speculate(text, previous)
        while seq is not None and seq.pending_tokens and (seq.resident or self._free):
            self.step([(seq, self.prefill_chunk_tokens)])
        return seq

    def latents(
        self, prompt_text: str, max_new_tokens: int | None = None, prefill: SopranoSequence | None = None
    ) -> Iterator[torch.Tensor]:
        """Generate the audio latents of one normalised sentence, one step at a time.

        Args:
            prompt_text: output of :func:`prepare_text`.
            max_new_tokens: cap of audio tokens (default: the engine's caps).
            prefill: a :meth:`prefill` of a prefix of the prompt to start from.

        Yields:
            ``(512,)`` float32 tensors on the engine's device, one per audio token (64 ms),
            until ``[STOP]`` or the cap.
        """
        seq = self.start(prompt_text, prefill)
        if max_new_tokens is not None:
            seq.limit = max_new_tokens
        yield from self._latents(seq)

    def _latents(self, seq: SopranoSequence) -> Iterator[torch.Tensor]:
        try:
            while not seq.finished:
                self.step([(seq, self.prefill_chunk_tokens)])
                while seq.queued:
                    yield seq.queued.pop(0)
        finally:
            self.release(seq)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """One-shot decode with the package's own decoder (the reference for every streamed chunk).

        ``(T, 512)`` latents → ``(2048·(T−1),)`` float32 at 32 kHz on the CPU (empty if T < 2).
        """
        if latents.shape[0] < 2:
            return torch.zeros(0)
        with torch.inference_mode():
            x = latents.T.unsqueeze(0).to(self.device, torch.float32)
            return self.decoder(x)[0].float().cpu()

    def stream_decode(self, latents: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Decode latents as they arrive into chunks whose concatenation equals one-shot decoding.

        The first chunk is emitted as soon as anything is final (1536 samples after 4
        latents). After that the chunk size follows the listener's lead
        (:func:`~.base.chunk_target_samples`, counting from the first chunk as if the
        listener started playing then): between one token (2048 samples) and
        ``chunk_tokens`` tokens. Fast machines thus reach the largest chunks at once
        (least decoder overhead); slow ones keep small chunks while their lead is small.

        Yields:
            ``(N,)`` float32 tensors at 32 kHz on the engine's device.
        """
        state = DecoderState()
        queued: list[torch.Tensor] = []
        started = time.perf_counter()
        first_at: float | None = None
        for latent in latents:
            queued.append(latent)
            count = state.latents + len(queued)
            ready = final_samples(count, False) - state.samples
            if ready <= 0:
                continue
            if first_at is not None:
                now = time.perf_counter()
                lead_s = state.samples / SAMPLE_RATE - (now - first_at)
                rtf = (now - started) / (count * TOKEN_SAMPLES / SAMPLE_RATE)
                if ready < chunk_target_samples(lead_s, rtf, SAMPLE_RATE, TOKEN_SAMPLES, self.chunk_samples):
                    continue
            (chunk,) = self.streaming_decoder.decode([state], [torch.stack(queued)], [False])
            queued.clear()
            first_at = first_at or time.perf_counter()
            yield chunk
        if state.latents + len(queued) >= 2:
            (chunk,) = self.streaming_decoder.decode(
                [state], [torch.stack(queued) if queued else torch.zeros(0, LATENT_DIM, device=self.device)], [True]
            )
            if chunk.numel():
                yield chunk


def cpu_has_native_bfloat16() -> bool:
    """True when this CPU multiplies bfloat16 natively (x86 AVX-512 BF16 or AMX-BF16; read on Linux).

    Without it oneDNN emulates bfloat16 and the products are slower than float32, so the
    ``"auto"`` precisions fall back to float32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def _precision(value: str, allowed: tuple[Precision, ...], setting: str) -> Precision:
    for precision in allowed:
        if value == precision:
            return precision
    raise EngineLoadError(f"unknown Soprano {setting} {value!r}: one of auto, {', '.join(allowed)}")


def _own(seq: EngineSequence) -> SopranoSequence:
    if not isinstance(seq, SopranoSequence):
        raise TypeError(f"not a Soprano sequence: {type(seq).__name__}")
    return seq


def _slot(seq: SopranoSequence) -> int:
    assert seq.slot is not None
    return seq.slot


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
