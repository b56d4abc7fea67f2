"""Synthetic sessions for the benchmarks: valid chatcli snapshots of the current format version
(``chatcli.model.VERSION``; see README, "The snapshot format"), as dicts (``snapshot``), as files
(``write_snapshot``, ``make_library``) or as ``chatcli.model.Conversation`` objects (``conversation``).

Message text is cut from a deterministic corpus of made-up words whose frequencies follow Zipf's law
(like words in real text), so full-text search meets a realistic mix of common and rare words. A few
words are planted at known rates for the search benchmark (``PLANTED``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

from chatcli.model import FORMAT, VERSION, Conversation

VOCABULARY = 20_000
_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "ta",
    "vo",
    "shi",
    "pe",
    "da",
    "zu",
    "ri",
    "fa",
    "go",
    "te",
    "ma",
    "nu",
    "sa",
    "be",
    "ko",
    "li",
    "po",
    "re",
    "ho",
    "ju",
    "wi",
    "xe",
    "yo",
    "ce",
    "qua",
]
#: word -> fraction of messages that hold it, planted on top of the corpus for the search benchmark
PLANTED = {"quorvex": 0.01, "plimbert": 0.0001}


def _words(n: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class Corpus:
    """A long text of Zipf-distributed words; ``text(n)`` is a slice of about ``n`` characters."""

    def __init__(self, seed: int = 7, chars: int = 4_000_000) -> None:
        self.rng = random.Random(seed)
        self.words = words = _words(VOCABULARY, self.rng)  # most frequent first
        weights = [1.0 / (rank + 1) for rank in range(len(words))]
        picked = self.rng.choices(words, weights, k=chars // 6)
        parts: list[str] = []
        for i, w in enumerate(picked):
            parts.append(w)
            parts.append(".\n\n" if i % 97 == 96 else ", " if i % 13 == 12 else ". " if i % 17 == 16 else " ")
        self.body = "".join(parts)

    def text(self, n: int) -> str:
        start = self.rng.randrange(0, len(self.body) - n - 20)
        start = self.body.find(" ", start) + 1
        end = self.body.find(" ", start + n)
        words = self.body[start:end]
        for word, rate in PLANTED.items():
            if self.rng.random() < rate:
                words = f"{words} {word}"
        return words.capitalize()


def _stamp(seconds: int) -> str:
    """A UTC ISO 8601 time ``seconds`` after 2026-01-01 (plain arithmetic: fast for a million messages)."""
    day, rest = divmod(seconds, 86_400)
    month, mday = divmod(day, 28)
    return (
        f"2026-{month % 12 + 1:02d}-{mday + 1:02d}T{rest // 3600:02d}:{rest // 60 % 60:02d}:"
        f"{rest % 60:02d}.000Z"
    )


def messages(corpus: Corpus, n: int, chars: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` messages (user, assistant, ...) of about ``chars`` characters, as stored in a snapshot."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        when = _stamp(start + i * 7)
        if i % 2 == 0:
            out.append({"role": "user", "content": corpus.text(chars), "created_at": when, "status": "ok"})
        else:
            out.append(
                {
                    "role": "assistant",
                    "content": corpus.text(chars),
                    "created_at": when,
                    "status": "ok",
                    "finish_reason": "stop",
                    "model": "bench-model",
                    "usage": {
                        "prompt_tokens": 40 * i + 30,
                        "completion_tokens": chars // 4,
                        "cached_tokens": 40 * i,
                    },
                    "timings": {"ttft_s": 0.21, "duration_s": 1.9, "tokens_per_second": 65.5, "server": None},
                }
            )
    return out


def snapshot(session_id: str, msgs: list[dict[str, Any]], title: str, start: int = 0) -> dict[str, Any]:
    """A snapshot of the current format version (``chatcli.model.VERSION``) holding ``msgs``: text-only
    messages, written with ``content`` as that version writes them."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "id": session_id,
        "title": title,
        "created_at": _stamp(start),
        "updated_at": _stamp(start + 7 * len(msgs)),
        "backend": "openai",
        "model": "bench-model",
        "base_url": "http://127.0.0.1:9/v1",
        "params": {},
        "system": "",
        "context_start": 0,
        "messages": msgs,
    }


def conversation(session_id: str, msgs: list[dict[str, Any]], title: str, start: int = 0) -> Conversation:
    """``snapshot(...)`` read as a ``Conversation`` (validated by ``Conversation.from_json``): what a store's
    ``create`` and ``save`` and ``ConversationSession`` take. Build it outside any timed region."""
    return Conversation.from_json(
        snapshot(session_id, msgs, title, start), where=f"bench session {session_id}"
    )


def write_snapshot(folder: Path, snap: dict[str, Any]) -> Path:
    """Write ``snap`` as chatcli does (orjson, 2-space indent), without fsync: this is test data."""
    path = folder / f"{snap['id']}.json"
    path.write_bytes(orjson.dumps(snap, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)
    return path


def session_id(i: int) -> str:
    """The i-th benchmark id: valid, sortable, distinct (``20260101-000000-b0001``)."""
    return f"2026{(i // 2000) % 12 + 1:02d}{(i // 100) % 20 + 1:02d}-{i % 24:02d}{i % 60:02d}00-b{i:05d}"


def make_library(folder: Path, sessions: int, per_session: int, chars: int, seed: int = 11) -> int:
    """``sessions`` snapshot files of ``per_session`` messages each in ``folder``; returns the bytes
    written."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    corpus = Corpus(seed)
    total = 0
    for i in range(sessions):
        start = i * 3_600
        msgs = messages(corpus, per_session, chars, start)
        title = corpus.text(30)[:60]
        total += write_snapshot(folder, snapshot(session_id(i), msgs, title, start)).stat().st_size
    return total
