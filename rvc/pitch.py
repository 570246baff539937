"""Pitch in RVC: transposing F0 by semitones, and RVC's coarse pitch bins.

Pure numpy (no model), so the pitch-shift range can be imported without loading torch.
Source: the RVC WebUI's ``infer/modules/vc/pipeline.py`` (``f0_up_key`` transposition,
the 255 mel-spaced bins between 50 and 1100 Hz).
"""

from __future__ import annotations

import numpy as np

#: Lowest and highest F0 in Hz that RVC's pitch bins resolve (below: unvoiced).
F0_MIN = 50.0
F0_MAX = 1100.0
#: Largest pitch shift accepted, in semitones either way (two octaves).
PITCH_SHIFT_LIMIT = 24.0
_MEL_MIN = 1127.0 * np.log(1.0 + F0_MIN / 700.0)
_MEL_MAX = 1127.0 * np.log(1.0 + F0_MAX / 700.0)


def shift_f0(f0: np.ndarray, pitch_shift: float) -> np.ndarray:
    """Transpose F0 by ``pitch_shift`` semitones: ``f0 · 2^(pitch_shift/12)`` (0 stays 0).

    Raises:
        ValueError: ``pitch_shift`` outside ±24 semitones or not finite.
    """
    if not np.isfinite(pitch_shift) or abs(pitch_shift) > PITCH_SHIFT_LIMIT:
        raise ValueError(f"pitch_shift must be within ±{PITCH_SHIFT_LIMIT:g} semitones, got {pitch_shift}")
    return np.asarray(f0, dtype=np.float64) * 2.0 ** (pitch_shift / 12.0)


def coarse_pitch(f0: np.ndarray) -> np.ndarray:
    """Quantise F0 (Hz) to RVC's 255 mel-spaced pitch bins 1..255 (1 = unvoiced/below 50 Hz).

    Returns:
        int64 array of the same shape.
    """
    mel = 1127.0 * np.log(1.0 + np.asarray(f0, dtype=np.float64) / 700.0)
    voiced = mel > 0
    mel[voiced] = (mel[voiced] - _MEL_MIN) * 254.0 / (_MEL_MAX - _MEL_MIN) + 1.0
    return np.rint(np.clip(mel, 1.0, 255.0)).astype(np.int64)
