"""The buffer the long-lived player reads: 20 ms s16le stereo frames, silence on underrun."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bot.audio import FRAME_BYTES, FRAME_SAMPLES, SILENCE, BufferSource, to_s16_stereo


def frames_of(source: BufferSource, n: int) -> list[bytes]:
    return [source.read() for _ in range(n)]


def mono(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype="<i2").reshape(-1, 2)[:, 0]


def test_float_mono_becomes_clipped_s16_stereo():
    pcm = np.array([0.0, 0.5, -0.5, 1.5, -2.0], dtype=np.float32)
    out = np.frombuffer(to_s16_stereo(pcm), dtype="<i2").reshape(-1, 2)
    assert out[:, 0].tolist() == out[:, 1].tolist() == [0, 16384, -16384, 32767, -32767]


def test_reads_are_whole_frames_in_order_and_the_tail_is_padded():
    source = BufferSource()
    playback = source.begin_reply()
    ramp = (np.arange(2500) / 10_000).astype(np.float32)
    source.write(ramp[:1000])
    source.write(ramp[1000:])
    source.end_reply()
    frames = frames_of(source, 4)
    assert all(len(f) == FRAME_BYTES for f in frames)
    got = np.concatenate([mono(f) for f in frames[:3]])
    assert np.array_equal(got[:2500], np.round(ramp * 32767).astype(np.int16))
    assert not got[2500:].any() and frames[3] == SILENCE
    assert playback.done and playback.audio_frames == 3 and playback.played_samples == 2500


def test_an_underrun_mid_reply_plays_silence_and_is_counted_but_silence_outside_a_reply_is_not():
    source = BufferSource()
    assert frames_of(source, 3) == [SILENCE] * 3  # no reply: idle silence, never b""
    playback = source.begin_reply()
    assert source.read() == SILENCE and playback.underrun_frames == 0  # not begun yet
    source.write(np.full(FRAME_SAMPLES, 0.1, np.float32))
    assert source.read() != SILENCE
    assert frames_of(source, 2) == [SILENCE] * 2
    assert playback.underrun_frames == 2
    source.write(np.full(FRAME_SAMPLES // 2, 0.1, np.float32))  # half a frame: wait for more
    assert source.read() == SILENCE and playback.underrun_frames == 3
    source.end_reply()
    assert source.read() != SILENCE and playback.done
    assert frames_of(source, 2) == [SILENCE] * 2 and playback.underrun_frames == 3


def test_a_held_reply_buffers_until_released():
    source = BufferSource()
    playback = source.begin_reply(hold=True)
    source.write(np.full(3 * FRAME_SAMPLES, 0.2, np.float32))
    assert frames_of(source, 2) == [SILENCE] * 2 and source.buffered_samples == 3 * FRAME_SAMPLES
    assert playback.started_at is None and playback.underrun_frames == 0
    source.release()
    assert all(f != SILENCE for f in frames_of(source, 3))


def test_clear_drops_everything_at_once_and_close_ends_the_player():
    source = BufferSource()
    playback = source.begin_reply()
    source.write(np.full(50 * FRAME_SAMPLES, 0.3, np.float32))
    source.read()
    assert source.clear() == 49 * FRAME_SAMPLES
    assert source.read() == SILENCE and playback.done and playback.interrupted
    with pytest.raises(RuntimeError):
        source.write(np.ones(10, np.float32))  # the interrupted reply takes no more audio
    source.close()
    assert source.read() == b""


def test_full_means_max_buffer_s():
    source = BufferSource(max_buffer_s=1.0)
    source.begin_reply()
    source.write(np.zeros(47_000, np.float32))
    assert not source.full
    source.write(np.zeros(1_000, np.float32))
    assert source.full


def test_a_writer_and_the_player_thread_do_not_lose_or_reorder_samples():
    source = BufferSource()
    source.begin_reply()
    total = 200 * FRAME_SAMPLES
    values = ((np.arange(total) % 30_000) / 32767).astype(np.float32)
    out: list[bytes] = []
    done = threading.Event()

    def player():
        while not done.is_set() or source.buffered_samples:
            frame = source.read()
            if frame != SILENCE:
                out.append(frame)

    thread = threading.Thread(target=player)
    thread.start()
    for start in range(0, total, 777):
        source.write(values[start : start + 777])
    source.end_reply()
    done.set()
    thread.join(10)
    got = np.concatenate([mono(f) for f in out])[:total]
    assert np.array_equal(got, np.round(values * 32767).astype(np.int16))


def test_the_next_reply_follows_the_last_sample_of_the_one_before_in_the_same_frame():
    source = BufferSource()
    a_audio = (np.arange(2400) / 10_000).astype(np.float32)  # 2.5 frames
    b_audio = -(np.arange(1920) / 10_000).astype(np.float32)  # 2 frames
    a = source.begin_reply()
    source.write(a_audio)
    source.end_reply()
    assert source.read() != SILENCE  # a plays while b is begun and written
    b = source.begin_reply(hold=True)
    source.write(b_audio)
    source.release()
    source.end_reply()
    assert source.buffered_samples == 2400 - FRAME_SAMPLES + 1920
    frames = frames_of(source, 5)  # 1.5 frames of a, then 2 of b, in 4 frames
    got = np.concatenate([mono(f) for f in frames[:4]])
    expected = np.round(np.concatenate([a_audio[FRAME_SAMPLES:], b_audio]) * 32767).astype(np.int16)
    assert np.array_equal(got[: expected.size], expected)  # no sample of silence between them
    assert not got[expected.size :].any() and frames[4] == SILENCE
    assert a.done and not a.interrupted and a.played_samples == 2400 and a.audio_frames == 3
    assert b.done and not b.interrupted and b.played_samples == 1920 and b.audio_frames == 3
    assert a.underrun_frames == b.underrun_frames == 0
    assert b.started_at is not None and a.done_at is not None and b.started_at <= a.done_at


def test_a_held_next_reply_waits_after_the_one_before_without_counting_underruns():
    source = BufferSource()
    a = source.begin_reply()
    source.write(np.full(FRAME_SAMPLES, 0.1, np.float32))
    source.end_reply()
    b = source.begin_reply(hold=True)
    source.write(np.full(2 * FRAME_SAMPLES, 0.2, np.float32))
    assert source.read() != SILENCE and a.done
    assert frames_of(source, 3) == [SILENCE] * 3
    assert b.started_at is None and b.underrun_frames == 0 and a.underrun_frames == 0
    source.release()
    assert all(f != SILENCE for f in frames_of(source, 2))
    assert source.read() == SILENCE and b.underrun_frames == 1  # begun, not ended: a stall
    source.end_reply()
    assert source.read() == SILENCE and b.done and b.underrun_frames == 1


def test_drop_takes_out_one_reply_and_clear_all_of_them():
    source = BufferSource()
    a = source.begin_reply()
    source.write(np.full(5 * FRAME_SAMPLES, 0.1, np.float32))
    source.end_reply()
    b = source.begin_reply()
    source.write(np.full(3 * FRAME_SAMPLES, 0.2, np.float32))
    assert source.drop(b) == 3 * FRAME_SAMPLES
    assert b.done and b.interrupted and source.buffered_samples == 5 * FRAME_SAMPLES
    with pytest.raises(RuntimeError):
        source.write(np.ones(10, np.float32))  # the dropped reply takes no more audio
    assert all(mono(f)[0] == round(0.1 * 32767) for f in frames_of(source, 5))
    assert a.done and not a.interrupted and source.read() == SILENCE
    c = source.begin_reply()
    source.write(np.full(4 * FRAME_SAMPLES, 0.3, np.float32))
    source.end_reply()
    d = source.begin_reply()
    source.write(np.full(2 * FRAME_SAMPLES, 0.4, np.float32))
    assert source.clear() == 6 * FRAME_SAMPLES
    assert c.interrupted and d.interrupted and source.read() == SILENCE and source.buffered_samples == 0


def test_a_reply_begun_before_the_one_before_ended_drops_that_one():
    source = BufferSource()
    a = source.begin_reply()
    source.write(np.full(3 * FRAME_SAMPLES, 0.1, np.float32))  # its writer gave up: never ended
    b = source.begin_reply()
    assert a.done and a.interrupted and source.buffered_samples == 0
    source.write(np.full(FRAME_SAMPLES, 0.2, np.float32))
    source.end_reply()
    assert mono(source.read())[0] == round(0.2 * 32767) and b.done


def test_full_counts_the_audio_of_every_reply_buffered():
    source = BufferSource(max_buffer_s=1.0)
    source.begin_reply()
    source.write(np.zeros(30_000, np.float32))
    source.end_reply()
    source.begin_reply()
    source.write(np.zeros(17_000, np.float32))
    assert not source.full
    source.write(np.zeros(1_000, np.float32))
    assert source.full
