"""Whole-utterance RVC conversion: content features + F0 → the voice's synthesizer.

Follows the RVC WebUI's offline pipeline (``infer/modules/vc/pipeline.py``, class
``Pipeline``) step for step so that the same weights and input give the same audio:
16 kHz input, 48 Hz high-pass (5th-order Butterworth, zero-phase), reflect padding of
``x_pad`` seconds, cuts at quiet points when longer than ``x_max`` seconds, F0 on the
whole padded signal, HuBERT + optional index retrieval + ×2 frame upsampling per
segment, ``protect`` blending of unvoiced frames, synthesis, padding removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from scipy import signal

from .content import CONTENT_SAMPLE_RATE, ContentEncoder
from .f0 import F0_HOP_LENGTH, F0Estimator
from .pitch import coarse_pitch, shift_f0
from .voice import Voice

log = logging.getLogger(__name__)

_HIGHPASS = signal.butter(N=5, Wn=48, btype="high", fs=CONTENT_SAMPLE_RATE)


@dataclass(frozen=True)
class SegmentSettings:
    """How the offline pipeline pads and cuts long inputs, in seconds (upstream ``x_pad`` …).

    The defaults are upstream's for float32 inference; upstream uses (3, 10, 60, 65)
    with float16 on GPUs with more memory.
    """

    pad_s: int = 1
    query_s: int = 6
    center_s: int = 38
    max_s: int = 41


def resample(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """``(N,)`` float32 at ``sample_rate`` → float32 at ``target_rate`` (soxr, high quality)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == target_rate:
        return audio
    return soxr.resample(audio, sample_rate, target_rate, quality="HQ").astype(np.float32)


def highpass_16k(audio_16k: np.ndarray) -> np.ndarray:
    """Remove content below 48 Hz from 16 kHz audio (zero-phase 5th-order Butterworth), float64."""
    return signal.filtfilt(*_HIGHPASS, np.asarray(audio_16k, dtype=np.float64))


