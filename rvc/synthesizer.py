"""The RVC synthesizer: a VITS prior + normalising flow + (NSF-)HiFi-GAN decoder.

Inference-only re-implementation of the networks stored in RVC voice files
(``SynthesizerTrnMs256NSFsid`` / ``…768NSFsid`` and their ``_nono`` variants in the
RVC WebUI's ``infer/lib/infer_pack/models.py``). The module tree reproduces the
checkpoint's ``state_dict`` key names (``enc_p.*``, ``flow.flows.*``, ``dec.*``,
``emb_g.weight``) so that real files load; weight normalisation is folded into plain
weights at load time (see :func:`rvc.voice.fold_weight_norm`), and the posterior
encoder ``enc_q`` (training only) does not exist here.

References:
    Kim et al., "Conditional Variational Autoencoder with Adversarial Learning for
    End-to-End Text-to-Speech" (VITS, 2021); Wang et al., "Neural source-filter
    waveform models" (NSF, 2019); Kong et al., "HiFi-GAN" (2020).

Only full-length sequences are supported (no padding masks): every call converts one
utterance, batch size 1 in practice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import TORCH, Backend, EagerRunner, Runner, make_runner

log = logging.getLogger(__name__)

_LRELU_SLOPE = 0.1
_REL_WINDOW = 10  # relative-position window of the prior's self-attention (VITS)
_FLOW_CONTEXT_FRAMES = 24  # frames the flow sees before skip_head (upstream rtrvc)
_NOISE_SCALE = 0.66666  # temperature of the prior sample (upstream inference)
_SINE_AMP = 0.1
_VOICED_NOISE_STD = 0.003

SAMPLE_RATES = {"32k": 32000, "40k": 40000, "48k": 48000}


@dataclass(frozen=True)
class SynthesizerConfig:
    """Hyper-parameters of a voice, parsed from the 18-item ``config`` list of a ``.pth``.

    The list order is the constructor order of the upstream synthesizer classes:
    spec_channels, segment_size, inter_channels, hidden_channels, filter_channels,
    n_heads, n_layers, kernel_size, p_dropout, resblock, resblock_kernel_sizes,
    resblock_dilation_sizes, upsample_rates, upsample_initial_channel,
    upsample_kernel_sizes, spk_embed_dim, gin_channels, sr.
    """

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sample_rate: int

    @classmethod
    def from_list(cls, values: list | tuple) -> SynthesizerConfig:
        """Parse the checkpoint's ``config`` list.

        Raises:
            ValueError: not 18 items, or items of the wrong kind.
        """
        if not isinstance(values, (list, tuple)) or len(values) != 18:
            raise ValueError(
                f"'config' must be a list of 18 items, got {type(values).__name__} "
                f"of length {len(values) if hasattr(values, '__len__') else '?'}"
            )
        v = list(values)
        sr = v[17]
        if isinstance(sr, str):
            if sr not in SAMPLE_RATES:
                raise ValueError(f"unknown sample rate {sr!r} in 'config'")
            sr = SAMPLE_RATES[sr]
        try:
            return cls(
                spec_channels=int(v[0]),
                segment_size=int(v[1]),
                inter_channels=int(v[2]),
                hidden_channels=int(v[3]),
                filter_channels=int(v[4]),
                n_heads=int(v[5]),
                n_layers=int(v[6]),
                kernel_size=int(v[7]),
                p_dropout=float(v[8]),
                resblock=str(v[9]),
                resblock_kernel_sizes=tuple(int(k) for k in v[10]),
                resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in v[11]),
                upsample_rates=tuple(int(u) for u in v[12]),
                upsample_initial_channel=int(v[13]),
                upsample_kernel_sizes=tuple(int(k) for k in v[14]),
                spk_embed_dim=int(v[15]),
                gin_channels=int(v[16]),
                sample_rate=int(sr),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed 'config' list: {exc}") from exc

    def to_list(self) -> list:
        """The 18-item list as stored in a ``.pth`` (lists, not tuples, like upstream)."""
        return [
            self.spec_channels,
            self.segment_size,
            self.inter_channels,
            self.hidden_channels,
            self.filter_channels,
            self.n_heads,
            self.n_layers,
            self.kernel_size,
            self.p_dropout,
            self.resblock,
            list(self.resblock_kernel_sizes),
            [list(d) for d in self.resblock_dilation_sizes],
            list(self.upsample_rates),
            self.upsample_initial_channel,
            list(self.upsample_kernel_sizes),
            self.spk_embed_dim,
            self.gin_channels,
            self.sample_rate,
        ]

    @property
    def hop_length(self) -> int:
        """Output samples per synthesizer frame (10 ms): the product of the upsample rates."""
        return math.prod(self.upsample_rates)


# ---------------------------------------------------------------------------- prior


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, T)`` tensor (parameters ``gamma``/``beta``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.transpose(1, 2), (x.shape[1],), self.gamma, self.beta, self.eps)
        return y.transpose(1, 2)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with learned relative-position keys and values.

    Shaw et al. (2018) relative positions as used by VITS: offsets ``j - i`` within
    ``±window`` get a shared (across heads) key and value embedding; offsets outside the
    window get none. Implemented here by gathering the ``2·window+1`` diagonals.
    """

    def __init__(self, channels: int, n_heads: int, window: int = _REL_WINDOW) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"hidden_channels {channels} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))

    def _offsets(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T, T)`` index of offset ``j - i + window`` (clamped) and its validity mask."""
        pos = torch.arange(length, device=device)
        rel = pos[None, :] - pos[:, None] + self.window
        valid = (rel >= 0) & (rel <= 2 * self.window)
        return rel.clamp(0, 2 * self.window), valid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        h, d = self.n_heads, self.head_dim
        q = self.conv_q(x).view(b, h, d, t).transpose(2, 3) / math.sqrt(d)  # (B, H, T, D)
        k = self.conv_k(x).view(b, h, d, t).transpose(2, 3)
        v = self.conv_v(x).view(b, h, d, t).transpose(2, 3)
        rel, valid = self._offsets(t, x.device)
        scores = q @ k.transpose(2, 3)  # (B, H, T, T)
        rel_logits = q @ self.emb_rel_k[0].transpose(0, 1)  # (B, H, T, 2W+1)
        scores = scores + rel_logits.gather(-1, rel.expand(b, h, t, t)) * valid
        probs = torch.softmax(scores, dim=-1)
        out = probs @ v
        # weight of each relative offset r for query i: probs[i, i + r - window]
        idx = torch.arange(t, device=x.device)[:, None] + torch.arange(2 * self.window + 1, device=x.device)
        idx = idx - self.window
        idx_valid = (idx >= 0) & (idx < t)
        rel_probs = probs.gather(-1, idx.clamp(0, t - 1).expand(b, h, t, -1)) * idx_valid
        out = out + rel_probs @ self.emb_rel_v[0]
        return self.conv_o(out.transpose(2, 3).reshape(b, c, t))


class ConvFeedForward(nn.Module):
    """Two 'same'-padded 1-D convolutions with a ReLU between (VITS FFN)."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x, self.pad)))
        return self.conv_2(F.pad(x, self.pad))


