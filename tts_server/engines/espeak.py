"""espeak-ng as an offline TTS engine (formant synthesis, no model weights).

The shared library and its data come from the ``espeakng-loader`` wheel, or from the
system (Debian's ``libespeak-ng1``). The binding below uses the library's documented
C API (``speak_lib.h``): ``espeak_Initialize`` in synchronous mode, a synth callback
that collects 16-bit samples, ``espeak_Synth`` with UTF-8 text.

Speed and language are native here (:class:`~tts_server.engines.base.StyledEngine`): a
segment's speed scales the ``espeakRATE`` parameter (words per minute, kept within the
library's 80–450), and its language picks a voice with ``espeak_SetVoiceByProperties``
(espeak-ng's own language matching: ``"en-gb"``, ``"fr-fr"``, ``"pt-br"``...). Kokoro's
one-letter language codes are mapped to those (:data:`KOKORO_LANGUAGES`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import threading
from collections.abc import Iterator

import numpy as np

from .base import EngineLoadError

log = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
#: Longest text given to espeak-ng in one call. A call cannot be interrupted and holds the
#: one inference thread (about 7 ms per 100 characters here): a 400-character segment took
#: 30 ms, during which no other stream got its first audio. Longer segments are spoken
#: clause by clause (see :func:`clauses`).
MAX_CALL_CHARS = 100
_CLAUSE_END = re.compile(r"[,;:.!?]\s")
#: espeak-ng's speaking-rate range, words per minute (``speak_lib.h``: espeakRATE).
MIN_RATE_WPM = 80
MAX_RATE_WPM = 450
#: Kokoro's language codes (the first letter of its voice names: ``af_heart``, ``ff_siwis``).
KOKORO_LANGUAGES = {
    "a": "en-us",
    "b": "en-gb",
    "e": "es",
    "f": "fr-fr",
    "h": "hi",
    "i": "it",
    "j": "ja",
    "p": "pt-br",
    "z": "cmn",
}
#: Length of the buffers espeak-ng hands the synth callback, ms of audio. Each callback
#: runs Python and must take the GIL: with a busy event loop that wait is up to a GIL
#: switch interval per callback, so 100 ms buffers made a 4-second sentence take 40 ms
#: longer. 10 s holds any call (segments over :data:`MAX_CALL_CHARS` are cut), so one
#: call is one callback; the buffer costs 10 s × 22 050 Hz × 2 bytes.
CALLBACK_BUFFER_MS = 10_000
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _VoiceSpec(ctypes.Structure):
    """``espeak_VOICE`` of ``speak_lib.h``."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def espeak_language(language: str) -> str:
    """The espeak-ng language for a client's code: Kokoro's letters mapped, others lower-cased."""
    code = language.strip().lower().replace("_", "-")
    return KOKORO_LANGUAGES.get(code, code)


class _Library:
    """Process-wide espeak-ng instance: the C library holds global state, so one lock guards it."""

    _instance: _Library | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        lib_path, data_dir = _locate()
        try:
            self.lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise EngineLoadError(f"espeak-ng: cannot load the library {lib_path}: {exc}") from exc
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceSpec)]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, CALLBACK_BUFFER_MS, data_dir.encode() if data_dir else None, 0
        )
        if rate <= 0:
            raise EngineLoadError(f"espeak-ng: espeak_Initialize failed (data directory {data_dir!r})")
        self.sample_rate = int(rate)
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        # What the library is set to: (voice, language, rate, pitch). Each
        # ctypes call gives up the GIL and waits to take it back, so unchanged settings
        # are not set again.
        self._settings: tuple[str, str | None, int, int] | None = None
        self._callback = _SynthCallback(self._on_samples)  # keep a reference: the C side holds it
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> _Library:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_samples(self, wav, num_samples, _events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def has_language(self, language: str) -> bool:
        """True if espeak-ng has a voice for ``language`` (an espeak-ng language code)."""
        with self.lock:
            return self._set_language(language)

    def _set_language(self, language: str) -> bool:
        self._settings = None
        spec = _VoiceSpec(languages=language.encode())
        return bool(language) and self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) == 0

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int, language: str | None = None) -> np.ndarray:
        """Speak ``text`` in ``voice``, or in a voice for ``language`` when it has one."""
        data = text.encode("utf-8") + b"\0"
        with self.lock:
            self._chunks = []
            settings = (voice, language, rate_wpm, pitch)
            if settings != self._settings:
                by_language = language is not None and self._set_language(language)
                if not by_language and self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    self._settings = None
                    raise ValueError(f"espeak-ng has no voice named {voice!r}")
                self.lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
                self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
                self._settings = settings
            err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err}")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0


