"""espeak-ng engine: long segments are spoken clause by clause, so no call holds the inference thread long."""

from __future__ import annotations

import numpy as np

from tts_server.engines.espeak import MAX_CALL_CHARS, EspeakEngine, clauses

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


def record_calls(engine: EspeakEngine) -> list[str]:
    """The texts of the engine's calls into the real library, from now on."""
    real = engine._lib.synthesize
    calls: list[str] = []

    def recording(text, *args):
        calls.append(text)
        return real(text, *args)

    engine._lib.synthesize = recording  # type: ignore[method-assign]  # the real library, calls recorded
    return calls


def test_a_long_segment_is_spoken_in_short_calls_and_lasts_as_long_as_in_one():
    engine = EspeakEngine()
    real = engine._lib.synthesize
    calls = record_calls(engine)
    audio = np.concatenate(list(engine.synthesize(LONG)))
    engine._lib.synthesize = real
    whole = real(LONG, engine.voice, engine.rate_wpm, engine.pitch)
    assert len(calls) > 3 and all(len(text) <= MAX_CALL_CHARS for text in calls)
    # The pause after each cut clause is put back: espeak-ng's own timing of a clause
    # differs by at most a few ms between the two ways (measured 0.6 ms per cut).
    assert abs(audio.size - whole.size) <= 0.005 * engine.sample_rate * len(calls)
    assert np.sqrt(np.mean(audio**2)) > 0.5 * np.sqrt(np.mean(whole**2))


def test_a_short_segment_is_one_call_as_before():
    engine = EspeakEngine()
    calls = record_calls(engine)
    text = "Hello there, this is espeak. And a second sentence."
    audio = np.concatenate(list(engine.synthesize(text)))
    assert calls == [text] and audio.size > engine.sample_rate
