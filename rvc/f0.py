"""F0 (fundamental frequency) estimation for pitch-guided RVC voices.

Two estimators behind one small interface, selected by a setting:

* ``"pm"``: Praat's autocorrelation pitch tracker through praat-parselmouth (Boersma,
  "Accurate short-term analysis of the fundamental frequency…", 1993). Needs no weights;
  fastest on CPU.
* ``"rmvpe"``: the RMVPE network (:mod:`rvc.rmvpe`), given ``rmvpe.pt``; the standard
  for quality.

Both return F0 at 100 frames/s (hop 160 at 16 kHz) with the frame alignment of the RVC
WebUI's offline pipeline (``infer/modules/vc/pipeline.py``, ``get_f0``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint
from .errors import VoiceFileError
from .pitch import F0_MAX, F0_MIN
from .rmvpe import LogMel, RMVPENet, salience_to_f0

log = logging.getLogger(__name__)

F0_SAMPLE_RATE = 16000
F0_HOP_LENGTH = 160  # 10 ms frames


@runtime_checkable
class F0Estimator(Protocol):
    """Estimates F0 of 16 kHz audio at 100 frames/s.

    Attributes:
        name: ``"pm"`` or ``"rmvpe"``.
    """

    name: str

    def estimate(self, audio_16k: np.ndarray, n_frames: int) -> np.ndarray:
        """F0 of ``audio_16k``.

        Args:
            audio_16k: ``(N,)`` float waveform at 16 kHz.
            n_frames: frames wanted, normally ``N // 160``; frame ``i`` is centred on
                sample ``160·i``.

        Returns:
            ``(n_frames,)`` float64 F0 in Hz, 0 where unvoiced.
        """
        ...


class PraatF0(F0Estimator):
    """F0 by Praat's autocorrelation method (``pm``): 10 ms steps, 50–1100 Hz, voicing 0.6."""

    name = "pm"

    def estimate(self, audio_16k: np.ndarray, n_frames: int) -> np.ndarray:
        import parselmouth

        x = np.asarray(audio_16k, dtype=np.float64)
        f0 = (
            parselmouth.Sound(x, F0_SAMPLE_RATE)
            .to_pitch_ac(
                time_step=F0_HOP_LENGTH / F0_SAMPLE_RATE,
                voicing_threshold=0.6,
                pitch_floor=F0_MIN,
                pitch_ceiling=F0_MAX,
            )
            .selected_array["frequency"]
        )
        # Praat's first frame sits half its window after the start: centre the track
        # in the wanted length with zeros, as the RVC pipeline does.
        left = (n_frames - len(f0) + 1) // 2
        right = n_frames - len(f0) - left
        if left > 0 or right > 0:
            f0 = np.pad(f0, (max(left, 0), max(right, 0)))
        return np.asarray(f0[:n_frames], dtype=np.float64)


class RMVPEF0(F0Estimator):
    """F0 by RMVPE (threshold 0.03 on the peak salience).

    Args:
        net: the loaded network (eval mode).
        device, dtype: where and in what precision the network runs (the mel
            spectrogram is always float32).
    """

    name = "rmvpe"

    def __init__(
        self,
        net: RMVPENet,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        threshold: float = 0.03,
    ) -> None:
        self.net = net.eval().to(device=device, dtype=dtype)
        self.mel = LogMel().to(device)
        self.device = torch.device(device)
        self.dtype = dtype
        self.threshold = threshold

    @torch.inference_mode()
    def salience(self, audio_16k: np.ndarray) -> np.ndarray:
        """``(N,)`` 16 kHz → ``(1 + N // 160, 360)`` float32 salience."""
        x = torch.as_tensor(np.asarray(audio_16k, dtype=np.float32), device=self.device)[None]
        mel = self.mel(x)
        n = mel.shape[-1]
        pad = 32 * ((n - 1) // 32 + 1) - n
        if pad:
            # reflect as the RVC reference does; constant when too short to reflect
            mel = F.pad(mel, (0, pad), mode="reflect" if pad < n else "constant")
        hidden = self.net(mel.to(self.dtype))[:, :n]
        return hidden[0].float().cpu().numpy()

    def estimate(self, audio_16k: np.ndarray, n_frames: int) -> np.ndarray:
        f0 = salience_to_f0(self.salience(audio_16k), self.threshold)
        if len(f0) < n_frames:
            f0 = np.pad(f0, (0, n_frames - len(f0)))
        return f0[:n_frames]


def load_rmvpe(path: str | os.PathLike) -> RMVPENet:
    """Read ``rmvpe.pt`` (a plain float32 state_dict) into :class:`~rvc.rmvpe.RMVPENet`.

    Raises:
        VoiceFileError: missing, truncated, not a state_dict, or tensors missing/misshapen.
    """
    p = Path(path)
    state = load_checkpoint(p, "RMVPE")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VoiceFileError(f"{p} is not an RMVPE state_dict")
    net = RMVPENet()
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    if missing:
        raise VoiceFileError(f"{p} is not an RMVPE checkpoint: {len(missing)} tensors missing, e.g. {missing[:3]}")
    for k, t in want.items():
        if state[k].shape != t.shape:
            raise VoiceFileError(f"{p}: RMVPE tensor {k} is {tuple(state[k].shape)}, expected {tuple(t.shape)}")
    net.load_state_dict({k: state[k].float() for k in want})
    return net.eval()


def load_f0_estimator(
    method: str = "pm",
    rmvpe_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> F0Estimator:
    """Create the F0 estimator named by ``method``.

    Args:
        method: ``"pm"`` (no weights) or ``"rmvpe"`` (needs ``rmvpe_path``).
        rmvpe_path: the ``rmvpe.pt`` file.
        device, dtype: for RMVPE.

    Raises:
        ValueError: unknown method, or ``"rmvpe"`` without a path.
        VoiceFileError: an unusable ``rmvpe.pt``.
    """
    if method == "pm":
        return PraatF0()
    if method == "rmvpe":
        if rmvpe_path is None:
            raise ValueError("F0 method 'rmvpe' needs rmvpe_path (the rmvpe.pt file)")
        return RMVPEF0(load_rmvpe(rmvpe_path), device=device, dtype=dtype)
    raise ValueError(f"unknown F0 method {method!r}: use 'pm' or 'rmvpe'")
