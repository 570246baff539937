"""When may a reply start playing so that it never stalls once it has begun?

Playback consumes one second of audio per second. The pipeline produces it at
``1 / rtf`` seconds per second (``rtf`` = synthesis time / audio time, over a reply,
including waits). If playback starts with ``B`` seconds buffered while ``R`` seconds are
still to be synthesized, the last of it is ready ``R · rtf`` seconds later and is due
``B + R`` seconds later, so the reply plays through if::

    B ≥ (rtf − 1) · R + rtf · c

where ``c`` is the next audio chunk the pipeline delivers (audio arrives in chunks, so a
chunk must be complete before its first sample is due). With ``rtf < 1``, ``c`` is taken
as twice the longest chunk of the reply so far (and never more than the longest seen
for the voice): chunks of a reply at most double from one to the next (Soprano's grow
with the lead playback already has; RVC blocks keep one size), so a fast pipeline
starts after its first chunk or two instead of waiting for its largest chunk (but never
with less than :data:`JITTER_S` buffered, against scheduling jitter). With
``rtf > 1`` (e.g. RVC on a CPU) the longest chunk seen for the voice is used and the
start is delayed by just the amount the formula asks for.

``R`` is estimated from the text not yet synthesized and the measured seconds of audio
per character; ``rtf`` from the segments synthesized so far (an exponential moving
average, kept per voice across replies) and, within a reply, from the audio actually
received per second of wall time, whichever is larger (the latter sees a busy pipeline
shared with other servers, or an LLM slower than speech). Text the LLM has not written
yet cannot be foreseen: the estimate grows as text arrives, and a held reply starts
once the estimate is met or all its audio is in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from tts_server import OUTPUT_SAMPLE_RATE

log = logging.getLogger(__name__)

#: Typical English speech: about 13 characters per second.
DEFAULT_SECONDS_PER_CHAR = 0.075
#: Margin on the rtf estimate (the measurement is noisy, and chunks are uneven).
SAFETY = 1.1
#: Audio needed before the reply's own wall-clock rate is trusted.
MIN_OBSERVED_S = 0.2
#: Least audio buffered before a reply starts, whatever the rtf: absorbs scheduling
#: jitter (garbage collection, the GIL, a busy CPU) between two chunks. Three 20 ms frames.
JITTER_S = 0.06


def required_buffer_s(rtf: float, remaining_s: float, chunk_s: float, safety: float = SAFETY) -> float:
    """Seconds of audio to buffer before playback so that it never underruns.

    Args:
        rtf: synthesis time / audio time (> 1: slower than real time).
        remaining_s: seconds of audio still to be synthesized after this point.
        chunk_s: the longest chunk the pipeline delivers, in seconds.
        safety: factor applied to ``rtf``.

    Returns:
        ``max(0, (r − 1)·remaining_s) + r·chunk_s`` with ``r = rtf · safety``.
    """
    r = max(0.0, rtf) * safety
    return max(0.0, r - 1.0) * max(0.0, remaining_s) + r * max(0.0, chunk_s)


@dataclass
class RateEstimate:
    """Running estimates for one voice: real-time factor, speech rate and chunk size.

    Attributes:
        rtf: synthesis time / audio time (EWMA over segments).
        seconds_per_char: seconds of audio per character of text (EWMA over segments).
        chunk_s: the longest chunk seen, in seconds.
        segments: segments measured so far.
    """

    rtf: float = 0.5
    seconds_per_char: float = DEFAULT_SECONDS_PER_CHAR
    chunk_s: float = 0.256
    segments: int = 0
    alpha: float = field(default=0.3, repr=False)

    def observe_segment(
        self, text: str, audio_samples: int, synth_ms: float, sample_rate: int = OUTPUT_SAMPLE_RATE
    ) -> None:
        """Fold in one synthesized segment (a ``SegmentDone`` event)."""
        audio_s = audio_samples / sample_rate
        if audio_s <= 0:
            return
        rtf = synth_ms / 1000.0 / audio_s
        spc = audio_s / max(1, len(text))
        if not (math.isfinite(rtf) and math.isfinite(spc)):
            return
        if self.segments == 0:
            self.rtf = rtf
            self.seconds_per_char = spc
        else:
            self.rtf += self.alpha * (rtf - self.rtf)
            self.seconds_per_char += self.alpha * (spc - self.seconds_per_char)
        self.segments += 1

    def observe_chunk(self, samples: int, sample_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        """Note the size of one delivered audio chunk."""
        self.chunk_s = max(self.chunk_s, samples / sample_rate)


class StartGate:
    """Decides, for one reply, when its held audio may start playing.

    Args:
        estimate: the voice's running estimate (updated by the caller as segments finish).
        clock_start: ``time.perf_counter()`` when the reply's first text was sent to the
            pipeline (the start of its wall-clock production rate).
    """

    def __init__(self, estimate: RateEstimate, clock_start: float) -> None:
        self.estimate = estimate
        self.clock_start = clock_start
        self.received_s = 0.0
        self.first_audio_at: float | None = None
        self.first_chunk_s = 0.0
        self.largest_chunk_s = 0.0

    def on_audio(self, samples: int, now: float, sample_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        """Note ``samples`` of audio received at ``now``."""
        if self.first_audio_at is None:
            self.first_audio_at = now
            self.first_chunk_s = samples / sample_rate
        self.largest_chunk_s = max(self.largest_chunk_s, samples / sample_rate)
        self.received_s += samples / sample_rate

    def rtf(self, now: float) -> float:
        """The rtf to plan with: the estimate, or this reply's own rate if that is worse."""
        rtf = self.estimate.rtf
        if self.first_audio_at is not None:
            after_first = self.received_s - self.first_chunk_s
            if after_first >= MIN_OBSERVED_S:
                rtf = max(rtf, (now - self.first_audio_at) / after_first)
        return rtf

    def ready(self, buffered_s: float, remaining_chars: int, now: float, in_progress_s: float = 0.0) -> bool:
        """True when ``buffered_s`` seconds suffice for the text still to synthesize.

        Args:
            buffered_s: audio buffered ahead of playback, in seconds.
            remaining_chars: characters sent to the pipeline whose segments are not done.
            now: ``time.perf_counter()``.
            in_progress_s: audio already received of the segment being synthesized
                (it is part of ``remaining_chars``' estimate but no longer to come).
        """
        if buffered_s <= 0:
            return False
        remaining_s = max(0.0, remaining_chars * self.estimate.seconds_per_char - in_progress_s)
        rtf = self.rtf(now)
        chunk_s = self.estimate.chunk_s
        if rtf * SAFETY < 1.0 and self.largest_chunk_s:  # see the module docstring
            chunk_s = min(chunk_s, 2.0 * self.largest_chunk_s)
        return buffered_s >= max(JITTER_S, required_buffer_s(rtf, remaining_s, chunk_s))
