"""The one exception raised for unusable model files."""

from __future__ import annotations


class VoiceFileError(ValueError):
    """A model file (voice ``.pth``, ``.index``, HuBERT, ``rmvpe.pt``) cannot be used.

    The message always names the file and says what is wrong with it: missing,
    truncated or unreadable, not the expected kind of file, or shapes that do not fit
    together (an index of the wrong dimension for the voice, a HuBERT of the wrong size).
    """