class VoiceConverter:
    """Converts speech into a voice: a bundle of the three models and the inference settings.

    The models are only read, so one voice, content encoder and F0 estimator can serve
    many converters and streams; calls must come from one thread at a time (PyTorch
    modules are not re-entrant on the same CUDA stream).

    Args:
        voice: the target voice.
        content_encoder: HuBERT/ContentVec; must fit ``voice.version``.
        f0_estimator: needed for pitch-guided voices (``voice.f0``); ignored otherwise.
        speaker_id: row of the voice's speaker table (0 for single-speaker voices).
        protect: 0..0.5; below 0.5, unvoiced frames keep ``1 − protect`` of the
            un-retrieved features (protects consonants when an index is used).
        noise: sample the prior and the NSF noise (upstream behaviour); ``False`` makes
            conversion deterministic.
        seed: if set, every call draws its noise from a generator seeded with it, so
            results are reproducible (and equal upstream's after ``torch.manual_seed``).
        segments: padding and cutting of long inputs.

    Raises:
        VoiceFileError: the content encoder cannot serve this voice's version.
        ValueError: a pitch-guided voice without an F0 estimator, or bad settings.
    """

    def __init__(
        self,
        voice: Voice,
        content_encoder: ContentEncoder,
        f0_estimator: F0Estimator | None = None,
        *,
        speaker_id: int = 0,
        protect: float = 0.33,
        noise: bool = True,
        seed: int | None = None,
        segments: SegmentSettings = SegmentSettings(),
    ) -> None:
        content_encoder.check_compatible(voice.version)
        content_encoder.prepare(voice.version)
        if voice.f0 and f0_estimator is None:
            raise ValueError(f"voice {voice.name} is pitch-guided: an F0 estimator is required")
        if not 0 <= speaker_id < voice.synthesizer.emb_g.num_embeddings:
            raise ValueError(
                f"speaker_id {speaker_id} is outside the voice's {voice.synthesizer.emb_g.num_embeddings} speakers"
            )
        if not 0.0 <= protect <= 0.5:
            raise ValueError(f"protect must be within 0..0.5, got {protect}")
        self.voice = voice
        self.content_encoder = content_encoder
        self.f0_estimator = f0_estimator
        self.speaker_id = speaker_id
        self.protect = protect
        self.noise = noise
        self.seed = seed
        self.segments = segments

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (the voice's)."""
        return self.voice.sample_rate

    def new_generator(self) -> torch.Generator | None:
        """A generator seeded with :attr:`seed`, or ``None`` (torch's global RNG)."""
        if self.seed is None:
            return None
        return torch.Generator(device=self.voice.device).manual_seed(self.seed)

    # ---------------------------------------------------------------- steps (shared with streaming)

    def features(
        self, audio_16k: np.ndarray | torch.Tensor, *, retrieve_from: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Content features at 50 frames/s, with index retrieval.

        Args:
            audio_16k: ``(N,)`` float waveform at 16 kHz.
            retrieve_from: first 50 Hz frame to which retrieval is applied (the
                streaming converter skips its context frames).

        Returns:
            ``(blended, raw)``: two ``(1, T, 256|768)`` tensors in the voice's dtype on
            its device; ``raw`` is before retrieval (used by ``protect``).
        """
        x = torch.as_tensor(np.asarray(audio_16k, dtype=np.float32))
        raw = self.content_encoder(x, self.voice.version).to(device=self.voice.device, dtype=self.voice.dtype)
        blended = raw
        index = self.voice.index
        if index is not None and self.voice.index_rate > 0 and retrieve_from < raw.shape[1]:
            part = raw[0, retrieve_from:].float().cpu().numpy()
            mixed = torch.from_numpy(index.blend(part, self.voice.index_rate))
            blended = raw.clone()
            blended[0, retrieve_from:] = mixed.to(device=raw.device, dtype=raw.dtype)
        return blended, raw

    def pitch(self, f0: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T,)`` F0 in Hz → ``(1, T)`` int64 coarse pitch and ``(1, T)`` float32 F0 on the device."""
        dev = self.voice.device
        return (
            torch.from_numpy(coarse_pitch(f0))[None].to(dev),
            torch.from_numpy(np.asarray(f0, dtype=np.float32))[None].to(dev),
        )

    def synthesize(
        self,
        blended: torch.Tensor,
        raw: torch.Tensor,
        f0: np.ndarray | None,
        *,
        skip_head: int = 0,
        return_length: int | None = None,
        generator: torch.Generator | None = None,
        phase0: float = 0.0,
    ) -> np.ndarray:
        """Upsample 50 Hz features to 100 Hz frames and run the synthesizer.

        Args:
            blended, raw: from :meth:`features`.
            f0: ``(T100,)`` shifted F0 in Hz for pitch-guided voices (else ignored);
                frames beyond the feature frames are dropped.
            skip_head, return_length, generator, phase0: see :meth:`Synthesizer.infer`.

        Returns:
            ``(return_length · hop_length,)`` float32 at the voice's sample rate.
        """
        feats = F.interpolate(blended.transpose(1, 2), scale_factor=2).transpose(1, 2)
        n = feats.shape[1] if f0 is None or not self.voice.f0 else min(feats.shape[1], len(f0))
        feats = feats[:, :n]
        pitch = pitchf = None
        if self.voice.f0:
            pitch, pitchf = self.pitch(np.asarray(f0)[:n])
            if self.protect < 0.5:
                raw_up = F.interpolate(raw.transpose(1, 2), scale_factor=2).transpose(1, 2)[:, :n]
                keep = torch.where(pitchf > 0, 1.0, self.protect).to(feats.dtype)[..., None]
                feats = feats * keep + raw_up * (1 - keep)
        with torch.inference_mode():
            out = self.voice.synthesizer.infer(
                feats,
                pitch,
                pitchf,
                self.speaker_id,
                skip_head=skip_head,
                return_length=return_length,
                noise=self.noise,
                generator=generator,
                phase0=phase0,
            )
        return out[0].cpu().numpy()

    # ---------------------------------------------------------------- whole file

    def convert(self, audio: np.ndarray, sample_rate: int, pitch_shift: float = 0.0) -> np.ndarray:
        """Convert a whole utterance.

        Args:
            audio: ``(N,)`` float32 mono in [-1, 1] (``(N, C)`` is averaged to mono).
            sample_rate: of ``audio``, in Hz.
            pitch_shift: semitones, −24..24 (F0 · 2^(n/12) before synthesis).

        Returns:
            ``(M,)`` float32 at :attr:`sample_rate`, ``M ≈ N · sample_rate_out / sample_rate``
            (to within a frame).

        Raises:
            ValueError: bad ``pitch_shift`` or ``sample_rate``, empty or non-finite audio.
        """
        x = _as_mono(audio)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        shift_f0(np.zeros(1), pitch_shift)  # validates the range
        x16 = highpass_16k(resample(x, sample_rate, CONTENT_SAMPLE_RATE))
        seg = self.segments
        win = F0_HOP_LENGTH
        t_pad = CONTENT_SAMPLE_RATE * seg.pad_s
        t_pad_out = self.sample_rate * seg.pad_s
        t_query = CONTENT_SAMPLE_RATE * seg.query_s
        t_center = CONTENT_SAMPLE_RATE * seg.center_s
        if len(x16) < 2 * win:
            return np.zeros(0, dtype=np.float32)
        cuts = []
        if len(x16) + win > CONTENT_SAMPLE_RATE * seg.max_s:
            cuts = _quiet_cut_points(x16, win, t_center, t_query)
        padded = np.pad(x16, (t_pad, t_pad), mode="reflect")
        n_frames = len(padded) // win
        f0 = None
        if self.f0_estimator is not None and self.voice.f0:
            f0 = shift_f0(self.f0_estimator.estimate(padded, n_frames), pitch_shift)[:n_frames]
        generator = self.new_generator()
        pieces = []
        start = 0
        for cut in [*cuts, None]:
            if cut is None:
                chunk = padded[start:]
                chunk_f0 = f0[start // win :] if f0 is not None else None
            else:
                cut = cut // win * win
                chunk = padded[start : cut + 2 * t_pad + win]
                chunk_f0 = f0[start // win : (cut + 2 * t_pad) // win] if f0 is not None else None
            pieces.append(self._convert_chunk(chunk, chunk_f0, generator)[t_pad_out:-t_pad_out])
            if cut is not None:
                start = cut
        return np.concatenate(pieces).astype(np.float32)

    def _convert_chunk(self, chunk: np.ndarray, f0: np.ndarray | None, generator) -> np.ndarray:
        blended, raw = self.features(chunk.astype(np.float32))
        n = min(len(chunk) // F0_HOP_LENGTH, 2 * blended.shape[1])
        if f0 is not None:
            f0 = f0[:n]
            n = min(n, len(f0))
        out = self.synthesize(blended, raw, f0, return_length=n, generator=generator)
        return out


def _as_mono(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"audio must be (N,) or (N, channels), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinite samples")
    return x


def _quiet_cut_points(x16: np.ndarray, win: int, t_center: int, t_query: int) -> list[int]:
    """Cut positions near every ``t_center`` samples where a 10 ms moving sum is closest to 0."""
    padded = np.pad(x16, (win // 2, win // 2), mode="reflect")
    moving = np.zeros_like(x16)
    for i in range(win):
        moving += padded[i : i - win]
    cuts = []
    for t in range(t_center, len(x16), t_center):
        window = np.abs(moving[t - t_query : t + t_query])
        cuts.append(t - t_query + int(np.where(window == window.min())[0][0]))
    return cuts
