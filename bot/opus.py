"""Load libopus, which discord.py needs to encode PCM into voice packets.

discord.py bundles libopus only on Windows and otherwise loads it lazily on the first
``play()``, where a missing library surfaces as a confusing error deep in a command.
The bot loads it explicitly at start-up instead and stops with a message naming the
package to install.
"""

from __future__ import annotations

import ctypes.util
import logging

import discord

log = logging.getLogger(__name__)

#: Names tried when no library is configured, after ``ctypes.util.find_library("opus")``.
CANDIDATES = ("libopus.so.0", "libopus.so", "libopus.0.dylib", "opus")

INSTALL_HINT = (
    "install libopus: `apt-get install libopus0` on Debian/Ubuntu, `dnf install opus` on "
    "Fedora, `apk add opus` on Alpine, `brew install opus` on macOS; or set [bot] "
    "opus_library to the library's path"
)


class OpusMissing(RuntimeError):
    """libopus cannot be loaded; the message says which package to install."""


def load_opus(library: str = "") -> str:
    """Load libopus into discord.py.

    Args:
        library: a file name or path; empty = search the system.

    Returns:
        The name or path that loaded (``"already loaded"`` if discord.py had it).

    Raises:
        OpusMissing: no libopus could be loaded.
    """
    if discord.opus.is_loaded():
        return "already loaded"
    if library:
        names = [library]
    else:
        found = ctypes.util.find_library("opus")
        names = ([found] if found else []) + [n for n in CANDIDATES if n != found]
    errors = []
    for name in names:
        try:
            discord.opus.load_opus(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
            continue
        log.info("loaded libopus from %s", name)
        return name
    where = f"{library!r}" if library else "the system"
    detail = "; ".join(errors[:2])
    raise OpusMissing(f"libopus could not be loaded from {where} ({detail}): {INSTALL_HINT}")
