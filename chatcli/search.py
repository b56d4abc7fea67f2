"""Search as every store does it, defined once here and applied alike to what each engine indexes and to
the query, so the same sessions give the same hits on every engine (README, "Search"). No I/O.

**Folding** (``fold``): compatibility forms become their plain letters (NFKC: ``ﬁ`` is ``fi``, fullwidth
``Ａ`` is ``A``), case is folded (``casefold``: ``ß`` is ``ss``, ``Σ`` and ``ς`` are ``σ``), and the accents
of ``search_tables.ACCENTS`` are dropped (``é`` is ``e``, ``ά`` is ``α``); everything is then composed
again (NFC), so Hangul syllables and kana keep their form.

**Words** (``words``): the folded text's runs of letters, digits and the marks that follow them
(``search_tables.MARKS``); everything else separates words: spaces, punctuation, symbols, ``_``
(``foo_bar`` is ``foo`` and ``bar``; ``x.y`` is ``x`` and ``y``). In the scripts written without spaces
(``search_tables.NO_SPACES``: Chinese, Japanese, Thai, Lao, Khmer, Myanmar) a run is cut into overlapping
pairs of characters, and its last character stands alone too (``東京都`` is ``東京``, ``京都``, ``都``).
Only the first ``INDEXED_CHARS`` characters of a message are indexed, and a word counts by its first
``MAX_WORD_UNITS`` units (an ASCII letter or digit is one unit, another character five: so ASCII words of up
to 82 characters and others of up to 16 count whole).

**Matching**: a message (or title) matches when every word of the query starts one of its words. The
engines only differ in how they store the words: SQLite's FTS5 (the ``ascii`` tokenizer, which keeps each
word whole) and the folder's index take ``index_text``; PostgreSQL a ``tsvector`` built by ``tsvector``;
MySQL/MariaDB a FULLTEXT index over ``mysql_text``, where each word is spelled in ASCII (InnoDB's own parser
would cut words at marks, skip short ones, and compare by collation).

Ranking is each engine's own (bm25, ``ts_rank``, InnoDB's relevance), ties broken alike: the newer session
first, then the earlier message (``tie_break``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from chatcli.attachments import file_blocks, folded
from chatcli.search_tables import ACCENTS, MARKS, NO_SPACES, char_class


@dataclass(frozen=True)
class SearchHit:
    """One match: the session, its title, the turn number (1-based), the role (``user``, ``assistant``
    or ``title``), the message's position in the session (-1 for a title), and a snippet with the matched
    words between ``HIGHLIGHT`` markers."""

    session_id: str
    title: str
    turn: int
    role: str
    position: int
    snippet: str


REASONING = "reasoning"  # the role of a hit in an assistant message's reasoning (searched on request only)
SEARCH_WINDOW = 5_000  # matches ranked by a search: the most recent ones
HIGHLIGHT = ("\x02", "\x03")  # start/end of a match inside SearchHit.snippet (never in stored text shown raw)
SNIPPET_WORDS = 16
INDEXED_CHARS = 100_000  # a message is searched in its first this many characters, on every engine
MAX_WORD_UNITS = 82  # InnoDB keeps words of at most 84 characters: 2 for MYSQL_PAD, 82 for the word
MYSQL_PAD = "zz"  # starts every word of mysql_text, so none is shorter than InnoDB's minimum (3)
_BASE35 = "0123456789abcdefghijklmnoprstuvwxyz"  # no "q": q is mysql_text's escape


@cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(a word, a run of a script without spaces, an accent), compiled at the first search or save."""
    marks = char_class(MARKS)
    no_spaces = char_class(NO_SPACES)
    return (
        re.compile(f"[^\\W_](?:[^\\W_]|[{marks}])*"),
        re.compile(f"[{no_spaces}]+"),
        re.compile(f"[{char_class(ACCENTS)}]+"),
    )