class AttentionStack(nn.Module):
    """Post-norm transformer encoder of the prior (keys ``attn_layers``, ``norm_layers_1``, …)."""

    def __init__(self, channels: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(RelativeSelfAttention(channels, n_heads) for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            ConvFeedForward(channels, filter_channels, kernel_size) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm1(x + attn(x))
            x = norm2(x + ffn(x))
        return x


class PriorEncoder(nn.Module):
    """Content features (+ coarse pitch) → mean and log-scale of the prior (``enc_p``)."""

    def __init__(self, feature_dim: int, cfg: SynthesizerConfig, use_pitch: bool) -> None:
        super().__init__()
        self.hidden_channels = cfg.hidden_channels
        self.out_channels = cfg.inter_channels
        self.emb_phone = nn.Linear(feature_dim, cfg.hidden_channels)
        if use_pitch:
            self.emb_pitch = nn.Embedding(256, cfg.hidden_channels)
        self.encoder = AttentionStack(
            cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers, cfg.kernel_size
        )
        self.proj = nn.Conv1d(cfg.hidden_channels, cfg.inter_channels * 2, 1)

    def forward(
        self, features: torch.Tensor, pitch: torch.Tensor | None, skip: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, C)`` features, ``(B, T)`` int64 coarse pitch → ``m, logs`` ``(B, inter, T - skip)``."""
        x = self.emb_phone(features)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = F.leaky_relu(x * math.sqrt(self.hidden_channels), _LRELU_SLOPE)
        x = self.encoder(x.transpose(1, 2))
        stats = self.proj(x[:, :, skip:])
        return stats[:, : self.out_channels], stats[:, self.out_channels :]


# ---------------------------------------------------------------------------- flow


class WaveNetStack(nn.Module):
    """Non-causal WaveNet with gated activations and speaker conditioning (``enc`` of a flow)."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, gin_channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.cond_layer = nn.Conv1d(gin_channels, 2 * channels * n_layers, 1)
        self.in_layers = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in range(n_layers)
        )
        self.res_skip_layers = nn.ModuleList(
            nn.Conv1d(channels, 2 * channels if i < n_layers - 1 else channels, 1) for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        c = self.channels
        cond = self.cond_layer(g)
        out = torch.zeros_like(x)
        last = len(self.in_layers) - 1
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=True)):
            a = in_layer(x) + cond[:, 2 * c * i : 2 * c * (i + 1)]
            acts = torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:])
            rs = res_skip(acts)
            if i < last:
                x = x + rs[:, :c]
                out = out + rs[:, c:]
            else:
                out = out + rs
        return out


