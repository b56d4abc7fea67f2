"""The snapshot: the engine-agnostic form of one session, as every store reads and writes it.

A snapshot is a JSON object (README, "The snapshot format"), typed once as ``Snapshot`` below; its
messages are ``chatcli.messages.MessageJSON``. Keys chatcli does not know are kept as they are.

This module holds what is true of a snapshot wherever it is stored: its fields and their validation, the
format version and its upgrades, session ids, turns and the counts shown by ``list`` and ``stats``, and
how a typed reference becomes an id (``resolve``); search words and snippets are in ``chatcli.search``.
It does no I/O.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, Required, TypedDict, cast

import orjson

from chatcli.errors import AmbiguousSessionId, InvalidSessionId, SessionNotFound, SnapshotError
from chatcli.messages import MAX_MESSAGE_BYTES, MessageJSON


class Snapshot(TypedDict, total=False):
    """A decoded snapshot: one session as every store reads and writes it (the fields in this module's
    docstring). Keys outside ``KNOWN_KEYS`` are kept at run time, so a snapshot read back equals the one
    saved; they are not part of this type."""

    format: Required[str]  # FORMAT
    version: Required[int]  # 1..VERSION (older ones are upgraded on reading)
    id: Required[str]  # see validate_id
    title: Required[str]
    created_at: Required[str]  # UTC ISO 8601
    updated_at: Required[str]  # UTC ISO 8601
    backend: Required[str]  # "local", "openai", "ollama"
    model: Required[str]
    params: Required[dict[str, Any]]  # GenerationParams.to_json: temperature, top_p, max_tokens, ...
    system: Required[str]  # the system prompt, "" for none
    context_start: Required[int]  # 0..len(messages): messages before it were cleared
    messages: Required[Sequence[MessageJSON]]  # a list when read; a save may pass a lazy sequence
    base_url: str  # the server's URL without credentials
    model_path: str  # the GGUF file of the local backend
    clears: list[int]  # earlier context_start values, for `clear undo`
    changes: list[
        dict[str, Any]
    ]  # model/system/title changes: at (message index), what, from, to, created_at
    context_window: int  # tokens, as a server's overflow error stated it


FORMAT = "chatcli.session"
VERSION = 1
#: upgrades of the format: MIGRATIONS[n] turns a version-n snapshot (decoded JSON, not yet validated) into a
#: version n+1 one. Version 1 is the only version so far; a new version adds its function here, with
#: before/after fixtures in the tests.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

#: top-level keys chatcli itself writes; any other key in a snapshot is kept as it is
KNOWN_KEYS = frozenset(
    {
        "format",
        "version",
        "id",
        "title",
        "created_at",
        "updated_at",
        "backend",
        "model",
        "base_url",
        "model_path",
        "params",
        "system",
        "context_start",
        "messages",
        "clears",
        "changes",
        "context_window",
    }
)
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "title": str,
    "created_at": str,
    "updated_at": str,
    "backend": str,
    "model": str,
    "params": dict,
    "system": str,
    "messages": list,
    "context_start": int,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "base_url": str,
    "model_path": str,
    "clears": list,
    "changes": list,
    "context_window": int,
}
ROLES = ("user", "assistant", "system")

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


# -- validation and upgrades -------------------------------------------------------------------------------
def validate_snapshot(data: Any, where: Path | str = "<snapshot>") -> Snapshot:
    """Check the shape of a decoded snapshot and return it, upgraded to ``VERSION`` if older.

    ``where`` names it in messages (a path, or a store and id). Raises SnapshotError (``path`` = ``where``)
    when the data is not a chatcli session, comes from a newer chatcli, or has fields of the wrong type."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{where} is not a chatcli session file", where)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SnapshotError(f"{where} has no valid format version", where)
    if version > VERSION:
        raise SnapshotError(
            f"{where} was written by a newer chatcli (format version {version}; "
            f"this one reads up to {VERSION}): upgrade chatcli to open it",
            where,
        )
    while data["version"] < VERSION:
        data = MIGRATIONS[data["version"]](data)
    for key, typ in _REQUIRED.items():
        value = data.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise SnapshotError(f"{where} is damaged: field {key!r} is missing or of the wrong type", where)
    for key, typ in _OPTIONAL.items():
        if key in data and not isinstance(data[key], typ):
            raise SnapshotError(f"{where} is damaged: field {key!r} is of the wrong type", where)
    for i, m in enumerate(data["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise SnapshotError(f"{where} is damaged: message {i} is not a valid message", where)
    if not 0 <= data["context_start"] <= len(data["messages"]):
        raise SnapshotError(f"{where} is damaged: context_start is out of range", where)
    return cast("Snapshot", data)


def over_limit(snap: Snapshot) -> str | None:
    """Why ``snap`` holds more than chatcli keeps on every store (its system prompt or a message over
    ``MAX_MESSAGE_BYTES``), or None when it fits."""
    from chatcli.errors import SizeLimitError
    from chatcli.messages import check_size

    try:
        check_size(snap["system"], "its system prompt")
        for i, m in enumerate(snap["messages"]):
            check_size(m["content"], f"message {i}")
    except SizeLimitError as e:
        return (
            str(e).split(";")[0] + f" (the most any store keeps of one is {MAX_MESSAGE_BYTES // 2**20} MiB)"
        )
    return None


def decode(raw: bytes, where: Path | str) -> Snapshot:
    """A snapshot from its JSON bytes, validated. Raises SnapshotError naming ``where``."""
    if not raw.strip():
        raise SnapshotError(f"{where} is empty (damaged)", where)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SnapshotError(f"{where} is not valid JSON (damaged or truncated)", where) from None
    return validate_snapshot(data, where)


def dumps(snapshot: Mapping[str, Any]) -> bytes:
    """The snapshot as indented UTF-8 JSON. Text that is not valid Unicode (lone surrogates, e.g. from
    undecodable bytes on stdin) is written with U+FFFD in its place instead of failing."""
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
def is_turn(m: MessageJSON) -> bool:
    """Whether a message (a snapshot message dict) starts a turn: a user message that was not dropped (a
    turn taken back by ``undo`` is no turn). Turns are numbered from 1 by counting these."""
    return m.get("role") == "user" and m.get("dropped") is None


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


def message_counts(m: MessageJSON) -> Counts:
    """The counts one message (a snapshot message dict) adds."""
    if m.get("dropped") is not None:
        return NO_COUNTS
    role = m.get("role")
    usage = m.get("usage")
    tokens = [0, 0, 0]
    if isinstance(usage, dict):
        for k, key in enumerate(("prompt_tokens", "completion_tokens", "cached_tokens")):
            v = usage.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_COUNT:
                tokens[k] = v
    content = m.get("content")
    return Counts(
        1,
        int(role == "user"),  # not dropped: a turn (is_turn)
        int(role == "assistant"),
        len(content) if isinstance(content, str) else 0,
        *tokens,
    )


def summarize(snapshot: Snapshot) -> Counts:
    """The counts of a whole snapshot; its turns are ``user_messages``."""
    return total_of([message_counts(m) for m in snapshot["messages"]])


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
    def of(cls, snap: Snapshot, location: str) -> SessionSummary:
        """The ``list`` row of a validated snapshot kept at ``location``."""
        c = summarize(snap)
        return cls(
            id=snap["id"],
            title=snap["title"],
            backend=snap["backend"],
            model=snap["model"],
            turns=c.user_messages,
            messages=c.messages,
            created_at=snap["created_at"],
            updated_at=snap["updated_at"],
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
