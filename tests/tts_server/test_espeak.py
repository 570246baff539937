"""espeak-ng engine: long segments are spoken clause by clause, so no call holds the inference thread long."""

from __future__ import annotations

import numpy as np
import parselmouth

from tts_server.engines.espeak import MAX_CALL_CHARS, EspeakEngine, _SynthCallback, clauses

LONG = (
    "The weather is lovely today, and I will read you the next chapter now; then we sleep: all of us, "
    "happily ever after, in the big old house by the river where the tall trees grow and the birds sing. "
) * 3


def test_clauses_cut_after_clause_marks_then_white_space_then_anywhere():
    pieces = list(clauses(LONG))
    assert all(len(piece) <= MAX_CALL_CHARS for piece, _ in pieces)
    assert " ".join(piece for piece, _ in pieces).split() == LONG.split()  # nothing lost or reordered
    marked = [(piece, mark) for piece, mark in pieces if mark]
    assert marked and all(piece.endswith(mark) for piece, mark in marked)
    words = "word " * 100  # no clause mark: cut at white space, never inside a word
    assert all(set(piece.split()) == {"word"} for piece, _ in clauses(words))
    blob = "x" * 1000  # not even white space: cut every MAX_CALL_CHARS characters
    assert [len(piece) for piece, _ in clauses(blob)] == [MAX_CALL_CHARS] * 10
    assert list(clauses("Short one.")) == [("Short one.", "")]


def record_calls(engine: EspeakEngine, monkeypatch) -> list[str]:
    """The texts of the engine's calls into the real library, until the test ends (the library is shared)."""
    real = engine._lib.synthesize
    calls: list[str] = []

    def recording(text, *args):
        calls.append(text)
        return real(text, *args)

    monkeypatch.setattr(engine._lib, "synthesize", recording)  # the real library, calls recorded
    return calls


def test_a_long_segment_is_spoken_in_short_calls_and_lasts_as_long_as_in_one(monkeypatch):
    engine = EspeakEngine()
    real = engine._lib.synthesize
    calls = record_calls(engine, monkeypatch)
    audio = np.concatenate(list(engine.synthesize(LONG)))
    whole = real(LONG, engine.voice, engine.rate_wpm, engine.pitch)
    assert len(calls) > 3 and all(len(text) <= MAX_CALL_CHARS for text in calls)
    # The pause after each cut clause is put back: espeak-ng's own timing of a clause
    # differs by at most a few ms between the two ways (measured 0.6 ms per cut).
    assert abs(audio.size - whole.size) <= 0.005 * engine.sample_rate * len(calls)
    assert np.sqrt(np.mean(audio**2)) > 0.5 * np.sqrt(np.mean(whole**2))


def test_a_short_segment_is_one_call_as_before(monkeypatch):
    engine = EspeakEngine()
    calls = record_calls(engine, monkeypatch)
    text = "Hello there, this is espeak. And a second sentence."
    audio = np.concatenate(list(engine.synthesize(text)))
    assert calls == [text] and audio.size > engine.sample_rate


def median_f0(audio: np.ndarray, sample_rate: int) -> float:
    """Median F0 of the voiced frames, Hz (Praat's pitch tracker)."""
    pitch = parselmouth.Sound(audio.astype(np.float64), sample_rate).to_pitch()
    f0 = pitch.selected_array["frequency"]
    return float(np.median(f0[f0 > 0]))


def test_settings_apply_call_by_call_though_unchanged_ones_are_not_set_again():
    """The library keeps its voice, rate and pitch between calls (set only when they change);
    each call still speaks with its own. espeak-ng varies a call's length by a few samples."""
    lib = EspeakEngine()._lib
    sr = lib.sample_rate
    text = "The weather is lovely today."
    slow = lib.synthesize(text, "en-us", 150, 50)
    fast = lib.synthesize(text, "en-us", 300, 50)
    high = lib.synthesize(text, "en-us", 150, 90)
    again = lib.synthesize(text, "en-us", 150, 50)
    assert fast.size < 0.7 * slow.size
    assert median_f0(high, sr) > 1.2 * median_f0(slow, sr)
    assert abs(again.size - slow.size) < 0.005 * slow.size
    assert abs(median_f0(again, sr) - median_f0(slow, sr)) < 0.02 * median_f0(slow, sr)
    words = "Guten Morgen, wie geht es dir heute?"
    assert lib.has_language("de")  # sets another voice; the next call must set its own again
    after = lib.synthesize(words, "en-us", 150, 50)
    german = lib.synthesize(words, "en-us", 150, 50, language="de")
    english = lib.synthesize(words, "en-us", 150, 50)
    assert abs(german.size - english.size) > 0.05 * english.size  # spoken by other rules
    assert abs(after.size - english.size) < 0.005 * english.size


def test_one_call_hands_its_audio_over_in_one_callback():
    """Each callback into Python waits for the GIL (up to a switch interval when the event
    loop is busy): a call makes a few (espeak-ng hands its audio over at clause ends and
    every few seconds), not one per 100 ms of audio."""
    lib = EspeakEngine()._lib
    callbacks: list[int] = []

    def counting(wav, num_samples, events):
        callbacks.append(num_samples)
        return lib._on_samples(wav, num_samples, events)

    counted = _SynthCallback(counting)
    lib.lib.espeak_SetSynthCallback(counted)  # the library's own callback registration
    try:
        clause = ("the tall trees grow by the river " * 4)[:MAX_CALL_CHARS]  # no clause mark inside
        audio = lib.synthesize(clause, "en-us", 80, 50)  # the slowest rate: the longest audio
    finally:
        lib.lib.espeak_SetSynthCallback(lib._callback)
    audio_s = audio.size / lib.sample_rate
    assert audio_s > 5
    assert len([n for n in callbacks if n > 0]) <= audio_s / 2  # 100 ms buffers: 10 per second
