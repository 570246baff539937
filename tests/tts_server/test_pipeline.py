"""Pipeline scheduling, backpressure, faults and cancellation, with real engines."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import soxr

from tests.conftest import EXACT, FLOAT32
from tts_server import Audio, Flushed, PendingTextFull, Pipeline, PipelineBusy, SegmentDone, StreamError
from tts_server.engines.espeak import EspeakEngine


class Recording:
    """Wraps a real engine and records which text each chunk came from, and when generators close."""

    def __init__(self, engine):
        self.engine = engine
        self.name, self.model, self.device, self.sample_rate = (
            engine.name,
            engine.model,
            engine.device,
            engine.sample_rate,
        )
        self.chunks: list[str] = []
        self.closed: list[str] = []
        self.threads: set[str] = set()

    def synthesize(self, text):
        try:
            for chunk in self.engine.synthesize(text):
                self.threads.add(threading.current_thread().name)
                self.chunks.append(text)
                yield chunk
        finally:
            self.closed.append(text)


async def collect(stream, until=Flushed, timeout_s=60.0) -> list:
    events = []
    async with asyncio.timeout(timeout_s):
        async for event in stream.events():
            events.append(event)
            if isinstance(event, until):
                break
    return events


@pytest.fixture
def pipeline_for():
    pipelines = []

    def make(engine, **kwargs) -> Pipeline:
        p = Pipeline(engine, **kwargs)
        p.start()
        pipelines.append(p)
        return p

    yield make
    for p in pipelines:
        p.stop()


async def test_inference_runs_on_the_pipeline_thread_never_the_event_loop(pipeline_for, soprano_engine):
    engine = Recording(soprano_engine)
    pipeline = pipeline_for(engine)
    audio = await pipeline.speak("A sentence for the thread check.")
    assert audio.size > 0
    assert engine.threads == {"tts-inference"}


async def test_streams_share_the_engine_chunk_by_chunk(pipeline_for, make_soprano_dir):
    """A second stream's first chunk does not wait for the first stream's whole sentence."""
    from tts_server.engines.soprano import SopranoEngine

    engine = Recording(SopranoEngine(make_soprano_dir(60), device="cpu"))
    pipeline = pipeline_for(engine)
    a, b = pipeline.open_stream(), pipeline.open_stream()
    a.push("First stream speaks a long sentence.")
    a.flush()
    await asyncio.sleep(0)  # a is queued first
    b.push("Second stream joins.")
    b.flush()
    await asyncio.gather(collect(a), collect(b))
    order = engine.chunks
    first_b = order.index("Second stream joins.")
    last_a = len(order) - 1 - order[::-1].index("First stream speaks a long sentence.")
    assert first_b < last_a, order  # interleaved, not one sentence after the other


async def test_full_output_queue_pauses_synthesis_for_that_stream_only(pipeline_for, make_soprano_dir):
    from tts_server.engines.soprano import SopranoEngine

    engine = Recording(SopranoEngine(make_soprano_dir(80), device="cpu"))
    pipeline = pipeline_for(engine, queue_s=0.5)
    slow = pipeline.open_stream()
    slow.push("Nobody reads this stream for a while.")
    slow.flush()
    await asyncio.sleep(1.0)
    produced = engine.chunks.count("Nobody reads this stream for a while.")
    assert 0 < produced < 8  # stopped near 0.5 s of queued audio, far from the 5 s sentence
    queued = slow._queued_samples / 48_000
    assert 0.5 <= queued < 0.5 + 0.3
    fast = pipeline.open_stream()
    fast.push("Another client is not held up.")
    fast.flush()
    events = await collect(fast)
    assert any(isinstance(e, Audio) for e in events)
    rest = await collect(slow)  # reading resumes synthesis; nothing was lost
    total = sum(e.pcm.size for e in rest if isinstance(e, Audio))
    done = next(e for e in rest if isinstance(e, SegmentDone))
    assert total == done.audio_samples == 79 * 2048 * 3 // 2


@pytest.mark.numerical
async def test_a_stream_at_another_rate_queues_the_same_seconds_and_is_resampled_once(pipeline_for, make_soprano_dir):
    """Protocols open streams at their own rate (24 kHz for Kokoro's and OpenAI's clients): the queue
    bound is in seconds, and the audio is the engine's converted once to that rate."""
    from tts_server.engines.soprano import SopranoEngine

    engine = SopranoEngine(make_soprano_dir(80), device="cpu", **FLOAT32)
    pipeline = pipeline_for(engine, queue_s=0.5)
    slow = pipeline.open_stream(sample_rate=24_000)
    assert slow.sample_rate == 24_000
    slow.push("Nobody reads this stream for a while.")
    slow.flush()
    await asyncio.sleep(1.0)
    queued = slow._queued_samples / 24_000
    assert 0.5 <= queued < 0.5 + 0.3  # as at 48 kHz (the test above): seconds, not samples
    rest = await collect(slow)
    audio = [e for e in rest if isinstance(e, Audio)]
    assert {e.sample_rate for e in audio} == {24_000}
    pcm = np.concatenate([e.pcm for e in audio])
    done = next(e for e in rest if isinstance(e, SegmentDone))
    assert pcm.size == done.audio_samples == 79 * 2048 * 3 // 4
    # One conversion, 32 → 24 kHz (32 → 48 → 24 kHz differs by ~1e-2 of the peak); equal up to float32
    # reordering between two syntheses (EXACT of the peak, tests/conftest.py).
    native = np.concatenate(list(engine.synthesize("Nobody reads this stream for a while.")))
    reference = soxr.resample(native, engine.sample_rate, 24_000, quality="HQ")
    np.testing.assert_allclose(pcm, reference, rtol=0, atol=EXACT * np.abs(reference).max())


