"""What every protocol adapter shares: voice names from other servers' clients, and 16-bit PCM.

Voice names. Clients written for other servers send their own voice names (OpenAI's
``alloy``, Kokoro's ``af_heart``). :class:`VoiceNames` maps a name to one of this
server's voices: a voice of that name, else ``[voices] aliases``, else the default voice,
with one log line per such name, so a client never fails on its voice setting.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from aiohttp import hdrs, web

from ..config import VoicesSettings
from ..voice_stage import VoiceProvider

log = logging.getLogger(__name__)

#: Distinct unknown voice names remembered (each logged once); past it they are not logged.
MAX_LOGGED_NAMES = 1024


class VoiceNames:
    """Maps clients' voice names to this server's voices (see the module docstring).

    Args:
        settings: ``[voices]``.
    """

    def __init__(self, settings: VoicesSettings) -> None:
        self.aliases = dict(settings.aliases)
        self._logged: set[str] = set()

    def resolve(self, name: str | None, voices: VoiceProvider) -> str | None:
        """The voice of ``voices`` for ``name`` (``None``: the default voice). Never raises."""
        if not name:
            return None
        known = voices.names()
        if name in known:
            return name
        if name in self.aliases:
            target = self.aliases[name] or None
            if target is None or target in known:
                return target
            self._log_once(name, f"voice {name!r} is aliased to {target!r}, which this server does not have")
            return None
        self._log_once(name, f"voice {name!r} is not one of this server's voices")
        return None

    def names(self, voices: VoiceProvider) -> list[str]:
        """The server's voices, then the aliases (what a client may ask for by name)."""
        known = voices.names()
        return [*known, *(alias for alias in self.aliases if alias not in known)]

    def _log_once(self, name: str, reason: str) -> None:
        if name in self._logged or len(self._logged) >= MAX_LOGGED_NAMES:
            return
        self._logged.add(name)
        log.info("%s: speaking it in the default voice (map it in [voices] aliases)", reason)


VOICE_NAMES = web.AppKey("voice_names", VoiceNames)


def install(app: web.Application, settings: VoicesSettings) -> None:
    """Give ``app`` its :class:`VoiceNames` (once, whichever protocol module asks first)."""
    if VOICE_NAMES not in app:
        app[VOICE_NAMES] = VoiceNames(settings)


def int16_bytes(pcm: np.ndarray) -> bytes:
    """``(N,)`` float32 in [-1, 1] → little-endian 16-bit PCM (clipped, rounded), ``2 N`` bytes."""
    return np.round(np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class BadRequest(Exception):
    """A request refused before any work: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_json_body(request: web.Request) -> Any:
    """The request's JSON body (UTF-8; ``Content-Type`` JSON or absent), parsed.

    Raises:
        BadRequest: 415 (not JSON or not UTF-8), 400 (invalid UTF-8 or malformed JSON).
    """
    if hdrs.CONTENT_TYPE in request.headers:
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise BadRequest(415, f"the body must be JSON (Content-Type: application/json), got {ctype!r}")
    charset = (request.charset or "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise BadRequest(415, f"the body must be UTF-8 (as JSON is), got charset={charset!r}")
    try:
        return json.loads((await request.read()).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"the body is not valid UTF-8: {exc}") from None
    except ValueError as exc:
        raise BadRequest(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "malformed JSON: nested too deeply") from None