class MeanCouplingLayer(nn.Module):
    """Mean-only affine coupling: shifts the second half of the channels by a WaveNet of the first."""

    def __init__(self, channels: int, hidden_channels: int, gin_channels: int) -> None:
        super().__init__()
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WaveNetStack(hidden_channels, 5, 3, gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)

    def reverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, : self.half_channels], x[:, self.half_channels :]
        shift = self.post(self.enc(self.pre(x0), g))
        return torch.cat([x0, x1 - shift], dim=1)


class ChannelFlip(nn.Module):
    """Reverses the channel order (no parameters; occupies odd indices of ``flow.flows``)."""

    def reverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, [1])


class FlowStack(nn.Module):
    """Four coupling layers interleaved with flips; run in reverse at inference (``flow``)."""

    def __init__(self, channels: int, hidden_channels: int, gin_channels: int, n_flows: int = 4) -> None:
        super().__init__()
        layers: list[MeanCouplingLayer | ChannelFlip] = []
        for _ in range(n_flows):
            layers += [MeanCouplingLayer(channels, hidden_channels, gin_channels), ChannelFlip()]
        self.flows = nn.ModuleList(layers)
        self._reversed = layers[::-1]  # the same modules, typed, in the order inference runs them

    def reverse(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        for layer in self._reversed:
            z = layer.reverse(z, g)
        return z


# ---------------------------------------------------------------------------- decoder


class ResBlockDilated(nn.Module):
    """HiFi-GAN residual block type 1 (``convs1`` dilated, ``convs2`` plain) or type 2 (``convs``)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], kind: str) -> None:
        super().__init__()

        def conv(d: int) -> nn.Conv1d:
            return nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2)

        self.kind = kind
        if kind == "1":
            self.convs1 = nn.ModuleList(conv(d) for d in dilations)
            self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        else:
            self.convs = nn.ModuleList(conv(d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "1":
            for c1, c2 in zip(self.convs1, self.convs2, strict=True):
                y = c1(F.leaky_relu(x, _LRELU_SLOPE))
                x = x + c2(F.leaky_relu(y, _LRELU_SLOPE))
        else:
            for c in self.convs:
                x = x + c(F.leaky_relu(x, _LRELU_SLOPE))
        return x


class HarmonicSource(nn.Module):
    """NSF excitation: a sine at F0 (noise where unvoiced) merged by a 1→1 linear + tanh (``m_source``).

    Matches the upstream ``SourceModuleHnNSF`` with ``harmonic_num=0``: per-sample phase is
    the running sum of ``f0 / sample_rate`` with F0 held constant over each frame;
    ``sin·0.1`` where voiced plus Gaussian noise (σ = 0.003 voiced, 0.1/3 unvoiced).
    """

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.l_linear = nn.Linear(1, 1)

    def forward(
        self,
        f0: torch.Tensor,
        upp: int,
        *,
        noise: bool,
        generator: torch.Generator | None,
        phase0: float | torch.Tensor = 0.0,
    ) -> torch.Tensor:
        """``(B, T)`` F0 in Hz (0 = unvoiced) → ``(B, 1, T·upp)`` excitation in the layer's dtype.

        ``phase0`` (cycles) is the sine's phase before the first sample; the streaming
        converter uses it to keep the excitation continuous across blocks.
        """
        f0 = f0.float()
        b = f0.shape[0]
        rad = torch.repeat_interleave(f0 / self.sample_rate, upp, dim=1)  # cycles per sample
        phase = torch.cumsum(rad.double(), dim=1) + phase0
        sine = torch.sin(2 * math.pi * torch.remainder(phase, 1.0)).float() * _SINE_AMP
        voiced = torch.repeat_interleave((f0 > 0).float(), upp, dim=1)
        source = sine * voiced
        if noise:
            # upstream draws a random initial phase for the overtones (none here) first:
            # keep the draw so that a seeded generator gives the reference's noise.
            torch.rand((b, 1), generator=generator, device=f0.device)
            amp = voiced * _VOICED_NOISE_STD + (1 - voiced) * (_SINE_AMP / 3)
            source = source + amp * torch.randn(rad.shape, generator=generator, device=f0.device)
        w = self.l_linear.weight
        return torch.tanh(self.l_linear(source.to(w.dtype)[..., None])).transpose(1, 2)


class Vocoder(nn.Module):
    """HiFi-GAN generator, with NSF source injection when the voice is pitch-guided (``dec``)."""

    def __init__(self, cfg: SynthesizerConfig, use_pitch: bool) -> None:
        super().__init__()
        ch0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.upp = cfg.hop_length
        self.conv_pre = nn.Conv1d(cfg.inter_channels, ch0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        if use_pitch:
            self.m_source = HarmonicSource(cfg.sample_rate)
            self.noise_convs = nn.ModuleList()
        rates = cfg.upsample_rates
        for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes, strict=True)):
            c_in, c_out = ch0 // 2**i, ch0 // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2))
            if use_pitch:
                if i + 1 < len(rates):
                    stride = math.prod(rates[i + 1 :])
                    self.noise_convs.append(nn.Conv1d(1, c_out, stride * 2, stride=stride, padding=stride // 2))
                else:
                    self.noise_convs.append(nn.Conv1d(1, c_out, 1))
            for ks, ds in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlockDilated(c_out, ks, ds, cfg.resblock))
        self.conv_post = nn.Conv1d(ch0 // 2 ** len(rates), 1, 7, padding=3, bias=False)
        self.cond = nn.Conv1d(cfg.gin_channels, ch0, 1)

    def forward(self, z: torch.Tensor, g: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """``(B, inter, T)`` latent → ``(B, 1, T·hop_length)`` waveform in [-1, 1]."""
        x = self.conv_pre(z) + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, _LRELU_SLOPE))
            if source is not None:
                x = x + self.noise_convs[i](source)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as upstream
        return torch.tanh(x)


# ---------------------------------------------------------------------------- synthesizer


class Synthesizer(nn.Module):
    """An RVC voice network: content features + F0 → waveform at the voice's sample rate.

    Args:
        cfg: hyper-parameters from the ``.pth`` ``config`` list.
        version: ``"v1"`` (256-d features) or ``"v2"`` (768-d features).
        use_pitch: pitch-guided voice (``f0 = 1``): coarse pitch embedding and NSF source.
    """

    def __init__(self, cfg: SynthesizerConfig, version: str, use_pitch: bool) -> None:
        super().__init__()
        if version not in ("v1", "v2"):
            raise ValueError(f"unknown RVC version {version!r}")
        self.cfg = cfg
        self.version = version
        self.use_pitch = use_pitch
        self.feature_dim = 256 if version == "v1" else 768
        self.enc_p = PriorEncoder(self.feature_dim, cfg, use_pitch)
        self.flow = FlowStack(cfg.inter_channels, cfg.hidden_channels, cfg.gin_channels)
        self.dec = Vocoder(cfg, use_pitch)
        self.emb_g = nn.Embedding(cfg.spk_embed_dim, cfg.gin_channels)
        self.backend = TORCH
        self._prior: Runner = EagerRunner(_PriorStats(self.enc_p))
        self._flow: Runner = EagerRunner(_FlowReverse(self.flow))
        self._decoder: Runner = EagerRunner(self.dec if use_pitch else _DecoderNoSource(self.dec))

    def use_backend(self, backend: Backend) -> None:
        """Run the prior encoder, the flow and the decoder on ``backend`` from now on.

        OpenVINO compiles the three networks here (a few seconds) with their time axes
        dynamic; the NSF source and all random draws stay in PyTorch.

        Raises:
            ValueError: OpenVINO asked for while the weights are not float32.
        """
        if backend.runtime != "torch" and self.emb_g.weight.dtype != torch.float32:
            raise ValueError(f"runtime {backend.runtime} needs the voice loaded in float32")
        t = 40
        c = self.cfg
        feats = torch.zeros(1, t, self.feature_dim)
        pitch = torch.ones(1, t, dtype=torch.long)
        g = torch.zeros(1, c.gin_channels, 1)
        z = torch.zeros(1, c.inter_channels, t)
        prior = _PriorStats(self.enc_p)
        self._prior = make_runner(
            prior, backend, (feats, pitch) if self.use_pitch else (feats,), ((1,), (1,)) if self.use_pitch else ((1,),)
        )
        self._flow = make_runner(_FlowReverse(self.flow), backend, (z, g), ((2,), ()))
        if self.use_pitch:
            source = torch.zeros(1, 1, t * self.hop_length)
            self._decoder = make_runner(self.dec, backend, (z, g, source), ((2,), (), (2,)))
        else:
            self._decoder = make_runner(_DecoderNoSource(self.dec), backend, (z, g), ((2,), ()))
        self.backend = backend
        log.info("synthesizer runs on %s", backend.name)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @torch.inference_mode()
    def infer(
        self,
        features: torch.Tensor,
        pitch: torch.Tensor | None = None,
        f0: torch.Tensor | None = None,
        speaker_id: int = 0,
        *,
        skip_head: int = 0,
        return_length: int | None = None,
        noise: bool = True,
        generator: torch.Generator | None = None,
        phase0: float = 0.0,
    ) -> torch.Tensor:
        """Synthesize a waveform.

        Follows ``SynthesizerTrnMs*NSFsid.infer`` of the RVC WebUI (including its
        ``skip_head`` / ``return_length`` streaming mode from ``infer/lib/rtrvc.py``):
        the prior runs on all frames, the flow on ``skip_head - 24`` onward, the decoder
        only on ``return_length`` frames from ``skip_head``.

        Args:
            features: ``(B, T, 256|768)`` content features at 100 frames/s, model dtype.
            pitch: ``(B, T)`` int64 coarse pitch 1..255 (pitch-guided voices only).
            f0: ``(B, T)`` float F0 in Hz, 0 where unvoiced (pitch-guided voices only).
            speaker_id: row of ``emb_g`` (0 for single-speaker voices).
            skip_head: frames at the start whose audio is not wanted (context).
            return_length: frames to decode after ``skip_head`` (default: all the rest).
            noise: sample the prior (temperature 0.66666) and the NSF noise; ``False``
                makes inference deterministic (prior mean, clean sine excitation).
            generator: random source for the noise (``None``: torch's global one). The
                draws happen in the same order and shapes as upstream, so a generator
                seeded like the global RNG reproduces the reference implementation.
            phase0: initial phase of the NSF sine in cycles (see :class:`HarmonicSource`).

        Returns:
            ``(B, N)`` float32 waveform, ``N = return_length · hop_length``, at
            :attr:`sample_rate`.
        """
        t = features.shape[1]
        if return_length is None:
            return_length = t - skip_head
        if not 0 <= skip_head < t or return_length <= 0 or skip_head + return_length > t:
            raise ValueError(f"skip_head={skip_head}, return_length={return_length} do not fit {t} frames")
        if self.use_pitch and (pitch is None or f0 is None):
            raise ValueError("a pitch-guided voice needs pitch and f0")
        g = self.emb_g(torch.tensor([speaker_id], device=features.device))[:, :, None]
        flow_head = max(skip_head - _FLOW_CONTEXT_FRAMES, 0)
        dec_head = skip_head - flow_head
        stats = self._prior(features, pitch) if pitch is not None and self.use_pitch else self._prior(features)
        inter = self.cfg.inter_channels
        m_p, logs_p = stats[:, :inter, flow_head:], stats[:, inter:, flow_head:]
        if noise:
            eps = torch.randn(m_p.shape, generator=generator, dtype=m_p.dtype, device=m_p.device)
            z_p = m_p + torch.exp(logs_p) * eps * _NOISE_SCALE
        else:
            z_p = m_p
        z = self._flow(z_p, g.to(z_p.dtype))[:, :, dec_head : dec_head + return_length]
        source = None
        if self.use_pitch:
            if f0 is None:
                raise ValueError("a pitch-guided voice needs f0")
            source = self.dec.m_source(
                f0[:, skip_head : skip_head + return_length],
                self.hop_length,
                noise=noise,
                generator=generator,
                phase0=phase0,
            )
        if source is None:
            return self._decoder(z, g.to(z.dtype))[:, 0].float()
        return self._decoder(z, g.to(z.dtype), source.to(z.dtype))[:, 0].float()


class _PriorStats(nn.Module):
    """``enc_p`` on all frames, its two outputs stacked: ``(B, 2·inter, T)`` (one tensor out, for runners)."""

    def __init__(self, enc_p: PriorEncoder) -> None:
        super().__init__()
        self.enc_p = enc_p

    def forward(self, features: torch.Tensor, pitch: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat(self.enc_p(features, pitch, 0), dim=1)


class _FlowReverse(nn.Module):
    """The flow run in reverse (prior sample → decoder latent) as a plain ``forward``."""

    def __init__(self, flow: FlowStack) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z_p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.flow.reverse(z_p, g)


class _DecoderNoSource(nn.Module):
    """The decoder of a voice without pitch guidance (no NSF source input)."""

    def __init__(self, dec: Vocoder) -> None:
        super().__init__()
        self.dec = dec

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.dec(z, g, None)
