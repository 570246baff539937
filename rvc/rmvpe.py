"""RMVPE: robust vocal pitch estimation with a deep U-Net + BiGRU (``rmvpe.pt``).

Wei et al., "RMVPE: A Robust Model for Vocal Pitch Estimation in Polyphonic Music"
(Interspeech 2023); network as in the RVC WebUI's ``infer/lib/rmvpe.py`` (class
``E2E(4, 1, (2, 2))``). The module tree reproduces the checkpoint's key names
(``unet.encoder.*``, ``unet.intermediate.*``, ``unet.decoder.*``, ``cnn.*``, ``fc.*``).

Pipeline: 16 kHz audio → log-mel (128 bins, 30–8000 Hz, 1024-point Hann STFT, hop 160)
→ network → per-frame salience over 360 cent bins (20 cents apart) → F0 as the
salience-weighted mean of the 9 bins around the peak; frames whose peak salience is
≤ ``threshold`` are unvoiced (0 Hz).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

N_MELS = 128
N_CLASSES = 360
MEL_FMIN = 30.0
MEL_FMAX = 8000.0
N_FFT = 1024
HOP_LENGTH = 160
SAMPLE_RATE = 16000
_BN_MOMENTUM = 0.01
_CENTS_OFFSET = 1997.3794084376191  # cents of bin 0, relative to 10 Hz
_CENTS_PER_BIN = 20.0


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin: float = MEL_FMIN,
    fmax: float = MEL_FMAX,
) -> np.ndarray:
    """Triangular mel filters on the HTK mel scale with Slaney area normalisation.

    The same filters as ``librosa.filters.mel(..., htk=True)`` (its default
    ``norm="slaney"``), computed in float64.

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` float32 weights.
    """

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)

    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    rising = (bins_hz[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins_hz[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    """16 kHz waveform → natural-log mel magnitude spectrogram (clamped at 1e-5)."""

    mel_basis: torch.Tensor
    window: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank()), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` float32 → ``(B, 128, 1 + N // 160)`` float32 (centred frames)."""
        spec = torch.stft(
            audio.float(),
            N_FFT,
            hop_length=HOP_LENGTH,
            win_length=N_FFT,
            window=self.window,
            center=True,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2))  # as upstream, rather than hypot
        return torch.log(torch.clamp(self.mel_basis @ magnitude, min=1e-5))


class ResidualConvBlock(nn.Module):
    """Two 3×3 conv + BatchNorm + ReLU, with a 1×1 shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=_BN_MOMENTUM),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=_BN_MOMENTUM),
            nn.ReLU(),
        )
        if c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x) if hasattr(self, "shortcut") else x
        return self.conv(x) + skip


class ResidualStage(nn.Module):
    """``n_blocks`` residual conv blocks (key ``conv``), optionally followed by 2×2 average pooling."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.ModuleList(
            [ResidualConvBlock(c_in, c_out)] + [ResidualConvBlock(c_out, c_out) for _ in range(n_blocks - 1)]
        )
        self.pool = nn.AvgPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv:
            x = block(x)
        return x


class DownPath(nn.Module):
    """Input BatchNorm then 5 stages that each double the width and halve time and mel."""

    def __init__(self, n_stages: int = 5, n_blocks: int = 4, width: int = 16) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=_BN_MOMENTUM)
        widths = [1] + [width * 2**i for i in range(n_stages)]
        stages = [ResidualStage(widths[i], widths[i + 1], n_blocks, True) for i in range(n_stages)]
        self.layers = nn.ModuleList(stages)
        self._stages = stages  # the same modules, typed

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        x = self.bn(x)
        for stage in self._stages:
            y = stage(x)
            skips.append(y)
            x = stage.pool(y) if stage.pool is not None else y
        return x, skips


class Bottleneck(nn.Module):
    """4 stages at the lowest resolution (key ``intermediate``)."""

    def __init__(self, c_in: int = 256, c_out: int = 512, n_stages: int = 4, n_blocks: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ResidualStage(c_in if i == 0 else c_out, c_out, n_blocks, False) for i in range(n_stages)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = stage(x)
        return x


class UpStage(nn.Module):
    """Transposed-conv ×2 upsampling, concatenation with the skip, residual blocks."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=_BN_MOMENTUM),
            nn.ReLU(),
        )
        self.conv2 = nn.ModuleList(
            [ResidualConvBlock(c_out * 2, c_out)] + [ResidualConvBlock(c_out, c_out) for _ in range(n_blocks - 1)]
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat((self.conv1(x), skip), dim=1)
        for block in self.conv2:
            x = block(x)
        return x


class UpPath(nn.Module):
    def __init__(self, c_in: int = 512, n_stages: int = 5, n_blocks: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(UpStage(c_in // 2**i, c_in // 2 ** (i + 1), n_blocks) for i in range(n_stages))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.layers, reversed(skips), strict=True):
            x = stage(x, skip)
        return x


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = DownPath()
        self.intermediate = Bottleneck()
        self.decoder = UpPath()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        return self.decoder(self.intermediate(x), skips)


class BiGRU(nn.Module):
    def __init__(self, n_in: int, n_hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_in, n_hidden, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class RMVPENet(nn.Module):
    """The RMVPE network: ``(B, 128, T)`` log-mel, T a multiple of 32 → ``(B, T, 360)`` salience."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = UNet()
        self.cnn = nn.Conv2d(16, 3, 3, padding=1)
        self.fc = nn.Sequential(BiGRU(3 * N_MELS, 256), nn.Linear(512, N_CLASSES), nn.Dropout(0.25), nn.Sigmoid())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.cnn(self.unet(mel.transpose(-1, -2).unsqueeze(1)))  # (B, 3, T, 128)
        return self.fc(x.transpose(1, 2).flatten(-2))


def salience_to_f0(salience: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """Decode ``(T, 360)`` salience to ``(T,)`` float64 F0 in Hz (0 where unvoiced).

    Local weighted average of the cent values of the 9 bins centred on each frame's
    peak (bins outside 0..359 weigh nothing), converted with ``f = 10 · 2^(cents/1200)``.
    """
    sal = np.asarray(salience, dtype=np.float32)
    t = sal.shape[0]
    peak = np.argmax(sal, axis=1)
    padded = np.pad(sal, ((0, 0), (4, 4)))
    cents = np.pad(_CENTS_PER_BIN * np.arange(N_CLASSES) + _CENTS_OFFSET, (4, 4))
    window = peak[:, None] + np.arange(9)[None, :]  # indexes into the padded axis
    w = padded[np.arange(t)[:, None], window]
    c = cents[window]
    est = np.sum(w * c, axis=1) / np.sum(w, axis=1)
    est[np.max(padded, axis=1) <= threshold] = 0
    f0 = 10.0 * 2.0 ** (est / 1200.0)
    f0[f0 == 10.0] = 0.0
    return f0
