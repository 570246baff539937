"""Streaming conversion: agreement with the whole-file conversion, click-free block edges,
nothing lost at flush, independence from chunk sizes."""

from __future__ import annotations

import numpy as np
import pytest

import rvc
from rvc.converter import resample

TTS_RATE = 32000
CHUNK = 2048  # what the TTS delivers


@pytest.fixture(scope="module")
def speech_32k(speech) -> np.ndarray:
    audio, sr = speech
    return resample(audio, sr, TTS_RATE)


def make_converter(assets, key="v2_48k", noise=False, hubert="hubert"):
    return rvc.VoiceConverter(
        rvc.load_voice(assets[key]),
        rvc.load_content_encoder(assets[hubert]),
        rvc.load_f0_estimator("pm"),
        noise=noise,
        seed=None if not noise else 3,
    )


def stream_blocks(stream, audio, chunk=CHUNK):
    """Feed ``audio`` in chunks; return the emitted blocks with their SOLA offsets, and the flush."""
    blocks = []
    for i in range(0, len(audio), chunk):
        out = stream.process(audio[i : i + chunk])
        assert len(out) % stream.block_samples == 0
        if len(out) == stream.block_samples:
            blocks.append((out, stream.last_sola_offset))
        elif len(out):  # several blocks at once: offsets of the earlier ones are not known
            blocks += [(b, None) for b in np.split(out, len(out) // stream.block_samples)]
    return blocks, stream.flush()


def aligned_pairs(converter, stream, audio) -> tuple[np.ndarray, np.ndarray]:
    """Streamed output from block 2 on, and the whole-file conversion at the same times.

    Each emitted block is matched to the whole-file output at the position the stream's
    own timeline gives it (block start − crossfade − search, plus its SOLA shift). The
    whole-file input is preceded by 1 s of silence, as the stream's buffer is.
    """
    blocks, _ = stream_blocks(stream, audio)
    lead = TTS_RATE  # 1 s
    whole = converter.convert(np.concatenate([np.zeros(lead, np.float32), audio]), TTS_RATE)
    ours, ref = [], []
    for b, (out, offset) in enumerate(blocks):
        start = (
            converter.sample_rate
            + (b * stream.block_frames - stream.crossfade_frames - stream.search_frames) * stream.hop
            + offset
        )
        if b >= 2 and start + len(out) <= len(whole):
            ours.append(out)
            ref.append(whole[start : start + len(out)])
    return np.concatenate(ours).astype(np.float64), np.concatenate(ref).astype(np.float64)


def snr_db(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ours - ref) ** 2)))


def magnitude_snr_db(ours: np.ndarray, ref: np.ndarray, n_fft: int = 1024, hop: int = 256) -> float:
    """SNR of STFT magnitudes: insensitive to the excitation's phase."""
    import torch

    def mag(x):
        return (
            torch.stft(
                torch.from_numpy(x),
                n_fft,
                hop,
                window=torch.hann_window(n_fft, dtype=torch.float64),
                return_complex=True,
            )
            .abs()
            .numpy()
        )

    return snr_db(mag(ours), mag(ref))


def test_streamed_output_agrees_with_whole_file_conversion_sample_by_sample(assets, speech_32k):
    # A voice without pitch guidance: the waveform is a function of local features only.
    converter = make_converter(assets, "v2_48k_nof0", hubert="hubert_local")
    stream = rvc.StreamingConverter(converter, TTS_RATE, block_ms=250, context_ms=2500, crossfade_ms=50)
    snr = snr_db(*aligned_pairs(converter, stream, speech_32k))
    print(f"streamed vs whole-file waveform SNR {snr:.1f} dB")
    assert snr >= 12.0


def test_streamed_output_of_a_pitch_guided_voice_agrees_in_magnitude(assets, speech_32k):
    # The NSF sine's phase integrates F0 over the whole past: one frame whose F0 differs
    # between the two runs shifts all later phase, so compare magnitude spectra.
    converter = make_converter(assets, "v2_48k", hubert="hubert_local")
    stream = rvc.StreamingConverter(converter, TTS_RATE, block_ms=250, context_ms=2500, crossfade_ms=50)
    snr = magnitude_snr_db(*aligned_pairs(converter, stream, speech_32k))
    print(f"streamed vs whole-file magnitude SNR {snr:.1f} dB")
    assert snr >= 10.0