def clauses(text: str, max_chars: int = MAX_CALL_CHARS) -> Iterator[tuple[str, str]]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters for separate espeak-ng calls.

    espeak-ng speaks a text clause by clause (its intonation is per clause), so a cut
    after a clause's or sentence's mark changes little but the pause after it, which the
    caller adds back. Without such a mark in reach the cut is at the last
    white space, and without white space at ``max_chars``. Linear in ``len(text)``.

    Yields:
        ``(piece, mark)``: the piece (stripped), and the punctuation it ends with when
        the cut is after a clause mark (one of ``,;:.!?``), else ``""``.
    """
    pieces: list[tuple[str, str]] = []  # at most one held back: the last piece gets no pause
    start = 0
    while len(text) - start > max_chars:
        window = text[start : start + max_chars + 1]
        cut = -1
        for match in _CLAUSE_END.finditer(window):
            cut = match.start() + 1
        mark = window[cut - 1] if cut > 0 else ""
        if cut <= 0:
            space = window.rfind(" ")
            cut = space if space > 0 else max_chars
        if window[:cut].strip():
            if pieces:
                yield pieces.pop()
            pieces.append((window[:cut].strip(), mark))
        start += cut
    if text[start:].strip():
        if pieces:
            yield pieces.pop()
        pieces.append((text[start:].strip(), ""))
    if pieces:
        yield pieces[0][0], ""


def _locate() -> tuple[str, str | None]:
    """Return (library path, data directory) from espeakng-loader, else the system library."""
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        return str(espeakng_loader.get_library_path()), str(espeakng_loader.get_data_path())
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise EngineLoadError(
            "espeak-ng is not installed: `pip install espeakng-loader` (or `apt-get install libespeak-ng1`)"
        )
    return name, None


def synthesize_speech(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Synthesize ``text`` with espeak-ng in one call.

    Returns:
        ``(audio, sample_rate)``: ``(N,)`` float32 in [-1, 1] and its sample rate in Hz
        (22 050 for espeak-ng).

    Raises:
        EngineLoadError: the library or its data cannot be found.
        ValueError: ``voice`` is not an espeak-ng voice.
    """
    lib = _Library.get()
    return lib.synthesize(text, voice, rate_wpm, pitch), lib.sample_rate


class EspeakEngine:
    """Offline engine over espeak-ng; real words without any model download.

    Yields ``chunk_ms`` chunks of float32 mono at the library's sample rate (22 050 Hz).
    Synthesis of one segment is a single fast library call (well over 50× real time);
    it is then cut into chunks so that cancellation and scheduling work as for Soprano.
    A :class:`~tts_server.engines.base.StyledEngine`: speed and language are native (see
    the module docstring).

    Raises:
        EngineLoadError: from the constructor, when the library or its data is missing.
    """

    name = "espeak"
    device = "cpu"

    def __init__(self, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50, chunk_ms: int = 100) -> None:
        self._lib = _Library.get()
        self.voice = voice
        self.rate_wpm = rate_wpm
        self.pitch = pitch
        self.model = f"espeak-ng:{voice}"
        self.sample_rate = self._lib.sample_rate
        self._chunk = max(1, self.sample_rate * chunk_ms // 1000)
        self._lib.synthesize("", voice, rate_wpm, pitch)  # validates the voice name now, not mid-stream
        self._pause_samples = {mark: self._pause_after(mark) for mark in ",;:.!?"}
        self._languages: dict[str, bool] = {}

    def _pause_after(self, mark: str) -> int:
        """Samples of silence espeak-ng puts after ``mark`` inside a text (it puts none at the end of one)."""
        synth = self._lib.synthesize
        args = (self.voice, self.rate_wpm, self.pitch)
        samples = len(synth(f"One{mark} Two", *args)) - len(synth(f"One{mark}", *args)) - len(synth("Two", *args))
        return max(0, samples)

    def speaks_language(self, language: str) -> bool:
        """See :meth:`StyledEngine.speaks_language` (the answer is kept per code)."""
        known = self._languages.get(language)
        if known is None:
            known = self._lib.has_language(espeak_language(language))
            if len(self._languages) < 256:  # codes come from clients: keep the memory bounded
                self._languages[language] = known
        return known

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """See :meth:`TTSEngine.synthesize`."""
        return self.synthesize_styled(text)

    def synthesize_styled(self, text: str, speed: float = 1.0, language: str | None = None) -> Iterator[np.ndarray]:
        """See :meth:`StyledEngine.synthesize_styled`: ``speed`` scales ``rate_wpm`` (80–450 wpm).

        Text over :data:`MAX_CALL_CHARS` is spoken in :func:`clauses`, the pause after each
        cut clause put back (scaled to the rate).
        """
        rate = min(MAX_RATE_WPM, max(MIN_RATE_WPM, round(self.rate_wpm * speed)))
        spoken = espeak_language(language) if language is not None and self.speaks_language(language) else None
        pieces = clauses(text) if len(text) > MAX_CALL_CHARS else iter([(text, "")])
        for piece, mark in pieces:
            audio = self._lib.synthesize(piece, self.voice, rate, self.pitch, spoken)
            if mark:
                pause = np.zeros(round(self._pause_samples[mark] * self.rate_wpm / rate), dtype=np.float32)
                audio = np.concatenate([audio, pause])
            for start in range(0, len(audio), self._chunk):
                yield audio[start : start + self._chunk]
