"""Soprano's decoder run incrementally: every frame computed once, many sequences per call.

The decoder (``soprano.vocos.decoder.SopranoDecoder``, Vocos-style) turns latents
``(T, 512)`` into ``2048·(T−1)`` samples at 32 kHz:

1. linear interpolation ×4 with ``align_corners=True``: frame ``4k + j`` is
   ``(1 − j/4)·x[k] + (j/4)·x[k+1]``, ``4(T−1)+1`` frames;
2. ``embed`` (a kernel-1 convolution 512 → 768) and a LayerNorm, per frame;
3. 8 ConvNeXt blocks: a depthwise convolution of kernel 3 (zero padding 1), then per
   frame LayerNorm → Linear 768→2304 → GELU → Linear 2304→768 → ×γ, plus the residual;
4. a final LayerNorm, and the ISTFT head per frame: Linear 768→2050, magnitude
   ``min(exp(·), 100)`` and phase, DC and Nyquist bins zeroed, inverse real FFT of 2048,
   Hann window;
5. overlap-add with hop 512 divided by the summed squared window (``torch.istft`` with
   ``center=True``: the first 1024 samples of the overlap-add are dropped).

Only steps 1, 3's depthwise convolution and 5 look at neighbouring frames, each by a
fixed amount: interpolation needs the next latent, each depthwise convolution one frame
on each side, overlap-add the three frames after a block of 512 samples. So the decoder
can run **incrementally**: it keeps, per sequence, the last latent, the last two input
frames of every block, and the three unfinished 512-sample blocks of the overlap-add,
and turns new latents into exactly the samples they make final: after ``T`` latents,
interpolation has ``4T−3`` frames, each block holds one back (``4T−11`` after eight),
and overlap-add completes ``4T−11`` blocks of which the first two are padding — samples
``[0, 2048·T − 6656)``. When the sequence ends, zero padding closes every block and the
rest of the ``2048·(T−1)`` samples follow. The concatenated output equals one-shot
decoding of all latents up to float32 rounding (a test checks it, and that one sample
more would not be final), and no frame is ever computed twice: the reference streamer
re-decodes a window of 4 + chunk tokens for every chunk.

Batching. Everything but the three neighbour steps is per frame, so one call decodes the
new frames of many sequences as one matrix (every product reads the weights once for
all of them); the depthwise convolutions gather each sequence's frames with its own
context, so sequences of any lengths, at any point of their sentences, share a call.

State is committed only when a call succeeds, so a failed call (out of memory, a bad
input) can be retried on a part of its sequences without loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .linear import Linear, Precision

#: Samples per latent at 32 kHz (hop 512 × upsampling 4).
TOKEN_SAMPLES = 2048
#: With T latents (sequence not ended), samples [0, 2048·T − LOOKAHEAD_SAMPLES) are final.
LOOKAHEAD_SAMPLES = 6656
_HOP = 512
_UPSAMPLE = 4


def final_samples(latents: int, ended: bool) -> int:
    """Samples the decoder can emit after ``latents`` latents (see the module docstring)."""
    if ended:
        return TOKEN_SAMPLES * max(0, latents - 1)
    return max(0, TOKEN_SAMPLES * latents - LOOKAHEAD_SAMPLES)


@dataclass
class DecoderState:
    """One sequence's place in the decoder (create one per sentence; used by one call at a time).

    Attributes:
        latents: latents received so far.
        samples: samples emitted so far.
        ended: the sequence ended and everything was emitted.
    """

    latents: int = 0
    samples: int = 0
    ended: bool = False
    _last: torch.Tensor | None = None  # the previous latent (interpolation)
    _context: list[torch.Tensor] = field(default_factory=list)  # per block: its last ≤ 2 input frames
    _frames: int = 0  # frames through the whole stack (= overlap-add frames)
    _tail: torch.Tensor | None = None  # (2, 3, 512): unfinished overlap-add blocks and their window sums


class StreamingDecoder:
    """Soprano's decoder, incremental and batched (see the module docstring).

    Args:
        decoder: a loaded ``soprano.vocos.decoder.SopranoDecoder`` (its weights are copied).
        device: where the decoder runs.
        precision: of its matrix products (:class:`~.linear.Linear`); norms, convolutions
            and the FFT stay float32.
    """

    def __init__(
        self, decoder: torch.nn.Module, device: str | torch.device = "cpu", precision: Precision = "float32"
    ) -> None:
        state = {k: v.detach().to(device=device, dtype=torch.float32) for k, v in decoder.state_dict().items()}
        self.device = torch.device(device)
        self.dim = state["decoder.norm.weight"].shape[0]
        embed = state["decoder.embed.weight"]
        if embed.shape[-1] != 1:
            raise ValueError(f"the decoder's embed kernel is {embed.shape[-1]}, this decoder streams kernel 1 only")
        self.embed = Linear(embed[:, :, 0], state["decoder.embed.bias"], precision)
        self.norm = (state["decoder.norm.weight"], state["decoder.norm.bias"])
        self.blocks = []
        i = 0
        while f"decoder.convnext.{i}.dwconv.weight" in state:
            p = f"decoder.convnext.{i}."
            dw = state[p + "dwconv.weight"]
            if dw.shape[-1] != 3:
                raise ValueError(f"ConvNeXt block {i} has kernel {dw.shape[-1]}, this decoder streams kernel 3 only")
            self.blocks.append(
                _Block(
                    taps=dw[:, 0, :].T.contiguous(),  # (3, dim): taps for x[t−1], x[t], x[t+1]
                    dw_bias=state[p + "dwconv.bias"],
                    norm=(state[p + "norm.weight"], state[p + "norm.bias"]),
                    pw1=Linear(state[p + "pwconv1.weight"], state[p + "pwconv1.bias"], precision),
                    pw2=Linear(state[p + "pwconv2.weight"], state[p + "pwconv2.bias"], precision),
                    gamma=state[p + "gamma"],
                )
            )
            i += 1
        self.final_norm = (state["decoder.final_layer_norm.weight"], state["decoder.final_layer_norm.bias"])
        self.head = Linear(state["head.out.weight"], state["head.out.bias"], precision)
        window = state["head.istft.window"]
        self.n_fft = window.shape[0]
        if self.n_fft != _UPSAMPLE * _HOP:
            raise ValueError(f"ISTFT window of {self.n_fft} samples; this decoder streams n_fft = 4 × hop = 2048 only")
        self.window = window
        self.window_sq = window.square().view(_UPSAMPLE, _HOP)
        self.weights = torch.tensor([j / _UPSAMPLE for j in range(1, _UPSAMPLE + 1)], device=self.device)[:, None]

    # -- public -------------------------------------------------------------------------------

    def decode(
        self, states: Sequence[DecoderState], latents: Sequence[torch.Tensor], end: Sequence[bool]
    ) -> list[torch.Tensor]:
        """Feed new latents to several sequences at once and return the samples they make final.

        Args:
            states: one per sequence (distinct).
            latents: per sequence, ``(n, 512)`` float32 new latents (``n`` may be 0).
            end: per sequence, whether its last latent is among those given: then all its
                remaining samples are returned and its state is finished.

        Returns:
            Per sequence, ``(N,)`` float32 samples at 32 kHz on :attr:`device`, continuing
            exactly where its previous call stopped.

        Raises:
            ValueError: a state that already ended.
            Exception: whatever torch raises (out of memory...); no state is changed then.
        """
        if any(s.ended for s in states):
            raise ValueError("a decoder state that already ended was fed again")
        updates = [_Update(s) for s in states]
        frames = [self._interpolate(u, x.to(self.device, torch.float32)) for u, x in zip(updates, latents, strict=True)]
        counts = [f.shape[0] for f in frames]
        x = torch.cat(frames) if frames else torch.zeros(0, self.dim, device=self.device)
        x = F.layer_norm(self.embed(x) if x.shape[0] else x.new_zeros(0, self.dim), (self.dim,), *self.norm, 1e-6)
        for index, block in enumerate(self.blocks):
            x, counts = self._block(block, index, x, counts, updates, end)
        x = F.layer_norm(x, (self.dim,), *self.final_norm, 1e-6)
        out = self._istft(x, counts, updates, end)
        for u, e in zip(updates, end, strict=True):
            u.commit(e)
        return out

    # -- stages ------------------------------------------------------------------------------

    def _interpolate(self, u: _Update, latents: torch.Tensor) -> torch.Tensor:
        """New latents → the interpolation frames they complete, ``(n_frames, 512)``."""
        n = latents.shape[0]
        u.latents += n
        if n == 0:
            return latents.new_zeros(0, latents.shape[-1] if latents.dim() == 2 else 512)
        previous = u.state._last
        pieces = []
        if previous is None:
            pieces.append(latents[:1])  # frame 0 is the first latent itself
            previous, latents = latents[0], latents[1:]
        if latents.shape[0]:
            before = torch.cat([previous[None], latents[:-1]])  # (m, 512)
            w = self.weights[None]  # (1, 4, 1)
            pieces.append(((1 - w) * before[:, None] + w * latents[:, None]).reshape(-1, before.shape[-1]))
            previous = latents[-1]
        u.last = previous
        return torch.cat(pieces)

    def _block(
        self,
        block: _Block,
        index: int,
        x: torch.Tensor,
        counts: list[int],
        updates: list[_Update],
        end: Sequence[bool],
    ) -> tuple[torch.Tensor, list[int]]:
        """One ConvNeXt block over every sequence's new frames, each with its own context."""
        pieces: list[torch.Tensor] = []
        centres: list[torch.Tensor] = []
        out_counts: list[int] = []
        offset = 0
        zero = x.new_zeros(1, self.dim)
        for u, new, e in zip(updates, x.split(counts), end, strict=True):
            context = u.context(index, zero)
            ext = torch.cat([context, new, zero]) if e else torch.cat([context, new])
            produced = ext.shape[0] - 2
            u.set_context(index, torch.cat([context, new])[-2:])
            pieces.append(ext)
            if produced > 0:
                centres.append(torch.arange(offset + 1, offset + 1 + produced, device=self.device))
            out_counts.append(max(0, produced))
            offset += ext.shape[0]
        if not centres:
            return x.new_zeros(0, self.dim), out_counts
        ext_all = torch.cat(pieces)
        centre = torch.cat(centres)
        residual = ext_all.index_select(0, centre)
        h = (
            ext_all.index_select(0, centre - 1) * block.taps[0]
            + residual * block.taps[1]
            + ext_all.index_select(0, centre + 1) * block.taps[2]
            + block.dw_bias
        )
        h = F.layer_norm(h, (self.dim,), *block.norm, 1e-6)
        h = block.pw2(F.gelu(block.pw1(h)))
        return residual + block.gamma * h, out_counts

    def _istft(
        self, x: torch.Tensor, counts: list[int], updates: list[_Update], end: Sequence[bool]
    ) -> list[torch.Tensor]:
        """ISTFT head: frames → spectra → windowed inverse FFT → overlap-add per sequence."""
        half = self.n_fft // 2 + 1
        if x.shape[0]:
            mag, phase = self.head(x).split(half, dim=-1)
            mag = torch.clip(torch.exp(mag), max=1e2)
            spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
            spec[:, 0] = 0  # as Soprano's ISTFT head: DC and Nyquist bins are zeroed
            spec[:, -1] = 0
            frames = torch.fft.irfft(spec, self.n_fft, dim=-1, norm="backward") * self.window
        else:
            frames = x.new_zeros(0, self.n_fft)
        out = []
        for u, f, e in zip(updates, frames.split(counts), end, strict=True):
            out.append(self._overlap_add(u, f.view(-1, _UPSAMPLE, _HOP), e))
        return out

    def _overlap_add(self, u: _Update, frames: torch.Tensor, end: bool) -> torch.Tensor:
        """Add ``frames`` (n, 4, 512) into the sequence's overlap-add; return its finished samples."""
        n = frames.shape[0]
        tail = u.state._tail
        acc = frames.new_zeros(2, n + _UPSAMPLE - 1, _HOP)  # (signal | window sum, blocks, 512)
        if tail is not None:
            acc[:, : _UPSAMPLE - 1] += tail
        for j in range(_UPSAMPLE):
            acc[0, j : j + n] += frames[:, j]
            acc[1, j : j + n] += self.window_sq[j]
        first = u.state._frames  # block index of acc[:, 0]
        u.frames = first + n
        u.tail = acc[:, n:]
        # Blocks [first, first + n) are complete; with the sequence ended, block first + n too
        # (its later frames are the zero padding's, which add nothing). Blocks 0 and 1 are
        # the centring padding torch.istft drops; it returns hop·(frames − 1) samples in all.
        done = n + 1 if end else n
        lo = max(0, 2 - first)
        samples = (acc[0, lo:done] / acc[1, lo:done]).reshape(-1) if done > lo else frames.new_zeros(0)
        if end:
            samples = samples[: max(0, TOKEN_SAMPLES * (u.latents - 1) - u.state.samples)]
        u.samples = u.state.samples + samples.shape[0]
        return samples


@dataclass
class _Block:
    taps: torch.Tensor
    dw_bias: torch.Tensor
    norm: tuple[torch.Tensor, torch.Tensor]
    pw1: Linear
    pw2: Linear
    gamma: torch.Tensor


class _Update:
    """A state's changes during one call, written back only if the whole call succeeds."""

    def __init__(self, state: DecoderState) -> None:
        self.state = state
        self.latents = state.latents
        self.samples = state.samples
        self.last = state._last
        self.contexts = dict(enumerate(state._context))
        self.frames = state._frames
        self.tail = state._tail

    def context(self, index: int, zero: torch.Tensor) -> torch.Tensor:
        """Block ``index``'s last input frames (one zero frame, the left padding, at the start)."""
        return self.contexts.get(index, zero)

    def set_context(self, index: int, frames: torch.Tensor) -> None:
        self.contexts[index] = frames

    def commit(self, ended: bool) -> None:
        s = self.state
        s.latents, s.samples, s._last, s._frames, s._tail = (
            self.latents,
            self.samples,
            self.last,
            self.frames,
            self.tail,
        )
        s._context = [self.contexts[i] for i in range(len(self.contexts))]
        s.ended = ended
