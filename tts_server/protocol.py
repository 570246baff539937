"""The ``/ws/stream`` protocol: client messages in, events out (seed 004, plus opt-in extensions).

Client → server, one JSON object per text frame:

* ``{"token": str, "pitch_shift": number}`` — text from the LLM; ``pitch_shift`` in
  semitones (−24…24), optional, kept for the following tokens until changed.
* ``{"flush": true}`` — speak everything buffered now.
* ``{"cancel": true}`` — extension: drop buffered text and unsent audio (barge-in).
* ``{"events": true}`` — extension: also receive JSON events (``segment``, ``flushed``,
  ``cancelled``); off by default so seed clients only ever see audio and errors.
* ``{"voice": "name"}`` — extension: speak the following segments in that RVC voice
  (``null``: the server's default); see ``GET /voices``.

Keys combine in one message and apply in the order cancel, voice, token, flush.

Server → client: binary frames of little-endian float32 mono PCM at 48 kHz, and
``{"error": str}`` text frames. With events on, also ``{"type": ...}`` text frames.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import msgspec

from .pipeline import Flushed, SegmentDone, StreamError

PITCH_LIMIT = 24.0


class ProtocolError(ValueError):
    """A client message is invalid; the message is the text sent back as ``{"error": ...}``."""


class ClientMessage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One validated client message."""

    token: str | None = None
    pitch_shift: Annotated[float, msgspec.Meta(ge=-PITCH_LIMIT, le=PITCH_LIMIT)] | None = None
    flush: bool = False
    cancel: bool = False
    events: bool | None = None
    voice: str | None | msgspec.UnsetType = msgspec.UNSET


COMMAND_KEYS = ("token", "pitch_shift", "flush", "cancel", "events", "voice")


def parse_message(data: str, max_token_chars: int) -> ClientMessage:
    """Parse and validate one text frame.

    Args:
        data: the frame's text.
        max_token_chars: longest accepted ``token``.

    Raises:
        ProtocolError: malformed JSON, not an object, an unknown key, a wrong type, a
            non-finite or out-of-range ``pitch_shift``, an over-long token, or a message
            with no command in it; the message says which.
    """
    try:
        raw: Any = json.loads(data)  # the standard parser accepts NaN/Infinity, so they are named below
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(raw).__name__}")
    pitch = raw.get("pitch_shift")
    if isinstance(pitch, float) and not math.isfinite(pitch):
        raise ProtocolError(f"pitch_shift must be a finite number of semitones in [-24, 24], got {pitch}")
    unknown = [key for key in raw if key not in COMMAND_KEYS]
    if unknown:
        raise ProtocolError(f"unknown command {unknown[0]!r}: expected one of {', '.join(COMMAND_KEYS)}")
    if isinstance(pitch, bool):
        raise ProtocolError("pitch_shift must be a number of semitones in [-24, 24], got a boolean")
    try:
        message = msgspec.convert(raw, ClientMessage)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    if message.token is not None and len(message.token) > max_token_chars:
        raise ProtocolError(f"token is {len(message.token)} characters long; the limit is {max_token_chars}")
    if not raw:
        raise ProtocolError("empty command: send token, flush, cancel, events or voice")
    return message


def event_json(event: SegmentDone | Flushed | StreamError) -> str:
    """Encode an event as the JSON text frame sent to clients.

    ``StreamError`` is always sent (as ``{"error": ...}``); the others only to clients
    that opted in to events.
    """
    if isinstance(event, StreamError):
        return json.dumps({"error": event.message})
    if isinstance(event, SegmentDone):
        return json.dumps({
            "type": "segment",
            "index": event.index,
            "text": event.text,
            "audio_ms": round(event.audio_samples / 48, 1),
            "ttfa_ms": None if event.ttfa_ms is None else round(event.ttfa_ms, 1),
            "synth_ms": round(event.synth_ms, 1),
        })
    return json.dumps({
        "type": "flushed",
        "flush_id": event.flush_id,
        "segments": list(event.segments),
        "audio_ms": round(event.audio_samples / 48, 1),
    })