def fold(text: str) -> str:
    """``text`` folded as search compares it (see the module docstring): ``Élan`` -> ``elan``."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    return unicodedata.normalize("NFC", _patterns()[2].sub("", unicodedata.normalize("NFD", text)))


def words(text: str) -> Iterator[str]:
    """The words of ``text`` as search knows them (folded, cut, pairs for scripts without spaces, each at
    most MAX_WORD_UNITS), in order, repeats included."""
    folded = fold(text)
    if folded.isascii():  # (most text: its words are its runs of letters and digits, whole)
        found = folded.encode("ascii").translate(_ASCII_SPACES).decode("ascii").split()
        if max(map(len, found), default=0) > MAX_WORD_UNITS:
            found = [_capped(w) for w in found]
        return iter(found)
    return _words(folded)


#: folded ASCII text (lower case) with every byte but a letter or digit made a space: its words are then
#: what ``_patterns()[0]`` finds, split at spaces (twice as fast as the regular expression)
_ASCII_SPACES = bytes(c if 0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A else 0x20 for c in range(256))


def _words(folded: str) -> Iterator[str]:
    word, no_spaces, _ = _patterns()
    for m in word.finditer(folded):
        for piece in _pieces(m.group(), no_spaces):
            yield _capped(piece)


def _pieces(word: str, no_spaces: re.Pattern[str]) -> Iterator[str]:
    if word.isascii():
        yield word
        return
    at = 0
    for run in no_spaces.finditer(word):
        if run.start() > at:
            yield word[at : run.start()]
        chars = run.group()
        yield from (chars[i : i + 2] for i in range(len(chars) - 1))
        yield chars[-1]
        at = run.end()
    if at < len(word):
        yield word[at:]


def _capped(word: str) -> str:
    if len(word) <= MAX_WORD_UNITS // 5 or (word.isascii() and len(word) <= MAX_WORD_UNITS):
        return word
    units = 0
    for i, ch in enumerate(word):
        units += 1 if ch.isascii() and ch != "q" else 2 if ch == "q" else 5
        if units > MAX_WORD_UNITS:
            return word[:i]
    return word


def search_words(text: str) -> list[str]:
    """The words of a query: ``words`` without repeats, and without the lone last character of a run of a
    script without spaces that its pair already asks for (``東京`` asks for ``東京``). Every one must start a
    word of a message for it to match."""
    out: list[str] = []
    for w in words(text):
        if out and len(w) == 1 and not w.isascii() and len(out[-1]) == 2 and out[-1][1] == w:
            continue
        if w not in out:
            out.append(w)
    return out


def wants_reasoning(role: str | None, reasoning: bool) -> bool:
    """Whether a search for ``role`` (None: every role) looks in reasoning: only when asked (``reasoning``),
    and only for the assistant's messages."""
    return reasoning and role in (None, "assistant")


# -- what each engine indexes ----------------------------------------------------------------------------
def index_text(text: str) -> str:
    """The words of a message for an index that cuts at spaces and keeps the rest (SQLite FTS5's ``ascii``
    tokenizer, the folder's index): ``words`` joined by spaces."""
    return " ".join(words(text[:INDEXED_CHARS]))


def tsvector(text: str) -> str:
    """The words of a message as a PostgreSQL ``tsvector`` literal, with their positions (for ``ts_rank``;
    PostgreSQL keeps at most 256 of a word's positions, each at most 16,383)."""
    at: dict[str, list[int]] = {}
    for n, w in enumerate(words(text[:INDEXED_CHARS]), 1):
        seen = at.get(w)
        if seen is None:
            at[w] = [n] if n <= 16383 else []
        elif n <= 16383:
            seen.append(n)
    return " ".join(
        f"'{w}':{p[0]}" if len(p) == 1 else f"'{w}':{','.join(map(str, p[:256]))}" if p else f"'{w}'"
        for w, p in at.items()
    )


def tsquery(query_words: list[str]) -> str:
    """``[rome, emp]`` -> ``'rome':* & 'emp':*`` (the words hold only letters, digits and marks)."""
    return " & ".join(f"'{w}':*" for w in query_words)


def mysql_word(word: str) -> str:
    """A word spelled for InnoDB's FULLTEXT parser: MYSQL_PAD, then its ASCII letters and digits as they are
    (``q`` as ``qq``), any other character as ``q`` and four base-35 digits of its code point. The spelling
    of a prefix is a prefix of the spelling, and two words are never spelled alike."""
    if word.isascii():  # (most words: every character as it is but q)
        return MYSQL_PAD + word.replace("q", "qq")
    return _mysql_spelled(word)


