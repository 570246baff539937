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


# -- linear time, bounded segments, control characters (issue 9) ---------------------------------

LLM_WORDS = (
    "Hello world the a I Dr. Mr. e.g. i.e. U.S. 3.14 $3.50 1,000 v2.1.0 192.168.0.1 https://example.com/a.b?c=1 "
    'www.python.org a.b@example.org example.com **bold** *it* `code` 😀 J. R. etc. 1. 2. (see this) "quoted" '
    "it's well-known snake_case # - > [link](https://x.org) Tolkien St. no. ok yes really clause something longer "
    "words here are fine 你好 。 ， 、 ； ！ ？"
).split(" ")
LLM_PUNCT = [".", ",", ";", "!", "?", "...", "?!", ".)", '."', ":", " -", "\n", "\n- ", "\n1. ", "\n## "]


def llm_like_text(rng, words: int) -> str:
    out = []
    for _ in range(words):
        out.append(rng.choice(LLM_WORDS))
        if rng.random() < 0.3:
            out.append(rng.choice(LLM_PUNCT))
        out.append(rng.choice([" ", " ", " ", "  ", "", "\n"]))
    return "".join(out)


@pytest.mark.parametrize("seed", range(0, 400, 40))
def test_the_same_segments_as_the_rescanning_segmenter_on_llm_like_text(seed):
    """Differential: the linear-time scan decides as the version it replaced did (testing.segmenter_reference)."""
    import random

    from testing.segmenter_reference import Segmenter as Reference

    def run(cls, tokens, **kwargs):
        seg = cls(**kwargs)
        return [s for t in tokens for s in seg.push(t)] + seg.flush()

    for case in range(seed, seed + 40):
        rng = random.Random(case)
        text = llm_like_text(rng, rng.randint(1, 120))
        kwargs = {
            "max_chars": rng.choice([40, 200]),
            "min_clause_chars": rng.choice([0, 5, 12]),
            "newline_breaks": rng.random() < 0.8,
        }
        for tokens in (text_pieces(text), list(text)):
            assert run(Segmenter, tokens, **kwargs) == run(Reference, tokens, **kwargs), (case, kwargs, text)


def test_push_steps_cut_as_push_does():
    text = "First one! Second, a clause that is long enough; third. " * 20 + "tail"
    whole, stepped = Segmenter(), Segmenter()
    steps = list(stepped.push_steps(text))
    assert [s for s in steps if s] == whole.push(text)
    assert stepped.pending_text == whole.pending_text == "tail"


def test_cleaning_runs_once_per_segment(monkeypatch):
    """Not once per prefix: the clause test counts incrementally and cleans only to confirm a cut."""
    import tts_server.segmenter as module

    calls: list[str] = []
    clean = module.clean_for_speech
    monkeypatch.setattr(module, "clean_for_speech", lambda text: calls.append(text) or clean(text))
    seg = Segmenter()
    out = [
        s
        for token in text_pieces("Well, you know, this clause runs long enough, I think. " * 10)
        for s in seg.push(token)
    ]
    out += seg.flush()
    pause_cuts = sum(s.endswith(",") for s in out)
    assert len(calls) <= len(out) + 1 + pause_cuts  # a cut each, the flush, one confirmation per pause cut


@pytest.mark.parametrize(
    "text",
    ["!" * 10_000, "x." * 5_000, "a" * 10_000, "a!" * 5_000, "word " * 2_000, ("```a" + " ," * 5_000)[:10_000]],
    ids=["!", "x.", "one word", "a!", "words", "fence"],
)
def test_one_huge_token_gives_bounded_segments_and_loses_no_word(text):
    seg = Segmenter(max_chars=200)
    out = seg.push(text) + seg.flush()
    assert all(len(s) <= 2 * 200 for s in out)
    if text.startswith("word"):
        assert all(len(s) <= 200 for s in out) and " ".join(out).split() == text.split()


def test_control_characters_are_removed_before_anything_else():
    seg = Segmenter()
    out = seg.push("Null\x00 and escape\x1b[0m and bell\x07.\r\nNext line\x0bhere\x85done.") + seg.flush()
    assert out == ["Null and escape[0m and bell.", "Next line here", "done."]
    assert "\x00" not in seg.pending_text and clean_for_speech("a\x00b\x9bc") == "abc"


@pytest.mark.parametrize("seed", range(5))
def test_the_short_cleaning_path_equals_the_full_one(seed):
    """Plain ASCII skips the markup steps; on random ASCII both give the same text."""
    import random

    from tts_server.segmenter import _clean_markup, _tidy

    rng = random.Random(seed)
    alphabet = "ab cd.,;:!?'\"()$%&+=/0123456789\n\t-#>*_`~|[]@w"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert clean_for_speech(text) == _tidy(_clean_markup(text)), repr(text)
