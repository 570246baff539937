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
    source.begin_reply()
    ramp = (np.arange(2500) / 10_000).astype(np.float32)
    source.write(ramp[:1000])
    source.write(ramp[1000:])
    source.end_reply()
    frames = frames_of(source, 4)
    assert all(len(f) == FRAME_BYTES for f in frames)
    got = np.concatenate([mono(f) for f in frames[:3]])
    assert np.array_equal(got[:2500], np.round(ramp * 32767).astype(np.int16))
    assert not got[2500:].any() and frames[3] == SILENCE
    playback = source._reply
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
