"""Start delay from the measured rtf: a reply slower than real time never stalls once begun."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bot.pacing import RateEstimate, StartGate, required_buffer_s


def test_required_buffer_follows_the_formula():
    assert required_buffer_s(0.2, remaining_s=10.0, chunk_s=0.25, safety=1.0) == pytest.approx(0.05)
    assert required_buffer_s(1.5, remaining_s=4.0, chunk_s=0.25, safety=1.0) == pytest.approx(0.5 * 4.0 + 1.5 * 0.25)
    assert required_buffer_s(2.0, remaining_s=0.0, chunk_s=0.25, safety=1.0) == pytest.approx(0.5)


def _simulate(rtf: float, chunks_s: list[float], use_gate: bool, chars: int) -> tuple[float, float]:
    """Chunks produced back to back at ``rtf``; playback starts when the gate opens (or at
    the first chunk). Returns (start delay after the first chunk, total stall time)."""
    estimate = RateEstimate(rtf=rtf, seconds_per_char=sum(chunks_s) / chars, chunk_s=max(chunks_s))
    gate = StartGate(estimate, 0.0)
    t, produced, ready_at = 0.0, 0.0, []
    start = None
    for c in chunks_s:
        t += c * rtf
        produced += c
        ready_at.append((t, produced - c, c))  # (time ready, audio position, length)
        gate.on_audio(int(c * 48_000), t)
        remaining_chars = round(chars * (1 - produced / sum(chunks_s)))
        if start is None and (not use_gate or gate.ready(produced - 0.0, remaining_chars, t)):
            start = t
    start = t if start is None else start
    stall, clock = 0.0, start
    for ready, _, length in ready_at:
        if ready > clock:
            stall += ready - clock
            clock = ready
        clock += length
    return start - ready_at[0][0], stall


@pytest.mark.parametrize("rtf", [0.3, 0.9, 1.3, 2.0])
def test_the_gate_start_never_stalls_and_waits_only_when_needed(rtf):
    # Soprano-like chunk growth (48, 64, 128 ms, then 256 ms) over four sentences.
    chunks = ([0.048, 0.064, 0.128] + [0.256] * 6) * 4
    delay, stall = _simulate(rtf, chunks, use_gate=True, chars=200)
    assert stall == pytest.approx(0.0, abs=1e-9)
    # It waits no longer than producing the formula's buffer takes (plus one chunk).
    assert delay <= rtf * required_buffer_s(rtf, sum(chunks), 0.256) + rtf * 0.256
    if rtf <= 0.5:
        assert delay < 0.15  # a fast pipeline starts (almost) at once


@pytest.mark.parametrize("rtf", [0.3, 0.5])
def test_a_fast_pipeline_starts_after_its_first_chunk_or_two(rtf):
    """Not after its largest chunk: growing chunks at most double, so the next one is
    ready in time once the buffer holds rtf × twice the largest so far."""
    chunks = ([0.048, 0.064, 0.128] + [0.256] * 6) * 2
    delay, stall = _simulate(rtf, chunks, use_gate=True, chars=120)
    assert stall == pytest.approx(0.0, abs=1e-9)
    assert delay <= rtf * 0.064 + 1e-9


def test_without_the_gate_a_slow_pipeline_stalls():
    chunks = [0.048, 0.064, 0.128] + [0.256] * 20
    _, stall = _simulate(1.5, chunks, use_gate=False, chars=150)
    assert stall > 1.0


def test_the_reply_own_rate_counts_when_it_is_worse_than_the_estimate():
    gate = StartGate(RateEstimate(rtf=0.2), clock_start=0.0)
    gate.on_audio(48_000 // 4, 1.0)
    for i in range(1, 5):  # one second of audio every two seconds: rtf 2
        gate.on_audio(48_000, 1.0 + 2.0 * i)
    assert gate.rtf(9.0) == pytest.approx(2.0)
    assert not gate.ready(buffered_s=1.0, remaining_chars=100, now=9.0)


def test_rate_estimate_tracks_segments():
    e = RateEstimate()
    e.observe_segment("x" * 20, audio_samples=48_000, synth_ms=1500)
    assert e.rtf == pytest.approx(1.5) and e.seconds_per_char == pytest.approx(0.05)
    e.observe_segment("x" * 20, audio_samples=48_000, synth_ms=500)
    assert 0.5 < e.rtf < 1.5


class SlowVoice:
    """A voice stage that takes ``rtf`` × real time per chunk, as RVC on a CPU does
    (passthrough audio: the engine's speech comes out unchanged)."""

    def __init__(self, sample_rate: int, rtf: float) -> None:
        self.output_sample_rate = sample_rate
        self.rtf = rtf

    def process(self, audio: np.ndarray, pitch_shift: float) -> np.ndarray:
        time.sleep(audio.size / self.output_sample_rate * self.rtf)
        return audio

    def flush(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)

    def reset(self) -> None:
        pass


@pytest.fixture
def slow_pipeline():
    from tts_server import DefaultVoiceOnly, Pipeline
    from tts_server.engines.espeak import EspeakEngine

    engine = EspeakEngine()
    pipeline = Pipeline(engine, voices=DefaultVoiceOnly(lambda: SlowVoice(engine.sample_rate, 1.5)))
    pipeline.start()
    yield pipeline
    pipeline.stop()


TEXT = "The pipeline is slower than real time here. Playback must wait a little. Then it plays through."


async def test_a_slow_pipeline_starts_late_enough_to_play_through(harness, slow_pipeline):
    h = await harness(slow_pipeline)  # measures rtf ≈ 1.5 at start-up, as the bot does
    assert h.services.default_estimate.rtf > 1.3
    g = h.guild()
    await h.invoke("say", g.ctx, text=TEXT)
    await g.wait_idle(timeout_s=60)
    playback = g.tap.playbacks[0]
    assert playback.underrun_frames == 0
    m = g.match_reply(0)
    assert m.corr > 0.9 and m.tail_corr > 0.9
    # It was held back: the first audio waited about (rtf − 1) × the reply's length.
    reply_s = g.tap.audio().size / 48_000
    delay = g.session.last_job.reply.start_delay_s
    assert reply_s > 3.0
    assert 0.3 * reply_s < delay < 1.0 * reply_s, (delay, reply_s)


async def test_the_same_slow_reply_stalls_without_the_start_delay(harness, slow_pipeline, monkeypatch):
    """Control: the check above can fail."""
    from bot.pacing import StartGate

    monkeypatch.setattr(StartGate, "ready", lambda self, buffered_s, *_, **__: buffered_s > 0)
    h = await harness(slow_pipeline)
    g = h.guild()
    await h.invoke("say", g.ctx, text=TEXT)
    await g.wait_idle(timeout_s=60)
    assert g.tap.playbacks[0].underrun_frames > 10


class SlowVoices:
    """The default voice is fast (passthrough); ``slow`` runs at rtf 1.5."""

    default = None

    def describe(self) -> list[dict]:
        return [{"name": n} for n in self.names()]

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def names(self) -> list[str]:
        return ["slow"]

    def __call__(self, name):
        from tts_server.voice_stage import Passthrough

        return SlowVoice(self.sample_rate, 1.5) if name == "slow" else Passthrough(self.sample_rate)


async def test_a_newly_chosen_slow_voice_is_measured_before_its_first_reply(harness):
    from tts_server import Pipeline
    from tts_server.engines.espeak import EspeakEngine

    engine = EspeakEngine()
    pipeline = Pipeline(engine, voices=SlowVoices(engine.sample_rate))
    pipeline.start()
    try:
        h = await harness(pipeline)
        assert h.services.default_estimate.rtf < 0.5  # the default voice is fast
        g = h.guild()
        await h.invoke("voice", g.ctx, name="slow")
        async with asyncio.timeout(30):
            await h.services.measured()  # in the background, right after the command
        assert h.services.estimates["slow"].rtf > 1.3
        await h.invoke("say", g.ctx, text=TEXT)
        await g.wait_idle(timeout_s=60)
        assert g.tap.playbacks[0].underrun_frames == 0
        assert g.session.last_job.reply.start_delay_s > 1.0
    finally:
        pipeline.stop()
