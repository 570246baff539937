"""The segmenter as it was before issue 9: the oracle of a differential test, and a baseline.

It rescans its whole buffer on every token (cubic on adversarial input), which is why
it was replaced; its *decisions* on ordinary text are the behaviour the new segmenter
keeps. ``tests/tts_server/test_segmenter.py`` feeds both the same LLM-like token
streams and requires the same segments; ``benchmarks/segmenter.py`` shows its cost
beside the new one's. Not shipped. Delete it when the rules change on purpose (and
the differential test with it).
"""

from __future__ import annotations

import re
import unicodedata

import emoji

#: Marks that end a sentence or clause wherever they appear (never inside a number).
IMMEDIATE_ENDS = frozenset("!?。！？")
IMMEDIATE_PAUSES = frozenset("，、；")
#: Marks that need the next character to decide.
AMBIGUOUS_ENDS = frozenset(".")
AMBIGUOUS_PAUSES = frozenset(",;")
#: Characters that stay with the sentence they close.
CLOSERS = frozenset("\"')]}”’»*_`」』）】")

#: Lower-cased abbreviations (without their final period) after which ``.`` never cuts.
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt ft rev gen col lt sgt capt cmdr adm gov sen rep pres
    vs etc approx dept est fig figs vol vols no nos op ed eds inc ltd co corp bros
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
    e.g i.e a.m p.m u.s u.k u.n e.u d.c a.d b.c ph.d cf al""".split()
)

_URL_WORD = re.compile(r"^[(\[<\"']*(?:[a-z][a-z0-9+.-]*://|www\.|[^\s@]+@[^\s@]+\.[a-z])", re.IGNORECASE)
_DOMAIN_WORD = re.compile(
    r"^[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|dev|ai|gov|edu|co|uk|de|app)(?:[/:?#]|$)", re.IGNORECASE
)
_URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>()\[\]\"']+", re.IGNORECASE)
_MD_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_FENCE = re.compile(r"```[^\s`]*")
_MD_LINE_MARKER = re.compile(r"(?m)^[ \t]*(?:#{1,6}[ \t]+|>[ \t]?|[-*+•][ \t]+)")
_MD_RULE = re.compile(r"(?m)^[ \t]*(?:[-*_][ \t]*){3,}$")
_MD_EMPHASIS = re.compile(r"\*+|~~|(?<!\w)_+|_+(?!\w)|`+")
_TABLE_PIPE = re.compile(r"\s*\|\s*")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_LEADING_JUNK = re.compile(r"^[\s.,;:!?。！？，、；)\]}\"'”’»」』）】-]+")


def has_speakable(text: str) -> bool:
    """True if ``text`` holds a letter or digit (anything a TTS engine can say)."""
    return any(ch.isalnum() for ch in text)


def _url_host(match: re.Match[str]) -> str:
    url = match.group(0)
    url = re.sub(r"^[a-z][a-z0-9+.-]*://", "", url, flags=re.IGNORECASE)
    host = re.split(r"[/?#]", url, maxsplit=1)[0]
    host = host.rsplit("@", 1)[-1].split(":")[0]
    return re.sub(r"^www\.", "", host, flags=re.IGNORECASE)


def clean_for_speech(text: str) -> str:
    """Remove what must not be spoken from one segment of LLM output.

    Markdown links and images keep their text, URLs become their host name, code
    fences, backticks, emphasis markers, headings, quotes, bullets, rules and table
    pipes go, emoji go (``emoji.replace_emoji``), white space collapses.

    Args:
        text: raw segment text.

    Returns:
        The speakable text, stripped (possibly empty).
    """
    text = _MD_IMAGE_OR_LINK.sub(r"\1", text)
    text = _URL.sub(_url_host, text)
    text = _MD_FENCE.sub(" ", text)
    text = _MD_RULE.sub(" ", text)
    text = _MD_LINE_MARKER.sub("", text)
    text = _MD_EMPHASIS.sub("", text)
    if "|" in text:
        text = ", ".join(cell for cell in _TABLE_PIPE.split(text) if cell)
    text = emoji.replace_emoji(text, "")
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("So", "Cs", "Co", "Cn"))
    text = _SPACES.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _LEADING_JUNK.sub("", text)


class Segmenter:
    """Cuts a stream of text tokens into speakable segments (see the module docstring).

    Not thread-safe; one per client stream.

    Args:
        max_chars: a segment is forced (at the last word boundary) once more than this
            many characters are buffered without a trigger.
        min_clause_chars: a pause mark cuts only after a clause at least this long.
        newline_breaks: a line break ends a segment.
    """

    def __init__(self, max_chars: int = 200, min_clause_chars: int = 12, newline_breaks: bool = True) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {max_chars}")
        self.max_chars = max_chars
        self.min_clause_chars = min_clause_chars
        self.newline_breaks = newline_breaks
        self._buf = ""

    @property
    def pending_text(self) -> str:
        """The text buffered and not yet cut into a segment (raw, as received)."""
        return self._buf

    @property
    def pending_chars(self) -> int:
        """Number of characters buffered and not yet cut into a segment."""
        return len(self._buf)

    def push(self, token: str) -> list[str]:
        """Add one token; return the segments it completes (cleaned, speakable, in order)."""
        self._buf += token
        return self._cut(final=False)

    def flush(self) -> list[str]:
        """End of input: return every remaining segment and empty the buffer."""
        segments = self._cut(final=True)
        rest = clean_for_speech(self._buf)
        self._buf = ""
        if has_speakable(rest):
            segments.append(rest)
        return segments

    def clear(self) -> None:
        """Drop buffered text (barge-in)."""
        self._buf = ""

    # -- boundary search -----------------------------------------------------------

    def _cut(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = self._find_boundary(final)
            if end is None and len(self._buf) > self.max_chars:
                end = self._forced_boundary(final)
            if end is None:
                return out
            raw, self._buf = self._buf[:end], self._buf[end:].lstrip()
            text = clean_for_speech(raw)
            if has_speakable(text):
                out.append(text)

    def _forced_boundary(self, final: bool) -> int | None:
        """Cut an over-long buffer at its last word boundary (never inside the last, incomplete word)."""
        buf = self._buf
        cut = max(buf.rfind(" "), buf.rfind("\n"), buf.rfind("\t"))
        if cut >= self.max_chars // 2:
            return cut
        if final or len(buf) > 2 * self.max_chars:
            return self.max_chars  # no white space at all: a hard cut beats unbounded growth
        return None

    def _find_boundary(self, final: bool) -> int | None:
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n:
            ch = buf[i]
            if ch == "\n" and self.newline_breaks:
                if has_speakable(buf[:i]):
                    return i + 1
            elif ch in IMMEDIATE_ENDS or ch in IMMEDIATE_PAUSES or ch in AMBIGUOUS_ENDS or ch in AMBIGUOUS_PAUSES:
                url = self._url_position(i)
                if url == "inside":
                    i += 1
                    continue
                end = self._after_closers(i + 1)
                if ch in AMBIGUOUS_ENDS or ch in AMBIGUOUS_PAUSES or url == "end":
                    if end >= n:
                        if not final:
                            return None  # the next character decides
                    elif not buf[end].isspace():
                        i += 1
                        continue
                    if ch == "." and self._protected_period(i):
                        i += 1
                        continue
                if ch in IMMEDIATE_ENDS or ch in AMBIGUOUS_ENDS:
                    if has_speakable(buf[:i]):
                        return end
                elif self._clause_long_enough(buf[:i]):
                    return end
            i += 1
        return None

    def _after_closers(self, j: int) -> int:
        buf = self._buf
        while j < len(buf) and (buf[j] in CLOSERS or buf[j] in IMMEDIATE_ENDS or buf[j] == "."):
            j += 1
        return j

    def _clause_long_enough(self, clause: str) -> bool:
        return has_speakable(clause) and len(clean_for_speech(clause)) >= self.min_clause_chars

    def _word_around(self, i: int) -> tuple[int, int]:
        buf = self._buf
        start = i
        while start > 0 and not buf[start - 1].isspace():
            start -= 1
        end = i
        while end < len(buf) and not buf[end].isspace():
            end += 1
        return start, end

    def _url_position(self, i: int) -> str | None:
        """Where position ``i`` falls in a URL, e-mail address or bare domain.

        ``"inside"``: part of the address, never a boundary. ``"end"``: punctuation at
        its end, which is a boundary only if white space follows (``?`` at the end of
        the buffer may still be a query string). ``None``: not in an address.
        """
        start, end = self._word_around(i)
        word = self._buf[start:end]
        if not (_URL_WORD.match(word) or _DOMAIN_WORD.match(word)):
            return None
        tail = len(word.rstrip(".,;:!?)\"'”’*_"))
        return "inside" if i - start < tail else "end"

    def _protected_period(self, i: int) -> bool:
        """True if the period at ``i`` belongs to an abbreviation, an initial, a list number or ``...``-less decimal."""
        buf = self._buf
        start, _ = self._word_around(i)
        word = buf[start:i].lstrip("(\"'[“‘*_").lower()
        if not word:
            return False
        if word in ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isalpha():
            return True  # an initial: "J. R. R. Tolkien"
        if re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):
            return True  # dotted initialism not in the list
        if word.isdigit():
            line_start = buf.rfind("\n", 0, start) + 1
            if not buf[line_start:start].strip():
                return True  # "1. " opening a numbered list item
        return False
