"""What is true of a stored session wherever it is stored, beside the model itself (``chatcli.model``: the
header, the messages, the snapshot codec): session ids, the snapshot file's bytes (``decode``, ``dumps``),
turns and the counts shown by ``list`` and ``stats``, and how a typed reference becomes an id
(``resolve``); search words and snippets are in ``chatcli.search``. It does no I/O.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import orjson

from chatcli.errors import AmbiguousSessionId, InvalidSessionId, SessionNotFound, SnapshotError
from chatcli.messages import MAX_MESSAGE_BYTES
from chatcli.model import Conversation, Message

# -- ids ---------------------------------------------------------------------------------------------------
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")  # \Z: "$" would let a trailing "\n" through
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_session_id(now: float | None = None) -> str:
    """A new id: ``YYYYMMDD-HHMMSS-xxxx`` (UTC time + 4 random base32 characters).

    Ids sort by creation time and are safe as file names on every platform."""
    t = time.gmtime(time.time() if now is None else now)
    rand = "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
    return time.strftime("%Y%m%d-%H%M%S", t) + "-" + rand


def is_valid_id(text: object) -> bool:
    """Whether ``text`` can name a session (see validate_id)."""
    return isinstance(text, str) and ID_RE.match(text) is not None


def validate_id(text: str) -> str:
    """Return ``text`` if it can name a session, else raise InvalidSessionId.

    Accepted: 1-64 characters of ``A-Z a-z 0-9 _ -``, starting with a letter or digit. That rules out
    ``/``, ``..``, NUL, spaces and every other character before a file system or a database is touched."""
    if not is_valid_id(text):
        raise InvalidSessionId(
            f"{shown(text)} is not a session id: ids are letters, digits, '-' and '_' (see `chatcli list`)"
        )
    return text


def shown(text: object) -> str:
    """What a user typed, quoted and cut to 40 characters for an error message."""
    return repr(text[:40] + ("..." if len(text) > 40 else "")) if isinstance(text, str) else repr(text)


# -- the snapshot file ---------------------------------------------------------------------------------------
def over_limit(conv: Conversation) -> str | None:
    """Why ``conv`` holds more than chatcli keeps on every store (its system prompt or a message over
    ``MAX_MESSAGE_BYTES``), or None when it fits."""
    from chatcli.errors import SizeLimitError
    from chatcli.messages import check_size

    try:
        check_size(conv.header.system, "its system prompt")
        for i, m in enumerate(conv.messages):
            check_size(m.content, f"message {i}")
    except SizeLimitError as e:
        return (
            str(e).split(";")[0] + f" (the most any store keeps of one is {MAX_MESSAGE_BYTES // 2**20} MiB)"
        )
    return None


def decode(raw: bytes, where: Path | str) -> Conversation:
    """A session from its snapshot's JSON bytes, validated (``Conversation.from_json``). Raises
    SnapshotError naming ``where``."""
    if not raw.strip():
        raise SnapshotError(f"{where} is empty (damaged)", where)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SnapshotError(f"{where} is not valid JSON (damaged or truncated)", where) from None
    return Conversation.from_json(data, where)


def dumps(snapshot: Mapping[str, Any]) -> bytes:
    """A snapshot (``Conversation.to_json``, or any JSON object) as indented UTF-8 JSON. Text that is not
    valid Unicode (lone surrogates, e.g. from undecodable bytes on stdin) is written with U+FFFD in its
    place instead of failing."""
    try:
        return orjson.dumps(snapshot, option=orjson.OPT_INDENT_2)
    except TypeError:
        return orjson.dumps(valid_unicode(snapshot), option=orjson.OPT_INDENT_2)


def valid_unicode(value: Any) -> Any:
    """``value`` (a str, or dicts and lists of them) with text that is not valid Unicode repaired: bytes
    that were decoded with ``surrogateescape`` and lone surrogates become U+FFFD. Other values pass as
    they are."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # a lone surrogate that stands for no byte: one U+FFFD each
            return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, dict):
        return {valid_unicode(k): valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_unicode(v) for v in value]
    return value


