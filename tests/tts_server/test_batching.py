"""Continuous batching in the scheduler: many streams per model call, joins, leaves, waits, faults."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
import torch

from testing.soprano_model import float32_audio_error
from tests.conftest import FLOAT32
from tts_server import Audio, Flushed, Pipeline, SegmentDone, StreamError
from tts_server.engines.qwen3 import Row
from tts_server.engines.soprano import SopranoEngine, SopranoSequence

#: Float results against derived bounds: CI runs these again on one thread (see tests/conftest.py).
pytestmark = pytest.mark.numerical

TEXTS = ["The first voice says its sentence.", "A second one at the same time.", "And a third."]


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


@pytest.fixture(scope="module")
def rounding48(make_soprano_dir) -> float:
    """Float32 rounding of a 40-token sentence's audio at 48 kHz (see ``float32_audio_error``).

    Pipeline audio computed in different batches differs only by float32 summation order:
    each is within about this of the exact audio, so tests allow 5× it.
    """
    engine = SopranoEngine(make_soprano_dir(40), device="cpu", **FLOAT32)
    return float32_audio_error(make_soprano_dir(40), engine, TEXTS[0], sample_rate=48_000)


class Forwards:
    """Records the rows of every backbone forward of an engine (the real forward still runs)."""

    def __init__(self, engine: SopranoEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[Row]] = []
        real = engine.backbone.forward

        def forward(ids, rows):
            self.calls.append(list(rows))
            return real(ids, rows)

        monkeypatch.setattr(engine.backbone, "forward", forward)


async def collect(stream, until=Flushed, timeout_s=120.0) -> list:
    events = []
    async with asyncio.timeout(timeout_s):
        async for event in stream.events():
            events.append(event)
            if isinstance(event, until):
                break
    return events


def audio(events) -> np.ndarray:
    parts = [e.pcm for e in events if isinstance(e, Audio)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


async def speak_alone(engine, text: str) -> np.ndarray:
    """The same text through its own pipeline with nobody else (the reference audio)."""
    pipeline = Pipeline(engine)
    pipeline.start()
    try:
        return await pipeline.speak(text)
    finally:
        pipeline.stop()


async def test_each_step_advances_every_generating_stream_in_one_forward(
    pipeline_for, make_soprano_dir, monkeypatch, rounding48
):
    engine = SopranoEngine(make_soprano_dir(40), device="cpu", **FLOAT32)
    references = [await speak_alone(engine, t) for t in TEXTS]
    forwards = Forwards(engine, monkeypatch)
    pipeline = pipeline_for(engine)
    assert pipeline.batched
    streams = [pipeline.open_stream() for _ in TEXTS]
    for stream, text in zip(streams, TEXTS, strict=True):
        stream.push(text)
        stream.flush()
    results = await asyncio.gather(*(collect(s) for s in streams))
    for events, reference in zip(results, references, strict=True):
        got = audio(events)
        assert got.shape == reference.shape == (39 * 2048 * 3 // 2,)
        assert np.abs(got - reference).max() <= 5 * rounding48
    generating = [sum(r.length == 1 for r in rows) for rows in forwards.calls]
    assert max(generating) == 3  # the three streams' tokens went through the same forwards
    # /metrics saw it: one batch-size observation per step, some of them batches of three.
    registry = pipeline.metrics.registry
    steps = registry.get_sample_value("tts_batch_size_count")
    assert steps is not None and steps >= 1
    assert registry.get_sample_value("tts_batch_size_bucket", {"le": "2.0"}) < steps
    # 41 forwards per sentence (prompt, then one per token until [STOP]); served one at a
    # time that is 123. Batched, only the prompts' chunked prefill adds a few steps.
    assert len(forwards.calls) <= 41 + 6


async def test_a_sentence_joins_and_leaves_without_waiting_for_the_others(pipeline_for, make_soprano_dir, monkeypatch):
    # The test model forces 200 tokens, capped at 16 + 6 per character: "Short." gets 52.
    engine = SopranoEngine(make_soprano_dir(200), device="cpu")
    forwards = Forwards(engine, monkeypatch)
    pipeline = pipeline_for(engine)
    a, b = pipeline.open_stream(), pipeline.open_stream()
    a.push("A long sentence that keeps talking.")
    a.flush()
    first = await asyncio.wait_for(a.get(), 60)
    assert isinstance(first, Audio)
    b.push("Short.")
    b.flush()
    b_events = await collect(b)
    a_slot = a.sequence.slot if isinstance(a.sequence, SopranoSequence) else None
    assert a_slot is not None and not a.sequence.finished  # A is still generating: B did not wait for it
    b_done = next(e for e in b_events if isinstance(e, SegmentDone))
    assert b_done.audio_samples == 51 * 2048 * 3 // 2
    # B's tokens shared forwards with A's.
    assert any(len({r.slot for r in rows}) == 2 for rows in forwards.calls)
    a.cancel()


async def test_more_streams_than_slots_wait_earliest_deadline_first(pipeline_for, make_soprano_dir, monkeypatch):
    """One KV slot, three streams: of the two waiting, the one whose segment was queued
    first (the earlier deadline: neither listener has audio yet) runs first.
    (Which of them finishes first is another matter: a listener with more than
    PREEMPT_MARGIN_S of audio buffered yields the slot to one with none.)"""
    engine = SopranoEngine(make_soprano_dir(40), device="cpu", max_batch=1)
    first_run: list[str] = []
    step = engine.step

    def spy_step(rows):
        first_run.extend(seq.text for seq, _ in rows if seq.started_at is None and seq.text not in first_run)
        return step(rows)

    monkeypatch.setattr(engine, "step", spy_step)
    pipeline = pipeline_for(engine)
    a, b, c = (pipeline.open_stream() for _ in range(3))
    a.push("Runs first.")
    a.flush()
    await asyncio.wait_for(a.get(), 60)
    c.push("Queued third.")  # pushed before b, but its stream gets the flush later
    b.push("Queued second.")
    b.flush()
    await asyncio.sleep(0.05)
    c.flush()
    await asyncio.gather(collect(a), collect(b), collect(c))
    assert first_run == ["Runs first.", "Queued second.", "Queued third."]


async def test_a_slow_client_gives_its_slot_up_and_resumes_exactly(pipeline_for, make_soprano_dir, rounding48):
    """One KV slot: a client that stops reading is paused, another stream takes the slot,
    and when the first reads again its sentence resumes (cache recomputed) unchanged."""
    engine = SopranoEngine(make_soprano_dir(80), device="cpu", **FLOAT32, max_batch=1)
    text = "Nobody reads this stream for a while."
    reference = await speak_alone(engine, text)
    pipeline = pipeline_for(engine, queue_s=0.5)
    slow = pipeline.open_stream()
    slow.push(text)
    slow.flush()
    async with asyncio.timeout(60):  # its outbox fills up: it is paused, holding the only slot
        while slow._queued_samples < 0.5 * 48_000:
            await asyncio.sleep(0.02)
    fast = pipeline.open_stream()
    fast.push("Another client is not held up.")
    fast.flush()
    events = await collect(fast)
    assert any(isinstance(e, Audio) for e in events)
    rest = audio(await collect(slow))
    assert rest.shape == reference.shape
    assert np.abs(rest - reference).max() <= 5 * rounding48


async def test_a_stream_far_ahead_of_its_listener_yields_its_slot_to_one_behind(pipeline_for, make_soprano_dir):
    """Preemption: with one slot, a stream with more than PREEMPT_MARGIN_S of audio ahead of
    its listener gives the slot to a new stream whose listener has nothing yet."""
    from tts_server.scheduler import PREEMPT_MARGIN_S

    engine = SopranoEngine(make_soprano_dir(400), device="cpu", max_batch=1)
    pipeline = pipeline_for(engine)
    ahead = pipeline.open_stream()
    ahead.push("This stream talks for a long time without a pause for many seconds on end.")
    ahead.flush()
    reader = asyncio.create_task(collect(ahead))  # its client reads everything at once
    async with asyncio.timeout(60):
        while ahead.lead_s < PREEMPT_MARGIN_S + 0.5:
            await asyncio.sleep(0.02)
    behind = pipeline.open_stream()
    started = time.monotonic()
    behind.push("Me too.")
    behind.flush()
    first = await asyncio.wait_for(behind.get(), 60)
    assert isinstance(first, Audio)
    assert not reader.done()  # it did not wait for the long sentence to end
    assert time.monotonic() - started < ahead.lead_s + PREEMPT_MARGIN_S
    await reader  # and the preempted stream still finishes its sentence
    done = next(e for e in reader.result() if isinstance(e, SegmentDone))
    assert done.audio_samples == 399 * 2048 * 3 // 2


async def test_cancel_takes_effect_within_one_step_of_a_batch(pipeline_for, make_soprano_dir, monkeypatch):
    engine = SopranoEngine(make_soprano_dir(200), device="cpu")
    forwards = Forwards(engine, monkeypatch)
    pipeline = pipeline_for(engine)
    keep, stop = pipeline.open_stream(), pipeline.open_stream()
    keep.push("This one keeps talking for a while.")
    keep.flush()
    stop.push("This one is cut off.")
    stop.flush()
    await asyncio.wait_for(stop.get(), 60)
    sequence = stop.sequence
    assert isinstance(sequence, SopranoSequence) and sequence.slot is not None
    slot = sequence.slot
    at_cancel = len(forwards.calls)
    stop.cancel()
    async with asyncio.timeout(10):
        while not sequence.released:
            await asyncio.sleep(0.002)
    after = [rows for rows in forwards.calls[at_cancel:] if any(r.slot == slot for r in rows)]
    assert len(after) <= 1  # at most the step that was already running
    assert not keep.sequence.finished  # the other stream goes on
    stop.push("Next.")
    stop.flush()
    assert [e.text for e in await collect(stop) if isinstance(e, SegmentDone)] == ["Next."]
    keep.cancel()


async def test_a_stream_failing_in_a_batched_decode_gets_an_error_and_the_others_go_on(
    pipeline_for, make_soprano_dir, monkeypatch, rounding48
):
    engine = SopranoEngine(make_soprano_dir(40), device="cpu", **FLOAT32)
    references = {t: await speak_alone(engine, t) for t in TEXTS[:2]}
    poisoned: set[int] = set()
    start, decode = engine.start, engine.streaming_decoder.decode

    def tracking_start(text, prefill=None):
        seq = start(text, prefill)
        if "explode" in text:
            poisoned.add(id(seq.decoder))
        return seq

    def failing_decode(states, latents, end):
        if any(id(s) in poisoned for s in states):
            raise RuntimeError("decoder exploded")
        return decode(states, latents, end)

    monkeypatch.setattr(engine, "start", tracking_start)
    monkeypatch.setattr(engine.streaming_decoder, "decode", failing_decode)
    pipeline = pipeline_for(engine)
    good = [pipeline.open_stream() for _ in TEXTS[:2]]
    bad = pipeline.open_stream()
    bad.push("Please explode now. Then speak this.")
    bad.flush()
    for stream, text in zip(good, TEXTS, strict=False):
        stream.push(text)
        stream.flush()
    bad_events, *good_events = await asyncio.gather(collect(bad), *(collect(s) for s in good))
    errors = [e for e in bad_events if isinstance(e, StreamError)]
    assert len(errors) == 1 and "decoder exploded" in errors[0].message and errors[0].segment == 0
    assert [e.text for e in bad_events if isinstance(e, SegmentDone)] == ["Then speak this."]
    for events, text in zip(good_events, TEXTS, strict=False):
        got = audio(events)
        assert got.shape == references[text].shape
        assert np.abs(got - references[text]).max() <= 5 * rounding48
    assert engine.free_slots == engine.max_batch


async def test_a_voice_stage_failing_in_a_batch_affects_only_its_stream(pipeline_for, soprano_engine):
    from tts_server import DefaultVoiceOnly, Passthrough

    class Breaks(Passthrough):
        def process(self, audio, pitch_shift):
            if pitch_shift == 7:
                raise RuntimeError("voice broke")
            return audio

    pipeline = pipeline_for(soprano_engine, voices=DefaultVoiceOnly(lambda: Breaks(soprano_engine.sample_rate)))
    ok, broken = pipeline.open_stream(), pipeline.open_stream()
    ok.push("This voice works.", 0)
    broken.push("This voice breaks.", 7)
    ok.flush()
    broken.flush()
    ok_events, broken_events = await asyncio.gather(collect(ok), collect(broken))
    assert any(isinstance(e, StreamError) and "voice broke" in e.message for e in broken_events)
    assert not any(isinstance(e, StreamError) for e in ok_events)
    assert audio(ok_events).size > 0


async def test_out_of_memory_splits_the_batch_and_loses_nothing(
    pipeline_for, make_soprano_dir, monkeypatch, caplog, rounding48
):
    """A device that runs out of memory above two rows per forward and two sequences per
    decode: the scheduler halves the batch (with a warning) and every stream's audio is
    exactly what it would have been."""
    engine = SopranoEngine(make_soprano_dir(40), device="cpu", **FLOAT32)
    texts = [*TEXTS, "A fourth stream as well."]
    references = [await speak_alone(engine, t) for t in texts]
    forward, decode = engine.backbone.forward, engine.streaming_decoder.decode

    def small_forward(ids, rows):
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(ids, rows)

    def small_decode(states, latents, end):
        if len(states) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return decode(states, latents, end)

    monkeypatch.setattr(engine.backbone, "forward", small_forward)
    monkeypatch.setattr(engine.streaming_decoder, "decode", small_decode)
    pipeline = pipeline_for(engine)
    streams = [pipeline.open_stream() for _ in texts]
    with caplog.at_level(logging.WARNING, logger="tts_server.scheduler"):
        for stream, text in zip(streams, texts, strict=True):
            stream.push(text)
            stream.flush()
        results = await asyncio.gather(*(collect(s) for s in streams))
    assert any("out of memory" in r.message for r in caplog.records)
    for events, reference in zip(results, references, strict=True):
        assert not any(isinstance(e, StreamError) for e in events)
        got = audio(events)
        assert got.shape == reference.shape
        assert np.abs(got - reference).max() <= 5 * rounding48


async def test_batching_off_serves_soprano_chunk_by_chunk_with_the_same_audio(
    pipeline_for, make_soprano_dir, rounding48
):
    engine = SopranoEngine(make_soprano_dir(40), device="cpu", **FLOAT32)
    batched = pipeline_for(engine)
    chunked = pipeline_for(engine, batching=False)
    assert batched.batched and not chunked.batched
    a = await batched.speak(TEXTS[0])
    b = await chunked.speak(TEXTS[0])
    assert a.shape == b.shape == (39 * 2048 * 3 // 2,)
    assert np.abs(a - b).max() <= 5 * rounding48


async def test_speculative_prefill_runs_inside_the_batch_and_is_reused(pipeline_for, make_soprano_dir, monkeypatch):
    """While one stream speaks, another's sentence is prefilled as it is written, in the same
    forwards; when it completes, only its last tokens are computed."""
    from tts_server import text_pieces

    engine = SopranoEngine(make_soprano_dir(200), device="cpu")
    forwards = Forwards(engine, monkeypatch)
    starts: list[int] = []
    start = engine.start

    def spy_start(text, prefill=None):
        seq = start(text, prefill)
        starts.append(seq.computed)
        return seq

    monkeypatch.setattr(engine, "start", spy_start)
    pipeline = pipeline_for(engine)
    talker, writer = pipeline.open_stream(), pipeline.open_stream()
    talker.push("This stream is talking the whole time.")
    talker.flush()
    await asyncio.wait_for(talker.get(), 60)
    text = "Meanwhile this sentence is written word by word by a slow model."
    for token in text_pieces(text):
        writer.push(token)
        await asyncio.sleep(0.03)
    writer.flush()
    await collect(writer)
    assert starts[-1] > 10  # the completed sentence started from a prefilled cache
    mixed = [rows for rows in forwards.calls if any(r.length > 1 for r in rows) and any(r.length == 1 for r in rows)]
    assert mixed  # prefill chunks rode along with the talker's decode rows
    talker.cancel()


async def test_a_streams_next_sentences_are_generated_while_the_first_is_spoken(
    pipeline_for, make_soprano_dir, monkeypatch, rounding48
):
    """Sentences whose text is complete join the batch at once (up to segments_ahead beyond
    the one being spoken): their tokens share forwards with the first sentence's, and the
    stream's audio is still each sentence's audio, in order, with the flush after all."""
    import soxr

    engine = SopranoEngine(make_soprano_dir(40), device="cpu", **FLOAT32)
    # What the stream must send: each sentence's audio, one after the other, resampled as
    # one signal (the stream's resampler runs on across its segments).
    native = np.concatenate([np.concatenate(list(engine.synthesize(t))) for t in TEXTS])
    reference = soxr.resample(native, engine.sample_rate, 48_000, quality="HQ")
    forwards = Forwards(engine, monkeypatch)
    pipeline = pipeline_for(engine)
    assert pipeline.segments_ahead == 2
    stream = pipeline.open_stream()
    stream.push(" ".join(TEXTS))
    stream.flush()
    events = await collect(stream)
    done = [e for e in events if isinstance(e, SegmentDone)]
    assert [e.text for e in done] == TEXTS
    assert isinstance(events[-1], Flushed) and events[-1].segments == (0, 1, 2)
    # Three sentences of one stream in the same forwards (one slot each).
    assert max(len({r.slot for r in rows}) for rows in forwards.calls) == 3
    got = audio(events)
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 5 * rounding48


async def test_a_sentence_failing_ahead_gets_an_error_and_the_others_go_on(pipeline_for, make_soprano_dir, monkeypatch):
    engine = SopranoEngine(make_soprano_dir(40), device="cpu")
    poisoned: set[int] = set()
    start, decode = engine.start, engine.streaming_decoder.decode

    def tracking_start(text, prefill=None):
        seq = start(text, prefill)
        if "explode" in text:
            poisoned.add(id(seq.decoder))
        return seq

    def failing_decode(states, latents, end):
        if any(id(s) in poisoned for s in states):
            raise RuntimeError("decoder exploded")
        return decode(states, latents, end)

    monkeypatch.setattr(engine, "start", tracking_start)
    monkeypatch.setattr(engine.streaming_decoder, "decode", failing_decode)
    pipeline = pipeline_for(engine)
    stream = pipeline.open_stream()
    stream.push("The first one is fine. The second will explode here. The third is fine too.")
    stream.flush()
    events = await collect(stream)
    errors = [e for e in events if isinstance(e, StreamError)]
    assert len(errors) == 1 and errors[0].segment == 1 and "decoder exploded" in errors[0].message
    done = [e for e in events if isinstance(e, SegmentDone)]
    assert [e.text for e in done] == ["The first one is fine.", "The third is fine too."]
    assert all(e.audio_samples > 0 for e in done)
    assert isinstance(events[-1], Flushed)
    assert engine.free_slots == engine.max_batch
