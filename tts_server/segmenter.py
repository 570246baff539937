"""Stage 1: cut a stream of LLM tokens into speakable segments, in time linear in the text.

Triggers (seed 004): a sentence end ``. ! ? 。 ！ ？``, a pause mark ``, ; ， 、 ；``,
more than ``max_chars`` buffered characters, or an explicit flush. Also a line break
(list items and headings from LLM output carry no punctuation).

Latency first: a mark that cannot be part of a word or number (``! ? 。 ！ ？ ， 、 ；``)
cuts as soon as it arrives. ``.``, ``,`` and ``;`` are ambiguous (``3.14``, ``$3.50``,
``1,000``, ``v2.1.0``, ``192.168.0.1``, ``e.g.``, URLs), so they cut only once the next
character is known to be white space, and a ``.`` never cuts after a known abbreviation
(``Dr.``, ``Mr.``, ``e.g.``, ``U.S.``...), a single initial, or a list number at the start
of a line. Nothing inside a URL or e-mail address cuts. A pause mark cuts only when the
clause before it holds at least ``min_clause_chars`` spoken characters (very short
fragments lose prosody and make Soprano hallucinate; set it to 0 to cut at every pause mark).

Each segment is cleaned for speech: control characters, markdown (emphasis, code,
headings, quotes, bullets, links, tables) and emoji (the ``emoji`` package) are removed,
URLs are reduced to their host name. A segment with nothing speakable left is dropped.

Cost. Text arrives from clients, so the work it causes must grow linearly with it (the
first version rescanned its whole buffer on every token: one 4 000-character token cost
seconds). The scan keeps its state between tokens and every decision it takes is final,
so each character is looked at a bounded number of times:

* a position the scan has passed is never a boundary later (whether a mark cuts depends
  on the text before it, fixed once received, and on the characters right after it,
  which the scan waits for: "the next character decides");
* the scan looks at most ``2 × max_chars`` characters into its buffer (its *window*);
  past that a forced cut is certain, so nothing beyond the window can change the next
  cut. A forced cut removes at least ``max_chars / 2`` characters and the window after
  it is scanned again, so each character is scanned at most about four times;
* runs of ordinary characters are skipped with compiled regular expressions; Python
  code runs only at white space and at marks that may cut;
* the spoken length of a clause is counted incrementally (:class:`_ClauseLength`), not
  by cleaning every prefix, and :func:`clean_for_speech` runs once per segment;
* segments are at most ``2 × max_chars`` characters (at most ``max_chars`` when white
  space allows a cut there), so cleaning and synthesizing one is bounded too.

For text arriving token by token the decisions are those of the rescanning version (a
differential test keeps both side by side on LLM-like text). Two differences, both for
input no LLM writes: a forced cut ends a segment at the last white space within
``max_chars`` (before, at the last white space of the buffer, so one 10 000-character
token of words became one segment), and nothing past the window is looked at.

Why not stream2sentence: it was evaluated (1.1.0) and meets most rules, but it holds
every sentence until the next non-space character arrives (even after ``!``), its
minimum-length merging holds back short sentences and CJK clauses, and the seed's
"every pause mark" and "over 200 characters" triggers are not expressible with its
settings; the rules above are short enough to own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

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

#: A pause mark cuts only once cleaning its clause shows enough spoken characters; the
#: clause is cleaned at most this many times per segment (see ``_clause_long_enough``).
EXACT_CLAUSE_CHECKS = 4

_ENDS = IMMEDIATE_ENDS | AMBIGUOUS_ENDS
_AMBIGUOUS = AMBIGUOUS_ENDS | AMBIGUOUS_PAUSES
#: What a closing run after a mark may hold (closers, more sentence ends, more periods).
_CLOSING_RUN = CLOSERS | IMMEDIATE_ENDS | AMBIGUOUS_ENDS
#: Characters stripped from the end of an address before deciding if a mark is inside it.
_ADDRESS_TAIL = frozenset(".,;:!?)\"'”’*_")


def _char_class(chars: frozenset[str]) -> str:
    return "".join(re.escape(c) for c in sorted(chars))


#: Control characters (C0 except tab and line feed, DEL, C1): removed before anything else
#: sees the text. A NUL would end the C string espeak-ng receives, an ESC starts terminal
#: escapes in logs. CR and NEL become line breaks, vertical tab and form feed spaces.
_CONTROL_TABLE: dict[int, str | None] = dict.fromkeys([*range(32), *range(127, 160)])
_CONTROL_TABLE.update({0x09: "\t", 0x0A: "\n", 0x0D: "\n", 0x0B: " ", 0x0C: " ", 0x85: "\n"})

_ALNUM = re.compile(r"[^\W_]")  # exactly the characters for which str.isalnum() is true
_SPACE = re.compile(r"\s")
_NON_SPACE = re.compile(r"\S")
_SPACES_AHEAD = re.compile(r"\s*")
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")  # with endpos: the last white space before it
_CUT_SPACE = re.compile(r"[ \n\t]")
_CUT_SPACES = re.compile(r"[ \n\t]+")
_NOT_CLOSING = re.compile(f"[^{_char_class(_CLOSING_RUN)}]")
#: Where the scan must look (once a letter or digit was seen): white space, marks that cut
#: at once, and ambiguous marks that white space, a closer or the end of the text follows.
#: Everything else (words, numbers, ``3.14``) is skipped without running Python code.
_ATTENTION = re.compile(
    f"[\\s{_char_class(IMMEDIATE_ENDS | IMMEDIATE_PAUSES)}]"
    f"|[{_char_class(_AMBIGUOUS)}](?=[\\s{_char_class(_CLOSING_RUN)}]|\\Z)"
)

# An address starts with a scheme, "www." or is an e-mail; matched at the word's start
# (``pattern.match(text, pos)``: none of these can cross white space).
_URL_START = re.compile(r"[(\[<\"']*(?:[a-z][a-z0-9+.-]*://|www\.)", re.IGNORECASE)
_EMAIL_START = re.compile(r"[(\[<\"']*[^\s@]+@[^\s@]+\.[a-z]", re.IGNORECASE)
_DOMAIN_START = re.compile(
    r"[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|dev|ai|gov|edu|co|uk|de|app)(?:[/:?#]|(?=\s)|\Z)", re.IGNORECASE
)
_IMMEDIATE_END = re.compile(f"[{_char_class(IMMEDIATE_ENDS)}]")
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")

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
#: Text that only the full cleaning handles: anything but printable ASCII, markdown
#: markers, addresses, line-start markers. Plain ASCII prose takes the short path.
_NEEDS_FULL_CLEAN = re.compile(r"(?m)[^\x20-\x7e\n\t]|[\[*_`~|]|://|www\.|^[ \t]*[-+#>]", re.IGNORECASE)
_UNSPOKEN_CATEGORIES = frozenset(("So", "Cs", "Co", "Cn"))


def remove_control_chars(text: str) -> str:
    """``text`` without control characters (C0 but tab and line feed, DEL, C1).

    Carriage returns and NEL become line feeds, vertical tab and form feed spaces.
    """
    return text.translate(_CONTROL_TABLE)


def has_speakable(text: str) -> bool:
    """True if ``text`` holds a letter or digit (anything a TTS engine can say)."""
    return _ALNUM.search(text) is not None


#: How long text takes to say, for refusing over-long requests before synthesis. Measured
#: with espeak-ng at 175 words per minute (Soprano speaks at a similar rate): 14 letters per
#: second of English prose; a digit is read as a word of its own (0.25 s alone, 0.35 s in
#: long numbers); a sentence end pauses.
LETTERS_PER_S = 14.0
DIGIT_S = 0.3
SENTENCE_PAUSE_S = 0.3
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_SENTENCE_END = re.compile(f"[{_char_class(IMMEDIATE_ENDS | AMBIGUOUS_ENDS)}]+")


def estimated_speech_s(text: str) -> float:
    """Estimated duration in seconds of ``text`` once spoken (see :data:`LETTERS_PER_S`).

    Within about ±30 % for prose and numbers read by espeak-ng; it is a bound for
    refusing requests early, not a prediction (synthesis is also stopped at the limit).
    Linear in ``len(text)``, in compiled code.
    """
    letters = _LETTER.subn("", text)[1]
    digits = _DIGIT.subn("", text)[1]
    pauses = _SENTENCE_END.subn("", text)[1]
    return letters / LETTERS_PER_S + digits * DIGIT_S + pauses * SENTENCE_PAUSE_S


def _url_host(match: re.Match[str]) -> str:
    url = match.group(0)
    url = re.sub(r"^[a-z][a-z0-9+.-]*://", "", url, flags=re.IGNORECASE)
    host = re.split(r"[/?#]", url, maxsplit=1)[0]
    host = host.rsplit("@", 1)[-1].split(":")[0]
    return re.sub(r"^www\.", "", host, flags=re.IGNORECASE)


def clean_for_speech(text: str) -> str:
    """Remove what must not be spoken from one segment of LLM output.

    Control characters go first. Markdown links and images keep their text, URLs become
    their host name, code fences, backticks, emphasis markers, headings, quotes, bullets,
    rules and table pipes go, emoji go (``emoji.replace_emoji``), white space collapses.
    Plain printable ASCII without markdown takes a short path with the same result.

    Args:
        text: raw segment text.

    Returns:
        The speakable text, stripped (possibly empty).
    """
    text = remove_control_chars(text)
    if _NEEDS_FULL_CLEAN.search(text):
        text = _clean_markup(text)
    return _tidy(text)


def _tidy(text: str) -> str:
    """Collapse white space, none before punctuation, no leading punctuation (the last steps of cleaning)."""
    text = _SPACES.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _LEADING_JUNK.sub("", text)


def _clean_markup(text: str) -> str:
    """The steps of :func:`clean_for_speech` that only matter for markup, addresses and non-ASCII text."""
    text = _MD_IMAGE_OR_LINK.sub(r"\1", text)
    text = _URL.sub(_url_host, text)
    text = _MD_FENCE.sub(" ", text)
    text = _MD_RULE.sub(" ", text)
    text = _MD_LINE_MARKER.sub("", text)
    text = _MD_EMPHASIS.sub("", text)
    if "|" in text:
        text = ", ".join(cell for cell in _TABLE_PIPE.split(text) if cell)
    text = emoji.replace_emoji(text, "")
    return "".join(ch for ch in text if unicodedata.category(ch) not in _UNSPOKEN_CATEGORIES)


class _ClauseLength:
    """Counts, one character at a time, an upper bound of a clause's length once cleaned.

    Never less than ``len(clean_for_speech(clause))`` and equal to it for prose: white
    space runs count once (none before ``. , ; : ! ?``, none at either end), leading
    punctuation does not count, and neither do ``*``, backticks, emoji and symbols
    (which cleaning always removes). What cleaning only sometimes removes or shortens
    (a URL read as its host, a link as its text, a heading marker, a table pipe, which
    may become ``", "``) counts in full, so the bound holds; the segmenter then checks
    with :func:`clean_for_speech` itself before it cuts.
    """

    _LEADING = frozenset(" .,;:!?。！？，、；)]}\"'”’»」』）】-")
    _REMOVED = frozenset("*`")

    __slots__ = ("_pending_space", "_started", "chars", "pos")

    def __init__(self, pos: int) -> None:
        self.pos = pos  # the next character of the text to count
        self.chars = 0
        self._pending_space = False
        self._started = False

    def count(self, text: str, end: int, enough: int) -> int:
        """Count ``text[self.pos:end]`` (stopping early once ``enough`` is reached); return the bound."""
        chars, pending, started = self.chars, self._pending_space, self._started
        i = self.pos
        while i < end and chars < enough:
            ch = text[i]
            i += 1
            if ch in self._REMOVED:
                continue
            if ch.isspace():
                pending = started
                continue
            if ch > "\x7f" and unicodedata.category(ch) in _UNSPOKEN_CATEGORIES:
                continue
            if not started:
                if ch in self._LEADING:
                    continue
                started = True
            elif pending and ch not in ".,;:!?":
                chars += 1
            pending = False
            chars += 2 if ch == "|" else 1
        self.chars, self._pending_space, self._started, self.pos = chars, pending, started, i
        return chars


class _NextMatch:
    """The first index at or after ``i`` where a pattern matches, in a text that only grows.

    Remembers the stretch it has searched, so that a stretch of text is searched once
    however often the same question is asked while the scan moves forward.
    """

    __slots__ = ("_found", "_hi", "_lo", "_pattern")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern
        self._lo = 0
        self._hi = -1  # nothing searched yet; else: no match in [_lo, _hi)
        self._found = False  # the pattern matches at _hi (else _hi was the end of the text)

    def find(self, text: str, i: int) -> int:
        """Index of the first match at or after ``i``, or ``len(text)`` if there is none."""
        if self._lo <= i <= self._hi:
            if self._found or self._hi == len(text):
                return self._hi
            start = self._hi
        else:
            self._lo = start = i
        m = self._pattern.search(text, start)
        self._found = m is not None
        self._hi = m.start() if m is not None else len(text)
        return self._hi

    def rebase(self, shift: int) -> None:
        """The first ``shift`` characters of the text were dropped."""
        self._hi -= shift
        self._lo = max(0, self._lo - shift)
        if self._hi < 0:
            self._lo, self._hi, self._found = 0, -1, False


_STOP = -1  # scan result: the next character decides; look again when more text comes


class Segmenter:
    """Cuts a stream of text tokens into speakable segments (see the module docstring).

    Not thread-safe; one per client stream. :meth:`push` costs time linear in the
    token (plus a bounded amount per segment it completes).

    Args:
        max_chars: a segment is forced (at the last word boundary) once more than this
            many characters are buffered without a trigger; the scan looks at most
            ``2 × max_chars`` characters ahead.
        min_clause_chars: a pause mark cuts only after a clause at least this long.
        newline_breaks: a line break ends a segment.

    Raises:
        ValueError: ``max_chars`` below 20.
    """

    def __init__(self, max_chars: int = 200, min_clause_chars: int = 12, newline_breaks: bool = True) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {max_chars}")
        self.max_chars = max_chars
        self.min_clause_chars = min_clause_chars
        self.newline_breaks = newline_breaks
        self._window = 2 * max_chars + 1  # positions [start, start + 2 × max_chars] may cut
        self._text = ""  # text[_start:] is buffered; what lies before it was cut already
        self._start = 0
        self._next_space = _NextMatch(_SPACE)
        self._next_at = _NextMatch(re.compile("@"))
        self._closing_end = _NextMatch(_NOT_CLOSING)
        self._address: tuple[int, int, int] | None = None  # (word start, word end, where its tail begins or -1)
        self._resume = 0  # where the scan goes on after a mark that did not cut
        self._reset_scan()

    def _reset_scan(self) -> None:
        """Scan the buffer from its start (a cut moved the start, so what depends on it changed)."""
        self._pos = self._start  # next position to look at; [_start, _pos) holds no boundary
        self._alnum_seen = False  # a letter or digit in [_start, _pos)
        self._word_start = self._start  # where the word at _pos begins
        self._line_text_at = -1  # first non-space character of the current line in [_start, _pos)
        self._clause = _ClauseLength(self._start)
        self._exact_checks_left = EXACT_CLAUSE_CHECKS

    @property
    def pending_text(self) -> str:
        """The text buffered and not yet cut into a segment (as received, less control characters)."""
        return self._text[self._start :]

    @property
    def pending_chars(self) -> int:
        """Number of characters buffered and not yet cut into a segment."""
        return len(self._text) - self._start

    def push(self, token: str) -> list[str]:
        """Add one token; return the segments it completes (cleaned, speakable, in order)."""
        return [text for text in self.push_steps(token) if text]

    def push_steps(self, token: str) -> Iterator[str]:
        """Add one token and cut it one segment at a time, for callers that pause in between.

        Each step costs a bounded amount of work (at most a window of ``2 × max_chars``
        characters scanned and one segment cleaned, well under a millisecond), so a caller
        on an event loop can let others run between steps however long the token. The
        token is added at once; the segmenter must not be used otherwise until the
        iterator is exhausted.

        Yields:
            Each cut's cleaned text in order; ``""`` for a cut with nothing speakable (dropped
            by :meth:`push`).
        """
        token = remove_control_chars(token)
        if self._start:
            self._rebase()
        self._text += token
        return self._cuts(final=False)

    def flush(self) -> list[str]:
        """End of input: return every remaining segment and empty the buffer."""
        segments = [text for text in self._cuts(final=True) if text]
        rest = clean_for_speech(self.pending_text)
        self.clear()
        if has_speakable(rest):
            segments.append(rest)
        return segments

    def clear(self) -> None:
        """Drop buffered text (barge-in)."""
        self._start = len(self._text)
        self._rebase()
        self._reset_scan()

    def _rebase(self) -> None:
        """Drop the text already cut, so that positions (and the copies made by push) stay small."""
        shift = self._start
        self._text = self._text[shift:]
        self._start = 0
        self._pos -= shift
        self._word_start -= shift
        if self._line_text_at >= 0:
            self._line_text_at -= shift
        self._clause.pos -= shift
        for cache in (self._next_space, self._next_at, self._closing_end):
            cache.rebase(shift)
        self._address = None

    # -- cutting ----------------------------------------------------------------------

    def _cuts(self, final: bool) -> Iterator[str]:
        while True:
            end = self._scan(final)
            if end is None and self.pending_chars > self.max_chars:
                end = self._forced_boundary(final)
            if end is None:
                return
            raw = self._text[self._start : end]
            self._start = _SPACES_AHEAD.match(self._text, end).end()  # type: ignore[union-attr]  # \s* always matches
            self._reset_scan()
            text = clean_for_speech(raw)
            yield text if has_speakable(text) else ""

    def _forced_boundary(self, final: bool) -> int | None:
        """Cut an over-long buffer at a word boundary, never inside the last, incomplete word.

        The last white space within ``max_chars`` if it leaves at least half of that;
        else the first one after a long word straddling ``max_chars``; with neither
        (one word longer than ``max_chars``), a hard cut at ``max_chars`` once more than
        twice that is buffered, or at a flush.
        """
        text, start, limit = self._text, self._start, self.max_chars
        cut = max(text.rfind(c, start, start + limit + 1) for c in " \n\t")
        if cut - start >= limit // 2:
            return _CUT_SPACES.match(text, cut).end() - 1  # type: ignore[union-attr]  # at its run's last space
        after = _CUT_SPACE.search(text, start + limit + 1, start + 2 * limit + 1)
        if after is not None:
            return after.start()
        if final or len(text) - start > 2 * limit:
            return start + limit
        return None

    def _scan(self, final: bool) -> int | None:
        """Look at positions from ``_pos`` on; return the end of the first segment, or ``None``."""
        text = self._text
        limit = min(len(text), self._start + self._window)
        i = self._pos
        while i < limit:
            if not self._alnum_seen:
                # Nothing cuts before a letter or digit: jump to the first one.
                m = _ALNUM.search(text, i, limit)
                j = m.start() if m is not None else limit
                self._pass_span(text, i, j)
                i = j
                self._alnum_seen = m is not None
                continue
            m = _ATTENTION.search(text, i, limit)
            j = m.start() if m is not None else limit
            if j > i:  # an ordinary stretch: no white space, no mark that may cut
                if self._line_text_at < 0:
                    self._line_text_at = i
                i = j
                continue
            ch = text[i]
            if ch.isspace():
                if ch == "\n":
                    if self.newline_breaks:
                        self._pos = i
                        return i + 1
                    self._line_text_at = -1
                self._word_start = i + 1
                i += 1
                continue
            self._resume = i + 1
            end = self._decide(i, ch, final)
            if end == _STOP:
                self._pos = i
                return None
            if end is not None:
                self._pos = i
                return end
            if self._line_text_at < 0:
                self._line_text_at = i
            i = self._resume
        self._pos = i
        return None

    def _pass_span(self, text: str, i: int, j: int) -> None:
        """Update the scan state for a stretch ``[i, j)`` passed without looking at each character."""
        if i >= j:
            return
        newline = text.rfind("\n", i, j)
        if newline >= 0:
            self._line_text_at = -1
        if self._line_text_at < 0:
            m = _NON_SPACE.search(text, newline + 1 if newline >= 0 else i, j)
            if m is not None:
                self._line_text_at = m.start()
        m = _LAST_SPACE.search(text, i, j)
        if m is not None:
            self._word_start = m.start() + 1

    def _decide(self, i: int, ch: str, final: bool) -> int | None:
        """Is the mark ``ch`` at ``i`` a boundary? Its end, ``None`` (no, final) or ``_STOP``.

        A letter or digit precedes ``i`` in the buffer (the scan jumps over everything
        before the first one).
        """
        text, n = self._text, len(self._text)
        end = min(self._closing_end.find(text, i + 1), self._start + self._window)
        if ch in _AMBIGUOUS:
            if end >= n:
                if not final:
                    return _STOP  # the next character decides
            elif not text[end].isspace():
                # Neither this mark nor an ambiguous one in its closing run cuts (the same
                # word goes on after the run); a sentence end in the run is looked at.
                m = _IMMEDIATE_END.search(text, i + 1, end)
                self._resume = m.start() if m is not None else end
                return None
            # The closing run ends the word here: white space (or the end of all text) follows.
            if self._address_position(i, end) == "inside":
                return None
            if ch == "." and self._protected_period(i):
                return None
        else:
            place = self._address_position(i, self._next_space.find(text, i))
            if place == "inside":
                return None
            if place == "end":
                if end >= n:
                    if not final:
                        return _STOP
                elif not text[end].isspace():
                    return None
        if ch in _ENDS:
            return end
        return end if self._clause_long_enough(i) else None

    def _address_position(self, i: int, word_end: int) -> str | None:
        """Where position ``i`` falls in a URL, e-mail address or bare domain.

        ``"inside"``: part of the address, never a boundary. ``"end"``: punctuation at
        its end, which is a boundary only if white space follows (``?`` at the end of
        the buffer may still be a query string). ``None``: not in an address.
        """
        text, start = self._text, self._word_start
        cached = self._address
        if cached is None or cached[0] != start or cached[1] != word_end:
            is_address = (
                _URL_START.match(text, start) is not None
                or _DOMAIN_START.match(text, start) is not None
                or (self._next_at.find(text, start) < word_end and _EMAIL_START.match(text, start) is not None)
            )
            tail = -1
            if is_address:
                tail = word_end
                while tail > start and text[tail - 1] in _ADDRESS_TAIL:
                    tail -= 1
            cached = self._address = (start, word_end, tail)
        tail = cached[2]
        if tail < 0:
            return None
        return "inside" if i < tail else "end"

    def _protected_period(self, i: int) -> bool:
        """True if the period at ``i`` belongs to an abbreviation, an initial or a list number."""
        start = self._word_start
        word = self._text[start:i].lstrip("(\"'[“‘*_").lower()
        if not word:
            return False
        if word in ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isalpha():
            return True  # an initial: "J. R. R. Tolkien"
        if _INITIALISM.fullmatch(word):
            return True  # dotted initialism not in the list
        if word.isdigit():
            return self._line_text_at < 0 or self._line_text_at >= start  # "1. " opening a list item
        return False

    def _clause_long_enough(self, i: int) -> bool:
        """Does the text before the pause mark at ``i`` hold ``min_clause_chars`` spoken characters?

        The incremental bound answers "no" exactly; a "yes" is confirmed by cleaning the
        clause, at most :data:`EXACT_CLAUSE_CHECKS` times per segment (past that, text
        whose bound is far above its spoken length, i.e. markup, cuts on the bound).
        """
        needed = self.min_clause_chars
        if self._clause.count(self._text, i, needed) < needed:
            return False
        if self._exact_checks_left <= 0:
            return True
        self._exact_checks_left -= 1
        return len(clean_for_speech(self._text[self._start : i])) >= needed