def title_from(text: str, limit: int = 60) -> str:
    """A title from a user message: the whole text on one line (line breaks and runs of whitespace become
    one space, control characters are dropped), cut at a word boundary near ``limit`` characters."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut + "…"


# -- turns and counts --------------------------------------------------------------------------------------
def is_turn(m: Message) -> bool:
    """Whether a message starts a turn: a user message that was not dropped (a turn taken back by ``undo``
    is no turn). Turns are numbered from 1 by counting these (``Message.starts_turn``)."""
    return m.starts_turn


def turns_before(starts_turn: Iterable[bool]) -> list[int]:
    """From each message's "starts a turn" flag (``is_turn``), the list whose item ``i`` is the number of
    turns that start before message ``i``: one item more than there are messages."""
    out = [0]
    for flag in starts_turn:
        out.append(out[-1] + flag)
    return out


def turn_span(before: list[int], start: int, end: int) -> tuple[int, int] | None:
    """The turns (first, last), numbered from 1, of the messages ``[start, end)`` (``before`` as from
    ``turns_before``): the turns a request that began at message ``end`` left out after a clear at
    ``start``, or the turns a summary of ``[start, end)`` stands for. None when the span holds no turn."""
    n = len(before) - 1
    first, last = before[max(0, min(start, n))] + 1, before[max(0, min(end, n))]
    return (first, last) if first <= last else None


def clear_before(cuts: Iterable[int], start: int) -> int:
    """Where the conversation began for a request that started at message ``start``: the latest of the
    cuts (the session's ``clears`` and its ``context_start``) at or before it, else 0. A later clear does not
    change what that request left out."""
    return max([0, *(c for c in cuts if c <= start)])


def span_text(span: tuple[int, int]) -> str:
    """``turn 3`` or ``turns 1–4``."""
    first, last = span
    return f"turn {first}" if first == last else f"turns {first}–{last}"


# -- counts --------------------------------------------------------------------------------------------------
class Counts(NamedTuple):
    """What messages add to a session's figures. Dropped messages (replaced by ``retry``, taken back by
    ``undo``) count for nothing: they are kept, not part of the conversation."""

    messages: int = 0
    user_messages: int = 0
    assistant_messages: int = 0
    characters: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def plus(self, other: Counts) -> Counts:
        """Field by field sum."""
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))

    def minus(self, other: Counts) -> Counts:
        """Field by field difference."""
        return Counts(*(a - b for a, b in zip(self, other, strict=True)))


NO_COUNTS = Counts()
_MAX_COUNT = 2**48  # a token count beyond this is damage, not usage: counted as 0 (and fits every database)


def message_counts(m: Message) -> Counts:
    """The counts one message adds."""
    if m.dropped is not None:
        return NO_COUNTS
    u = m.usage
    tokens = (
        (0, 0, 0)
        if u is None
        else tuple(_count(v) for v in (u.prompt_tokens, u.completion_tokens, u.cached_tokens))
    )
    return Counts(
        1,
        int(m.role == "user"),  # not dropped: a turn (is_turn)
        int(m.role == "assistant"),
        len(m.content),
        *tokens,
    )


def _count(v: int | None) -> int:
    return v if v is not None and 0 <= v < _MAX_COUNT else 0


def summarize(conv: Conversation) -> Counts:
    """The counts of a whole session; its turns are ``user_messages``."""
    return total_of([message_counts(m) for m in conv.messages])


def total_of(counts: list[Counts]) -> Counts:
    """The sum of many counts."""
    return Counts(*map(sum, zip(*counts, strict=True))) if counts else NO_COUNTS


@dataclass(frozen=True)
class SessionSummary:
    """One row of ``chatcli list``: fields from the snapshot, ``turns`` = user messages, ``messages`` and
    ``tokens`` (prompt + completion) over the messages not dropped; ``location`` is where the session is
    kept (a file path, or the store's address)."""

    id: str
    title: str
    backend: str
    model: str
    turns: int
    messages: int
    created_at: str
    updated_at: str
    location: str
    tokens: int = 0

    #: the columns ``from_columns`` reads, in order, as the catalogs select them
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "id",
        "title",
        "backend",
        "model",
        "turns",
        "messages",
        "created_at",
        "updated_at",
        "prompt_tokens",
        "completion_tokens",
    )

    @classmethod
    def of(cls, conv: Conversation, location: str) -> SessionSummary:
        """The ``list`` row of a session kept at ``location``."""
        c, h = summarize(conv), conv.header
        return cls(
            id=h.id,
            title=h.title,
            backend=h.backend,
            model=h.model,
            turns=c.user_messages,
            messages=c.messages,
            created_at=h.created_at,
            updated_at=h.updated_at,
            location=location,
            tokens=c.prompt_tokens + c.completion_tokens,
        )

    @classmethod
    def from_columns(cls, r: Any, location: str) -> SessionSummary:
        """A summary from a catalog row of COLUMNS."""
        return cls(
            id=r[0],
            title=r[1],
            backend=r[2],
            model=r[3],
            turns=int(r[4]),
            messages=int(r[5]),
            created_at=r[6],
            updated_at=r[7],
            location=location,
            tokens=int(r[8] or 0) + int(r[9] or 0),
        )


