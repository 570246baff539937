"""The ``/ws/stream`` wire format, both directions (seed 004, plus opt-in extensions).

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

The server side uses :func:`parse_message`, :func:`event_json` and :func:`audio_frames`;
the client side (:mod:`tts_server.client`) uses :func:`client_message`,
:func:`decode_event` and :func:`decode_audio`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import numpy as np

from rvc import PITCH_SHIFT_LIMIT

from .events import OUTPUT_SAMPLE_RATE, Cancelled, Flushed, SegmentDone, StreamError

#: Largest binary frame sent, in samples (256 ms): under 64 KiB a WebSocket frame has a
#: 4-byte header, so clients that view the payload in place as a Float32Array (the seed's
#: Node client does) always get a 4-byte-aligned offset.
MAX_FRAME_SAMPLES = 12_288

#: A pitch shift in semitones, as every entry point accepts it.
PitchShift = Annotated[float, msgspec.Meta(ge=-PITCH_SHIFT_LIMIT, le=PITCH_SHIFT_LIMIT)]

_LIMIT_TEXT = f"[-{PITCH_SHIFT_LIMIT:g}, {PITCH_SHIFT_LIMIT:g}]"


class ProtocolError(ValueError):
    """A client message is invalid; the message is the text sent back as ``{"error": ...}``."""


class ClientMessage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One validated client message."""

    token: str | None = None
    pitch_shift: PitchShift | None = None
    flush: bool = False
    cancel: bool = False
    events: bool | None = None
    voice: str | msgspec.UnsetType | None = msgspec.UNSET


COMMAND_KEYS = ("token", "pitch_shift", "flush", "cancel", "events", "voice")


# -- server side -------------------------------------------------------------------------------


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
        raise ProtocolError(f"pitch_shift must be a finite number of semitones in {_LIMIT_TEXT}, got {pitch}")
    unknown = [key for key in raw if key not in COMMAND_KEYS]
    if unknown:
        raise ProtocolError(f"unknown command {unknown[0]!r}: expected one of {', '.join(COMMAND_KEYS)}")
    if isinstance(pitch, bool):
        raise ProtocolError(f"pitch_shift must be a number of semitones in {_LIMIT_TEXT}, got a boolean")
    try:
        message = msgspec.convert(raw, ClientMessage)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid message: {exc}") from None
    if message.token is not None and len(message.token) > max_token_chars:
        raise ProtocolError(f"token is {len(message.token)} characters long; the limit is {max_token_chars}")
    if not raw:
        raise ProtocolError("empty command: send token, flush, cancel, events or voice")
    return message


def _ms(samples: int) -> float:
    return round(samples * 1000 / OUTPUT_SAMPLE_RATE, 1)


def event_json(event: SegmentDone | Flushed | StreamError | Cancelled) -> str:
    """Encode an event as the JSON text frame sent to clients.

    ``StreamError`` is always sent (as ``{"error": ...}``); the others only to clients
    that opted in to events.
    """
    if isinstance(event, StreamError):
        return json.dumps({"error": event.message})
    if isinstance(event, Cancelled):
        return json.dumps({"type": "cancelled"})
    if isinstance(event, SegmentDone):
        return json.dumps(
            {
                "type": "segment",
                "index": event.index,
                "text": event.text,
                "audio_ms": _ms(event.audio_samples),
                "ttfa_ms": None if event.ttfa_ms is None else round(event.ttfa_ms, 1),
                "synth_ms": round(event.synth_ms, 1),
            }
        )
    return json.dumps(
        {
            "type": "flushed",
            "flush_id": event.flush_id,
            "segments": list(event.segments),
            "audio_ms": _ms(event.audio_samples),
        }
    )


def audio_frames(pcm: np.ndarray) -> Iterator[bytes]:
    """Split ``(N,)`` float32 PCM into binary frames of at most :data:`MAX_FRAME_SAMPLES`."""
    data = np.asarray(pcm, dtype="<f4")
    for start in range(0, data.size, MAX_FRAME_SAMPLES):
        yield data[start : start + MAX_FRAME_SAMPLES].tobytes()


# -- client side -------------------------------------------------------------------------------


def client_message(
    *,
    token: str | None = None,
    pitch_shift: float | None = None,
    flush: bool = False,
    cancel: bool = False,
    events: bool | None = None,
    voice: str | msgspec.UnsetType | None = msgspec.UNSET,
) -> str:
    """Encode one client message (fields left at their defaults are not sent).

    ``voice=None`` is sent (as ``null``: the server's default voice); leave it unset to
    keep the current voice.
    """
    message = ClientMessage(
        token=token, pitch_shift=pitch_shift, flush=flush, cancel=cancel, events=events, voice=voice
    )
    return msgspec.json.encode(message).decode()


def decode_event(data: str) -> SegmentDone | Flushed | StreamError | Cancelled | None:
    """Decode a server text frame (``None`` for an event type this client does not know).

    Raises:
        ProtocolError: the frame is not a JSON object or lacks a field its type needs.
    """
    try:
        raw: Any = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"malformed JSON from the server: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"a server frame must be a JSON object, got {type(raw).__name__}")
    if "error" in raw:
        return StreamError(str(raw["error"]), None)
    kind = raw.get("type")
    try:
        if kind == "cancelled":
            return Cancelled()
        if kind == "segment":
            return SegmentDone(
                index=int(raw["index"]),
                text=str(raw["text"]),
                audio_samples=round(float(raw["audio_ms"]) * OUTPUT_SAMPLE_RATE / 1000),
                ttfa_ms=None if raw.get("ttfa_ms") is None else float(raw["ttfa_ms"]),
                synth_ms=float(raw["synth_ms"]),
            )
        if kind == "flushed":
            return Flushed(
                flush_id=int(raw["flush_id"]),
                segments=tuple(int(i) for i in raw.get("segments", ())),
                audio_samples=round(float(raw["audio_ms"]) * OUTPUT_SAMPLE_RATE / 1000),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"server event {kind!r} is malformed: {exc}") from None
    return None


def decode_audio(data: bytes) -> np.ndarray:
    """A binary frame as ``(N,)`` float32 at :data:`~tts_server.events.OUTPUT_SAMPLE_RATE`."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32)