async def test_cancel_stops_the_running_segment_within_a_chunk(pipeline_for, make_soprano_dir):
    from tts_server.engines.soprano import SopranoEngine

    engine = Recording(SopranoEngine(make_soprano_dir(200), device="cpu"))
    pipeline = pipeline_for(engine)
    stream = pipeline.open_stream()
    stream.push("A very long sentence that will be cut off.")
    stream.flush()
    first = await asyncio.wait_for(stream.get(), 30)
    assert isinstance(first, Audio)
    stream.cancel()
    produced_at_cancel = len(engine.chunks)
    async with asyncio.timeout(5):
        while "A very long sentence that will be cut off." not in engine.closed:
            await asyncio.sleep(0.005)
    assert len(engine.chunks) <= produced_at_cancel + 1
    assert stream._out.empty()
    stream.push("Next.")
    stream.flush()
    events = await collect(stream)
    assert [e.text for e in events if isinstance(e, SegmentDone)] == ["Next."]


async def test_engine_failure_is_reported_and_the_stream_and_thread_survive(pipeline_for):
    class Failing(Recording):
        def synthesize(self, text):
            if "explode" in text:
                raise RuntimeError("model exploded")
            return super().synthesize(text)

    pipeline = pipeline_for(Failing(EspeakEngine()))
    stream = pipeline.open_stream()
    stream.push("Please explode now. Then speak this.")
    stream.flush()
    events = await collect(stream)
    errors = [e for e in events if isinstance(e, StreamError)]
    assert len(errors) == 1 and "model exploded" in errors[0].message and errors[0].segment == 0
    assert [e.text for e in events if isinstance(e, SegmentDone)] == ["Then speak this."]
    other = pipeline.open_stream()
    other.push("Other streams too.")
    other.flush()
    assert any(isinstance(e, Audio) for e in await collect(other))


async def test_closing_a_stream_frees_it_and_its_generator(pipeline_for, make_soprano_dir):
    from tts_server.engines.soprano import SopranoEngine

    engine = Recording(SopranoEngine(make_soprano_dir(200), device="cpu"))
    pipeline = pipeline_for(engine, max_streams=1)
    stream = pipeline.open_stream()
    stream.push("Speak for a long time please.")
    stream.flush()
    await asyncio.wait_for(stream.get(), 30)
    with pytest.raises(PipelineBusy):
        pipeline.open_stream()
    stream.close()
    assert pipeline.active_streams == 0
    pipeline.open_stream().close()  # the slot is free at once
    async with asyncio.timeout(5):
        while "Speak for a long time please." not in engine.closed or pipeline._streams:
            await asyncio.sleep(0.005)


async def test_pending_text_limit_refuses_the_token_and_keeps_the_rest(pipeline_for):
    pipeline = pipeline_for(EspeakEngine(), max_pending_chars=20)
    stream = pipeline.open_stream()
    stream.push("abcdefghij")
    with pytest.raises(PendingTextFull):
        stream.push("klmnopqrstuvwxyz")
    assert stream.pending_chars == 10
    stream.flush()
    assert [e.text for e in await collect(stream) if isinstance(e, SegmentDone)] == ["abcdefghij"]


async def test_queued_segments_count_against_the_unspoken_text_limit(pipeline_for, make_soprano_dir):
    from tts_server.engines.soprano import SopranoEngine

    pipeline = pipeline_for(SopranoEngine(make_soprano_dir(200), device="cpu"), max_pending_chars=60)
    stream = pipeline.open_stream()
    stream.push("First long sentence. Second one here! ")  # cut at once: segments, not buffer
    assert stream.pending_chars == 0 and stream.unspoken_chars > 0
    with pytest.raises(PendingTextFull):
        stream.push("And a third sentence that is too much.")


async def test_espeak_engine_speaks_real_words_at_48k(pipeline_for):
    engine = EspeakEngine()
    assert engine.sample_rate == 22_050
    pipeline = pipeline_for(engine)
    audio = await pipeline.speak("Hello there, this is espeak.")
    assert 1.0 < audio.size / 48_000 < 4.0
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silence


async def test_segment_events_report_time_to_first_audio(pipeline_for, soprano_engine):
    pipeline = pipeline_for(soprano_engine)
    stream = pipeline.open_stream()
    t0 = time.monotonic()
    stream.push("Timing is reported.")
    stream.flush()
    events = await collect(stream)
    done = next(e for e in events if isinstance(e, SegmentDone))
    assert 0 < done.ttfa_ms < (time.monotonic() - t0) * 1000
    assert done.synth_ms > 0


@pytest.mark.numerical
async def test_sentences_are_prefilled_while_their_tokens_arrive(pipeline_for, soprano_engine):
    from tts_server import text_pieces

    calls: list[str] = []

    class Spy(Recording):
        def prefill(self, text, previous=None):
            calls.append(text)
            return self.engine.prefill(text, previous)

        def synthesize(self, text, prefill=None):
            return self.engine.synthesize(text, prefill)

    pipeline = pipeline_for(Spy(soprano_engine))
    stream = pipeline.open_stream()
    text = "This sentence arrives one word at a time."
    for token in text_pieces(text):
        stream.push(token)
        await asyncio.sleep(0.03)  # an LLM writing about 30 tokens per second
    stream.flush()
    audio = np.concatenate([e.pcm for e in await collect(stream) if isinstance(e, Audio)])
    assert calls and all(text.startswith(c) for c in calls)
    assert len(calls[-1]) > len(text) // 2  # kept up with the text
    reference = await pipeline_for(soprano_engine).speak(text)
    # prefill changes only the shapes of the language model's products (float32 reordering)
    np.testing.assert_allclose(audio, reference, rtol=0, atol=EXACT * np.abs(reference).max())