@dataclass(frozen=True)
class DamagedFile:
    """Something in a store that could not be read as a session: ``location`` (a path) and ``reason``."""

    location: str
    reason: str

    @property
    def message(self) -> str:
        """The reason, naming the location once (a snapshot error's reason starts with its path)."""
        return self.reason if self.location in self.reason else f"{self.location}: {self.reason}"


# -- resolving what a user typed -------------------------------------------------------------------------
class Lookup(Protocol):
    """What ``resolve`` needs of a store."""

    display: str  # the store as shown to users (a folder, or an address with its password masked)

    def ids(self) -> list[str]:
        """Every live session's id, in id order (oldest first)."""
        ...

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        """Whether a live session (or one in the trash) has exactly this id."""
        ...

    def newest_id(self) -> str | None:
        """The most recently updated session's id (None: no sessions)."""
        ...

    def ids_titled(self, title: str) -> list[str]:
        """Ids of the sessions whose title is exactly ``title``, newest update first."""
        ...


def resolve(store: Lookup, ref: str) -> str:
    """Turn what a user typed into an existing id: a full id, a unique prefix, a unique prefix of the id's
    last part (``0mj0`` for ``20261126-015053-0mj0``), ``last`` (the most recently updated session) or an
    exact title. Raises InvalidSessionId, SessionNotFound or AmbiguousSessionId, each saying what exists."""
    ref = ref.strip() if isinstance(ref, str) else ref
    if ref == "last":
        newest = store.newest_id()
        if newest is None:
            raise SessionNotFound(
                f"there are no sessions in {store.display} yet; start one with `chatcli new`"
            )
        return newest
    if is_valid_id(ref) and store.exists(ref):  # the common case, one look-up: a whole id
        return ref
    ids = store.ids()
    if is_valid_id(ref):
        matches = [i for i in ids if i.startswith(ref)]
        if not matches:  # the random last part, e.g. `0mj0` of 20261126-015053-0mj0, or its start
            matches = [i for i in ids if i.rpartition("-")[2].startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listed = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
            raise AmbiguousSessionId(
                f"{ref!r} matches {len(matches)} sessions: {listed}; type more of the id"
            )
    # An exact title (titles may hold spaces, so this comes after the id checks).
    if isinstance(ref, str) and ref and "\x00" not in ref:
        titled = store.ids_titled(ref)
        if len(titled) == 1:
            return titled[0]
        if len(titled) > 1:
            raise AmbiguousSessionId(f"{len(titled)} sessions are titled {ref!r}: {', '.join(titled[:5])}")
    if not is_valid_id(ref):
        raise InvalidSessionId(
            f"{shown(ref)} is not a session id (letters, digits, '-' and '_') nor the exact "
            "title of one (case counts); see `chatcli list`"
        )
    if not ids:
        raise SessionNotFound(f"no session {ref!r}: there are no sessions in {store.display} yet")
    recent = ", ".join(ids[-3:][::-1])
    raise SessionNotFound(
        f"no session {ref!r} in {store.display} ({len(ids)} exist, newest: {recent}); see `chatcli list`"
    )