def test_block_edges_have_no_discontinuity(assets, speech_32k):
    converter = make_converter(assets, noise=True)
    stream = rvc.StreamingConverter(converter, TTS_RATE, block_ms=250, context_ms=1000, crossfade_ms=50)
    blocks, tail = stream_blocks(stream, speech_32k)
    y = np.concatenate([o for o, _ in blocks] + [tail])
    steps = np.abs(np.diff(y))
    edges = np.arange(1, len(blocks)) * stream.block_samples - 1  # step from last sample of a block to the next
    interior = np.delete(steps, edges)
    assert steps[edges].max() <= interior.max()
    assert np.median(steps[edges]) <= np.percentile(interior, 99)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0


def test_output_does_not_depend_on_chunk_sizes(assets, speech_32k):
    converter = make_converter(assets)
    outs = []
    for chunk in (CHUNK, 777, 32000):
        stream = rvc.StreamingConverter(converter, TTS_RATE, block_ms=200, context_ms=500, crossfade_ms=40)
        blocks, tail = stream_blocks(stream, speech_32k[: TTS_RATE * 2], chunk)
        outs.append(np.concatenate([o for o, _ in blocks] + [tail]))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    np.testing.assert_allclose(outs[2], outs[0], atol=1e-5)


def test_flush_returns_everything_and_the_stream_is_reusable(assets, speech_32k):
    converter = make_converter(assets)
    stream = rvc.StreamingConverter(converter, TTS_RATE, block_ms=250, context_ms=500, crossfade_ms=50)
    audio = speech_32k[: int(TTS_RATE * 1.3)]  # not a whole number of blocks
    blocks, tail = stream_blocks(stream, audio)
    first = np.concatenate([o for o, _ in blocks] + [tail])
    # every input sample is represented: output covers the input duration after the latency
    assert len(first) >= round(len(audio) * converter.sample_rate / TTS_RATE) + stream.latency_samples - stream.hop
    stream2 = rvc.StreamingConverter(converter, TTS_RATE, block_ms=250, context_ms=500, crossfade_ms=50)
    blocks, tail = stream_blocks(stream2, audio)
    again = np.concatenate([o for o, _ in blocks] + [tail])
    blocks, tail = stream_blocks(stream2, audio)  # after flush: same as a fresh stream
    np.testing.assert_allclose(np.concatenate([o for o, _ in blocks] + [tail]), again, atol=1e-6)
    assert len(stream2.flush()) == 0  # nothing held


def test_settings_are_validated(assets):
    converter = make_converter(assets)
    with pytest.raises(ValueError, match="crossfade_ms"):
        rvc.StreamingConverter(converter, TTS_RATE, block_ms=50, crossfade_ms=100)
    with pytest.raises(ValueError, match="block_ms"):
        rvc.StreamingConverter(converter, TTS_RATE, block_ms=5)
    stream = rvc.StreamingConverter(converter, TTS_RATE)
    assert stream.output_sample_rate == 48000
    assert stream.latency_samples == 60 * 48
    assert len(stream.process(np.zeros(100, np.float32))) == 0


def test_block_settings_pick_the_least_latency_that_keeps_up():
    from rvc.streaming import choose_block_settings

    measured = {(100, 500): 95.0, (250, 500): 150.0, (250, 2500): 240.0, (500, 500): 260.0, (500, 2500): 390.0}
    # 100 ms blocks: 95 > 0.8·100, too slow; 250/500 keeps up (150 ≤ 200) and adds the least
    assert choose_block_settings(measured) == (250, 500)
    # more headroom allowed: 100 ms blocks qualify and add less latency (100 + 95 < 250 + 150)
    assert choose_block_settings(measured, headroom=1.0) == (100, 500)
    # equal latency: the longer context wins
    assert choose_block_settings({(250, 500): 150.0, (250, 2500): 150.0}) == (250, 2500)
    assert choose_block_settings({(250, 500): 300.0}) is None
