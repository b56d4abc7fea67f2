"""Search as every store does it: how a query becomes words (folded: case and accents ignored), how a
match is ranked when the engine cannot (``word_share``), and the snippet shown with each hit. No I/O."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


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


SEARCH_WINDOW = 5_000  # matches ranked by a search: the most recent ones
HIGHLIGHT = ("\x02", "\x03")  # start/end of a match inside SearchHit.snippet (never in stored text shown raw)
SNIPPET_WORDS = 16


def fold(text: str) -> str:
    """``text`` lower-cased with accents removed (``Élan`` -> ``elan``), as search compares words."""
    text = text.lower()
    if text.isascii():
        return text
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def search_words(text: str) -> list[str]:
    """The words of a query, folded: runs of letters and digits (``"Rome's empire!"`` -> rome, s, empire).
    Every word must start a word of a message for it to match."""
    return "".join(ch if ch.isalnum() else " " for ch in fold(text)).split()


_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, as the engines' tokenizers cut words


def word_share(text: str, words: list[str]) -> float:
    """How much of ``text`` is words starting with one of ``words`` (folded): a ranking score, 0 to 1."""
    tokens = _WORD.findall(fold(text))
    return sum(1 for t in tokens if t.startswith(tuple(words))) / (len(tokens) + 1)


def snippet(text: str, words: list[str], size: int = SNIPPET_WORDS) -> str:
    """About ``size`` words of ``text`` around the first word that starts with one of ``words`` (folded),
    each such word between HIGHLIGHT markers, ``…`` where text was left out."""
    tokens = list(_WORD.finditer(text))
    hits = [i for i, t in enumerate(tokens) if any(fold(t.group()).startswith(w) for w in words)]
    if not tokens:
        return text[:200]
    first = hits[0] if hits else 0
    start = max(0, min(first - size // 4, len(tokens) - size))
    end = min(len(tokens), start + size)
    marked = set(hits)
    out = ["…" if start > 0 else text[: tokens[0].start()]]
    for i in range(start, end):
        t = tokens[i]
        word = t.group()
        out.append(f"{HIGHLIGHT[0]}{word}{HIGHLIGHT[1]}" if i in marked else word)
        gap_end = tokens[i + 1].start() if i + 1 < len(tokens) else len(text)
        if i + 1 < end or end == len(tokens):
            out.append(text[t.end() : gap_end])
    if end < len(tokens):
        out.append("…")
    return "".join(out).strip()
