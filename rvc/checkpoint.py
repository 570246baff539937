"""Reading PyTorch checkpoints safely, with errors that name the file.

Every model file goes through :func:`load_checkpoint`: ``torch.load`` with
``weights_only=True`` (no arbitrary code runs while unpickling). The only non-tensor
class that the supported real files reference is fairseq's
``fairseq.data.dictionary.Dictionary`` (in ``task_state`` of ``hubert_base.pt``); it is
allow-listed under that name but rebuilt as the inert :class:`FairseqDictionaryStub`,
so fairseq is never imported (nor needed); ``argparse.Namespace`` (the ``args`` of
older fairseq checkpoints) is allowed too.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import VoiceFileError

log = logging.getLogger(__name__)


class FairseqDictionaryStub:
    """Stands in for ``fairseq.data.dictionary.Dictionary`` objects in fairseq checkpoints.

    Only keeps the pickled attributes (``symbols``, ``count``, ``indices``, …); nothing
    here uses them.
    """

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


FAIRSEQ_DICTIONARY = "fairseq.data.dictionary.Dictionary"
_SAFE_GLOBALS: list[Any] = [(FairseqDictionaryStub, FAIRSEQ_DICTIONARY), argparse.Namespace]


def load_checkpoint(path: str | os.PathLike, what: str) -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True``.

    Args:
        path: the file.
        what: what the file should be, for error messages (``"RVC voice"``, …).

    Returns:
        The unpickled object (tensors on the CPU).

    Raises:
        VoiceFileError: missing, a directory, truncated, not a PyTorch checkpoint, or
            referencing classes that are not allowed.
    """
    p = Path(path)
    if not p.exists():
        raise VoiceFileError(f"{what} file {p} does not exist")
    if p.is_dir():
        raise VoiceFileError(f"{what} file {p} is a directory, not a file")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VoiceFileError(f"{what} file {p} cannot be read safely or is not a PyTorch checkpoint: {first}") from exc
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
    ) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VoiceFileError(f"{what} file {p} is truncated or not a PyTorch checkpoint: {msg}") from exc
