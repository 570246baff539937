"""The segmenter cuts LLM token streams at the seed's triggers and nowhere it must not."""

from __future__ import annotations

import pytest

from tts_server import text_pieces
from tts_server.segmenter import Segmenter, clean_for_speech


def feed(tokens: list[str], **kwargs) -> list[tuple[int | str, str]]:
    """Feed tokens one by one; return (index of the token that completed it | "flush", segment)."""
    seg = Segmenter(**kwargs)
    out: list[tuple[int | str, str]] = []
    for i, token in enumerate(tokens):
        out += [(i, s) for s in seg.push(token)]
    out += [("flush", s) for s in seg.flush()]
    return out


def texts(text: str, **kwargs) -> list[str]:
    return [s for _, s in feed(text_pieces(text), **kwargs)]


def test_seed_example_cuts_at_the_exclamation_mark_itself():
    out = feed(["Hello", " ", "world", "!", " ", "How", " ", "are", " ", "you", "?"])
    assert out == [(3, "Hello world!"), (10, "How are you?")]


@pytest.mark.parametrize("mark", ["!", "?", "。", "！", "？"])
def test_unambiguous_sentence_ends_cut_immediately(mark):
    out = feed(["Is", " this", " it", mark])
    assert out == [(3, f"Is this it{mark}")]


def test_period_waits_for_the_next_character():
    out = feed(["It", " is", " done", ".", " Next", " one", "."])
    assert out == [(4, "It is done."), ("flush", "Next one.")]


@pytest.mark.parametrize("mark", [",", ";", "，", "、", "；"])
def test_pause_marks_cut_once_the_clause_is_long_enough(mark):
    out = feed(["This", " clause", " is", " long", mark, " and", " more", " follows", "."])
    assert out[0] == (4 if mark in "，、；" else 5, f"This clause is long{mark}")
    assert out[1][1] == "and more follows."


def test_short_clauses_are_kept_together_and_zero_cuts_at_every_pause():
    assert texts("Yes, I can do that.") == ["Yes, I can do that."]
    assert texts("Yes, I can do that.", min_clause_chars=0) == ["Yes,", "I can do that."]


def test_buffer_over_max_chars_is_cut_at_a_word_boundary():
    words = ["word"] * 100
    out = feed([" " + w for w in words], max_chars=200)
    first = out[0][1]
    assert 100 <= len(first) <= 200
    assert all(w == "word" for w in first.split())  # no word cut in half
    assert " ".join(s for _, s in out).split() == words  # nothing lost


def test_flush_speaks_the_unterminated_tail_and_clear_drops_it():
    seg = Segmenter()
    assert seg.push("Half a sentence") == []
    assert seg.flush() == ["Half a sentence"]
    seg.push("To be dropped")
    seg.clear()
    assert seg.pending_chars == 0
    assert seg.flush() == []


@pytest.mark.parametrize(
    "text",
    [
        "Pi is about 3.14159 today.",
        "It costs $3.50 or €4.20 now.",
        "We meet at 12:30 p.m. sharp.",
        "Python 3.12.1 replaced v2.0 there.",
        "Ping 192.168.0.1 and 10.0.0.255 now.",
        "I have 1,000,000 reasons.",
        "Ask Dr. Smith and Mr. Jones first.",
        "Bring fruit, e.g. apples, i.e. food.",
        "The U.S. team won again.",
        "Read https://example.com/a.b?c=1&d=2.5 first.",
        "Mail a.b@example.org today.",
    ],
)
def test_numbers_abbreviations_and_urls_are_not_split(text):
    """Each text is one sentence: whatever the token boundaries, it must come out whole."""
    whole = texts(text, min_clause_chars=1000)
    assert len(whole) == 1, whole
    by_char = [s for _, s in feed(list(text), min_clause_chars=1000)]
    assert by_char == whole


def test_urls_are_spoken_as_their_host():
    assert texts("See https://docs.python.org/3/library/ for details.") == ["See docs.python.org for details."]


def test_markdown_and_emoji_are_not_spoken():
    md = "**Bold** and *italic* and `code` 😀 here.\n## Heading\n- first item\n- second item\n> quoted\n[a link](https://x.org)."
    out = texts(md)
    assert out == ["Bold and italic and code here.", "Heading", "first item", "second item", "quoted", "a link."]
    for s in out:
        assert not set(s) & set("*#`>[]()"), s


def test_numbered_list_markers_do_not_end_a_sentence():
    assert texts("Steps:\n1. Open it\n2. Close it\n") == ["Steps:", "1. Open it", "2. Close it"]


def test_nothing_unspeakable_becomes_a_segment():
    assert texts("*** 😀 --- ...") == []
    assert clean_for_speech("| a | b |") == "a, b"


def test_max_chars_must_leave_room_for_a_sentence():
    with pytest.raises(ValueError, match="max_chars"):
        Segmenter(max_chars=5)