def _mysql_spelled(word: str) -> str:
    """``mysql_word``, a character at a time (the definition; any word)."""
    out = [MYSQL_PAD]
    for ch in word:
        if ch == "q":
            out.append("qq")
        elif ch.isascii():
            out.append(ch)
        else:
            n, digits = ord(ch), []
            for _ in range(4):
                n, d = divmod(n, 35)
                digits.append(_BASE35[d])
            out.append("q" + "".join(reversed(digits)))
    return "".join(out)


#: what comes before each word in ``mysql_text``: a space and MYSQL_PAD (no q in it)
_MYSQL_GAP = " " + MYSQL_PAD


def mysql_text(text: str) -> str:
    """The words of a message for MySQL/MariaDB's FULLTEXT index, each spelled by ``mysql_word``, each
    after a space (so ``LIKE '% word%'`` finds a word's start)."""
    found = list(words(text[:INDEXED_CHARS]))
    joined = _MYSQL_GAP.join(found)
    if joined.isascii():  # (the words spelled at once: the gaps hold no q)
        return (_MYSQL_GAP + joined).replace("q", "qq") if found else ""
    return "".join(" " + mysql_word(w) for w in found)


# -- ranking and snippets --------------------------------------------------------------------------------
def tie_break(session_id: str, position: int) -> tuple[list[int], int]:
    """The order of hits an engine ranks alike, as a sort key: the newer session first (ids sort by creation
    time; the key orders them backwards), then the earlier message (a title, -1, first)."""
    return [*(-ord(c) for c in session_id), 1], position


def word_share(text: str, query_words: list[str]) -> float:
    """How much of ``text`` is words starting with one of ``query_words``: a ranking score, 0 to 1."""
    found = list(words(text[:INDEXED_CHARS]))
    prefixes = tuple(query_words)
    return sum(1 for w in found if w.startswith(prefixes)) / (len(found) + 1)


def _matches(raw_word: str, prefixes: tuple[str, ...]) -> bool:
    if raw_word.isascii():  # (what ``words`` would make of it, without the work: the same answer)
        return raw_word.lower().startswith(prefixes)
    return any(w.startswith(prefixes) for w in words(raw_word))


def snippet(text: str, query_words: list[str], size: int = SNIPPET_WORDS) -> str:
    """About ``size`` words of ``text`` around the first word that matches one of ``query_words``, each
    such word between HIGHLIGHT markers, ``…`` where text was left out. A match in a file put in the
    message (``chatcli.attachments``) is shown as the file's name, the line number and that line
    (``[file notes/plan.md, line 12] the line``; a match in the name, as ``[file notes/plan.md]``); a
    match elsewhere, in the text around it without the files, never their fences."""
    blocks = file_blocks(text)
    if not blocks:
        return _around(text, query_words, size)
    prefixes = tuple(query_words)
    found = (
        t.start() for t in _patterns()[0].finditer(text[:INDEXED_CHARS]) if _matches(t.group(), prefixes)
    )
    at = next(found, -1)
    for b in blocks:
        if b.start <= at < b.body:
            return _around(f"[file {b.path}]", query_words, size)
        if b.body <= at < b.body_end:
            line = text[text.rfind("\n", 0, at) + 1 : text.find("\n", at)]
            number = text.count("\n", b.body, at) + 1
            return f"[file {b.path}, line {number:,}] {_around(line, query_words, size)}"
    return _around(folded(text, files=False), query_words, size)


def _around(text: str, query_words: list[str], size: int) -> str:
    """``snippet`` of plain text."""
    tokens = list(_patterns()[0].finditer(text[:INDEXED_CHARS]))
    if not tokens:
        return text[:200]
    prefixes = tuple(query_words)
    first = next((i for i, t in enumerate(tokens) if _matches(t.group(), prefixes)), 0)
    start = max(0, min(first - size // 4, len(tokens) - size))
    end = min(len(tokens), start + size)
    marked = {i for i in range(start, end) if _matches(tokens[i].group(), prefixes)}
    out = ["…" if start > 0 else text[: tokens[0].start()]]
    for i in range(start, end):
        t = tokens[i]
        out.append(f"{HIGHLIGHT[0]}{t.group()}{HIGHLIGHT[1]}" if i in marked else t.group())
        gap_end = tokens[i + 1].start() if i + 1 < len(tokens) else len(text)
        if i + 1 < end or end == len(tokens):
            out.append(text[t.end() : gap_end])
    if end < len(tokens):
        out.append("…")
    return "".join(out).strip()
