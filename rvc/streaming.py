"""Block-wise RVC conversion for live streams: left context, pitch cache, SOLA crossfade.

The algorithm of the RVC WebUI's realtime GUI (``realtime_gui.py`` + ``infer/lib/rtrvc.py``),
re-implemented around :class:`~rvc.converter.VoiceConverter`:

1. Input is resampled to 16 kHz as it arrives and cut into blocks of ``block_ms``.
2. A rolling 16 kHz buffer holds ``context + crossfade + search + block`` (10 ms frames).
3. HuBERT runs over the whole buffer (the context gives the new frames their left
   context); index retrieval only touches frames after the context.
4. F0 is estimated only on the newest block plus margins, and written into a per-frame
   pitch cache that shifts with the buffer; frames at the very end, whose analysis
   window is cut off, hold the last reliable value until the next block re-estimates them.
5. The synthesizer decodes only ``block + crossfade + search`` frames after the context
   (``skip_head`` / ``return_length``); the NSF sine keeps a running phase across blocks.
6. SOLA (synchronous overlap-add, as in DDSP-SVC and the RVC GUI): the start of the new
   output is aligned within ``search`` to the tail kept from the previous block by
   normalised cross-correlation, cross-faded with sin² windows, and ``block`` samples are
   emitted; the next tail is kept.

The output therefore trails the input by ``crossfade + search`` (see :attr:`latency_samples`).

What is computed per block, and why (measured on 2 CPU cores, v2 48k voice, 250 ms
block, 500 ms context; see :mod:`rvc.runtime` for the per-part table):

* HuBERT over the whole buffer, every block: its first convolution is followed by a
  GroupNorm over the whole input (one mean/variance per channel across time) and its 12
  transformer layers attend over all frames, so no frame's features can be cached: new
  audio changes them all. This is the part that grows with the context.
* The prior (text) encoder over the whole buffer: relative-position self-attention over
  all frames (global, like HuBERT). Cheap (hidden size 192).
* The flow only from ``skip_head − 24`` frames: it is four WaveNet couplings of three
  kernel-5 convolutions, ±24 frames of receptive field, so 24 frames of left context give
  the new frames exactly the values the flow over the whole buffer would.
* The NSF-HiFi-GAN decoder only on ``block + crossfade + search`` frames: it is
  convolutional (local), the costliest part per frame (≈ 110 GFLOP per second of 48 kHz
  audio), and the context frames' audio is never emitted.
* F0 only on the newest block, with each estimator's own left context
  (:class:`StreamingF0`), and index retrieval only on the new frames.

What made it real time on a CPU is where the three networks run: OpenVINO (bf16 where
the CPU has AVX-512 BF16), 2–4× faster than PyTorch eager per part.
Unlike the GUI, unvoiced frames are not filled by interpolation, so that streaming and
whole-file conversion of the same input agree.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import soxr
import torch
import torch.nn.functional as F

from .content import CONTENT_SAMPLE_RATE
from .converter import VoiceConverter
from .f0 import F0_HOP_LENGTH, F0Estimator
from .pitch import shift_f0

log = logging.getLogger(__name__)

_FRAME = F0_HOP_LENGTH  # 10 ms at 16 kHz


def _frames(ms: float, name: str, minimum: int) -> int:
    n = round(ms / 10.0)
    if n < minimum:
        raise ValueError(f"{name} must be at least {minimum * 10} ms, got {ms}")
    return n


class StreamingF0:
    """F0 of a live 16 kHz stream, block by block, each block given the left context its
    estimator needs to give the value whole-file analysis would.

    Every block, the estimator sees the last ``context + edge + block`` frames of audio;
    the ``block + edge`` newest frames are (re)written (the ``edge`` frames held back last
    time now have the audio to their right), and the newest ``edge`` frames, whose
    analysis window reaches past the end, hold the last reliable value until the next
    block. The audio history is kept here, independent of the converter's HuBERT buffer,
    so a long F0 context (FCPE wants 1 s) costs no HuBERT time.

    Args:
        estimator: the F0 estimator (its ``context_frames`` and ``edge_frames``).
        block_frames: 10 ms frames per block.
        track_frames: how many of the newest frames :meth:`push` returns.
    """

    def __init__(self, estimator: F0Estimator, block_frames: int, track_frames: int) -> None:
        self.estimator = estimator
        self.block_frames = block_frames
        self.window_frames = estimator.context_frames + estimator.edge_frames + block_frames
        self.track_frames = max(track_frames, self.window_frames)
        self._audio = np.zeros(self.window_frames * _FRAME, dtype=np.float32)
        self._f0 = np.zeros(self.track_frames, dtype=np.float64)
        self._requested = track_frames

    def push(self, block_16k: np.ndarray) -> np.ndarray:
        """Add one block (``(block_frames · 160,)`` float32 at 16 kHz).

        Returns:
            ``(track_frames,)`` float64 F0 in Hz of the newest frames (a copy).
        """
        n, b = block_16k.size, self.block_frames
        self._audio[:-n] = self._audio[n:]
        self._audio[-n:] = block_16k
        self._f0[:-b] = self._f0[b:]
        f0 = self.estimator.estimate(self._audio, self.window_frames)
        edge = self.estimator.edge_frames
        fresh = b + edge
        self._f0[-fresh:] = f0[-fresh:]
        if edge:
            self._f0[-edge:] = self._f0[-edge - 1]
        return self._f0[-self._requested :].copy()


class StreamingConverter:
    """Converts a live stream block by block (one instance per client stream).

    Args:
        converter: the models and inference settings (shared read-only between streams).
        input_sample_rate: sample rate in Hz of the audio given to :meth:`process`.
        block_ms: audio converted per inference, rounded to 10 ms (≥ 20 ms).
        context_ms: left context given to HuBERT and the synthesizer's prior, rounded
            to 10 ms (≥ 0).
        crossfade_ms: SOLA crossfade between consecutive blocks, rounded to 10 ms
            (≥ 10 ms, ≤ block).
        search_ms: SOLA alignment search range (10 ms upstream).

    Raises:
        ValueError: settings out of range.
    """

    def __init__(
        self,
        converter: VoiceConverter,
        input_sample_rate: int,
        block_ms: float = 250,
        context_ms: float = 2500,
        crossfade_ms: float = 50,
        search_ms: float = 10,
    ) -> None:
        if input_sample_rate <= 0:
            raise ValueError(f"input_sample_rate must be positive, got {input_sample_rate}")
        self.converter = converter
        self.input_sample_rate = int(input_sample_rate)
        self.block_frames = _frames(block_ms, "block_ms", 2)
        self.context_frames = _frames(context_ms, "context_ms", 0)
        self.crossfade_frames = _frames(crossfade_ms, "crossfade_ms", 1)
        self.search_frames = _frames(search_ms, "search_ms", 0)
        if self.crossfade_frames > self.block_frames:
            raise ValueError(f"crossfade_ms ({crossfade_ms}) must not exceed block_ms ({block_ms})")
        voice = converter.voice
        self.hop = voice.hop_length  # output samples per 10 ms frame
        self.return_frames = self.block_frames + self.crossfade_frames + self.search_frames
        self.buffer_frames = self.context_frames + self.return_frames
        self.buffer_frames += self.buffer_frames % 2  # even: HuBERT's 20 ms frames tile it
        self.skip_frames = self.buffer_frames - self.return_frames
        n_fade = self.crossfade_frames * self.hop
        self._fade_in = (np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, n_fade)) ** 2).astype(np.float32)
        self._fade_out = 1.0 - self._fade_in
        self.reset()

    # ---------------------------------------------------------------- public

    @property
    def output_sample_rate(self) -> int:
        """Sample rate in Hz of everything returned (the voice's: 32000, 40000 or 48000)."""
        return self.converter.sample_rate

    @property
    def latency_samples(self) -> int:
        """How far the output trails the input, in output samples (crossfade + search).

        The stream's first ``latency_samples`` output samples are the converted silence
        that precedes the first input sample (less any SOLA shift, at most ``search``).
        """
        return (self.crossfade_frames + self.search_frames) * self.hop

    @property
    def block_samples(self) -> int:
        """Output samples emitted per processed block."""
        return self.block_frames * self.hop

    def reset(self) -> None:
        """Forget the stream: empty buffers, pitch cache, phase and SOLA state."""
        self._resampler = (
            soxr.ResampleStream(self.input_sample_rate, CONTENT_SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if self.input_sample_rate != CONTENT_SAMPLE_RATE
            else None
        )
        self._pending = np.zeros(0, dtype=np.float32)
        self._buffer = np.zeros(self.buffer_frames * _FRAME, dtype=np.float32)
        est = self.converter.f0_estimator
        self._f0 = np.zeros(self.buffer_frames, dtype=np.float64)
        self._f0_stream = (
            StreamingF0(est, self.block_frames, self.buffer_frames)
            if est is not None and self.converter.voice.f0
            else None
        )
        self._phase = 0.0
        self._tail: np.ndarray | None = None  # output after the emitted block: crossfade + search
        self._generator = self.converter.new_generator()
        self.last_sola_offset = 0
        self._pitch_shift = 0.0

    def process(self, audio: np.ndarray, pitch_shift: float = 0.0) -> np.ndarray:
        """Feed input; get back the converted audio of every block completed so far.

        Args:
            audio: ``(N,)`` float32 mono at :attr:`input_sample_rate`, any ``N`` (0 too).
            pitch_shift: semitones, −24..24; applies from the next block on.

        Returns:
            ``(M,)`` float32 at :attr:`output_sample_rate`; ``M`` is a multiple of
            :attr:`block_samples` (0 while a block is still incomplete).

        Raises:
            ValueError: ``pitch_shift`` out of range, audio not 1-D or not finite.
        """
        shift_f0(np.zeros(1), pitch_shift)
        self._pitch_shift = pitch_shift
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"audio must be (N,), got shape {x.shape}")
        if x.size and not np.all(np.isfinite(x)):
            raise ValueError("audio contains NaN or infinite samples")
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x) if x.size else x
        self._pending = np.concatenate([self._pending, x.astype(np.float32)])
        return self._drain(pitch_shift)

    def flush(self, pitch_shift: float | None = None) -> np.ndarray:
        """End of an utterance: convert what is buffered and return all remaining output.

        ``pitch_shift`` defaults to the value of the last :meth:`process` call.

        The partial block is padded with silence; the held crossfade tail is emitted
        too (with a 10 ms fade-out), so every input sample is represented. The stream is
        then :meth:`reset` and ready for the next utterance.

        Returns:
            ``(M,)`` float32 at :attr:`output_sample_rate` (possibly empty).
        """
        pitch_shift = self._pitch_shift if pitch_shift is None else pitch_shift
        shift_f0(np.zeros(1), pitch_shift)
        if self._resampler is not None:
            self._pending = np.concatenate(
                [
                    self._pending,
                    self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True).astype(np.float32),
                ]
            )
        out = []
        if self._pending.size:
            block = self.block_frames * _FRAME
            pad = (-self._pending.size) % block
            self._pending = np.concatenate([self._pending, np.zeros(pad, dtype=np.float32)])
            out.append(self._drain(pitch_shift))
        if self._tail is not None:
            tail = self._tail.copy()
            n = min(len(tail), self.hop)
            tail[len(tail) - n :] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
            out.append(tail)
        self.reset()
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    # ---------------------------------------------------------------- internals

    def _drain(self, pitch_shift: float) -> np.ndarray:
        block = self.block_frames * _FRAME
        out = []
        while self._pending.size >= block:
            new, self._pending = self._pending[:block], self._pending[block:]
            out.append(self._process_block(new, pitch_shift))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _process_block(self, new: np.ndarray, pitch_shift: float) -> np.ndarray:
        conv = self.converter
        n = new.size
        self._buffer[:-n] = self._buffer[n:]
        self._buffer[-n:] = new
        f0 = None
        if self._f0_stream is not None:
            self._f0 = self._f0_stream.push(new)
            f0 = shift_f0(self._f0, pitch_shift)
        blended, raw = conv.features(self._buffer, retrieve_from=self.skip_frames // 2)
        half = self.buffer_frames // 2
        if blended.shape[1] < half:  # HuBERT yields T/2 - 1 frames: repeat the last (upstream)
            reps = half - blended.shape[1]
            blended = torch.cat([blended, blended[:, -1:].expand(-1, reps, -1)], dim=1)
            raw = torch.cat([raw, raw[:, -1:].expand(-1, reps, -1)], dim=1)
        wav = conv.synthesize(
            blended,
            raw,
            f0,
            skip_head=self.skip_frames,
            return_length=self.return_frames,
            generator=self._generator,
            phase0=self._phase,
        )
        if f0 is not None:
            region = f0[self.skip_frames : self.skip_frames + self.block_frames]
            self._phase = math.fmod(self._phase + float(np.sum(region)) * self.hop / conv.sample_rate, 1.0)
        out = self._sola(wav)
        return out

    def _sola(self, wav: np.ndarray) -> np.ndarray:
        n_fade = self._fade_in.size
        n_search = self.search_frames * self.hop
        block = self.block_frames * self.hop
        offset = 0
        if self._tail is not None:
            prev = self._tail[:n_fade]
            seg = torch.from_numpy(np.ascontiguousarray(wav[: n_fade + n_search]))[None, None]
            ref = torch.from_numpy(np.ascontiguousarray(prev))[None, None]
            num = F.conv1d(seg, ref)[0, 0]
            den = torch.sqrt(F.conv1d(seg**2, torch.ones_like(ref))[0, 0] + 1e-8)
            offset = int(torch.argmax(num / den))
            wav = wav[offset:].copy()
            wav[:n_fade] = wav[:n_fade] * self._fade_in + prev * self._fade_out
        else:  # first block: fade in from silence, as a crossfade with a silent tail would
            wav = wav.copy()
            wav[:n_fade] *= self._fade_in
        self.last_sola_offset = offset
        self._tail = wav[block:].copy()
        return wav[:block].astype(np.float32)


#: Block sizes (ms) and contexts (ms) :func:`choose_block_settings` picks from.
CANDIDATE_BLOCKS_MS = (100, 150, 250, 350, 500)
CANDIDATE_CONTEXTS_MS = (2500, 500)


def choose_block_settings(
    compute_ms: dict[tuple[int, int], float], headroom: float = 0.8, crossfade_ms: float = 50
) -> tuple[int, int] | None:
    """The block and context that keep a stream real time with the least added latency.

    A block of ``B`` ms that takes ``c`` ms to convert keeps up with playback when
    ``c ≤ B`` (each block is converted before the next one's input is complete); asking
    ``c ≤ headroom · B`` leaves ``1 − headroom`` of the time for the TTS engine sharing the
    CPU and for jitter. What the block adds to the time to first audio is
    ``B + c + crossfade + 10 ms`` (collect the block, convert it, hold the SOLA tail), so
    among the settings that keep up the one with the least ``B + c`` wins; on a tie, the
    longer context (better content features).

    Args:
        compute_ms: measured ms per block for ``(block_ms, context_ms)`` settings.
        headroom: the share of real time conversion may use, 0 < headroom ≤ 1.
        crossfade_ms: the SOLA crossfade (only shifts every candidate's latency alike).

    Returns:
        ``(block_ms, context_ms)``, or ``None`` when no setting keeps up.
    """
    feasible = [(b + c + crossfade_ms + 10, -ctx, b, ctx) for (b, ctx), c in compute_ms.items() if c <= headroom * b]
    if not feasible:
        return None
    _, _, block, context = min(feasible)
    return block, context


def measure_block_ms(converter: VoiceConverter, block_ms: int, context_ms: int, blocks: int = 2) -> float:
    """Median ms to convert one block of ``block_ms`` with ``context_ms`` (after one warm-up block)."""
    import time

    stream = StreamingConverter(converter, CONTENT_SAMPLE_RATE, block_ms=block_ms, context_ms=context_ms)
    n = stream.block_frames * _FRAME
    noise = np.random.default_rng(0).standard_normal(n * (blocks + 1)).astype(np.float32) * 0.05
    stream.process(noise[:n])
    times = []
    for i in range(1, blocks + 1):
        t0 = time.perf_counter()
        stream.process(noise[i * n : (i + 1) * n])
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
