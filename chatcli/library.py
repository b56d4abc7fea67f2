"""The session library: rename, trash/restore/purge, prune, export, import, fork and migrate, on top of the
Store protocol (``chatcli.stores.base``), so every engine behaves the same. A session open in a REPL is
never changed: each change takes the session's writer lock first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from chatcli.clock import iso, utc_ago, utc_now
from chatcli.errors import (
    ConfigError,
    ImportFileError,
    SessionExists,
    SessionNotFound,
    SnapshotError,
)
from chatcli.messages import DROPPED, STATUSES, GenerationParams
from chatcli.model import FORMAT, Conversation, Header, Message
from chatcli.snapshot import (
    is_valid_id,
    new_session_id,
    over_limit,
    resolve,
    shown,
    title_from,
    valid_unicode,
)
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.stores.base import SessionStore, Store


def check_title(title: str) -> str:
    """``title`` stripped, or ConfigError if it holds control characters or is too long (200)."""
    if any(not ch.isprintable() for ch in title):
        raise ConfigError("a title cannot hold control characters or line breaks")
    title = title.strip()
    if len(title) > 200:
        raise ConfigError(f"a title can be at most 200 characters (this one has {len(title)})")
    return title


def rename(store: Store, sid: str, title: str) -> None:
    """Set a session's title. Raises SessionLocked, SessionNotFound, SnapshotError, ConfigError, SaveError."""
    title = check_title(title)
    lock = store.lock(sid)
    try:
        conv = store.load(sid)
        conv.header.title = title
        conv.header.updated_at = utc_now()
        store.save(conv, changed_from=len(conv.messages))
    finally:
        lock.release()


class _Trash:
    """The trash of a store, as ``resolve`` looks ids up (there are no titles or ``last`` in it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.display = f"the trash of {store.display}"

    def ids(self) -> list[str]:
        return self.store.trashed_ids()

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        return self.store.exists(session_id, trashed=True)

    def newest_id(self) -> str | None:
        return None

    def ids_titled(self, title: str) -> list[str]:
        return []


def resolve_trashed(store: Store, ref: str) -> str:
    """An id in the trash from a full id or unique prefix (as ``chatcli.snapshot.resolve``)."""
    trash = _Trash(store)
    try:
        return resolve(trash, ref)
    except SessionNotFound:
        raise SessionNotFound(f"no session {ref!r} in {trash.display}") from None


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w`` as a timedelta; ConfigError otherwise."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    t = text.strip().lower()
    if len(t) >= 2 and t[-1] in units and t[:-1].isascii() and t[:-1].isdigit():
        try:
            age = timedelta(**{units[t[-1]]: int(t[:-1])})
            utc_ago(age)  # an age before year 1 is no age either
            return age
        except (OverflowError, ValueError):
            raise ConfigError(
                f"{text!r} reaches back before the calendar begins: give a shorter age"
            ) from None
    raise ConfigError(f"{shown(text)} is not an age: use a number and a unit, e.g. 30d, 12h, 2w, 90m")


def parse_date(text: str) -> str:
    """A date or time the user typed (``2026-11-01``, ``2026-11-01T10:00``, or an age like ``7d``) as a
    UTC ISO 8601 string for comparisons. ConfigError otherwise."""
    t = text.strip()
    try:
        return utc_ago(parse_age(t))
    except ConfigError:
        pass
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{shown(text)} is not a date: use YYYY-MM-DD, YYYY-MM-DDTHH:MM or an age like 7d"
        ) from None
    try:
        if when.tzinfo is None:
            when = when.astimezone()  # a date typed by a person is in their local time
        return iso(when)
    except (OverflowError, ValueError):  # the first or last hours of the calendar, in UTC
        return "0001-01-01T00:00:00.000Z" if when.year == 1 else "9999-12-31T23:59:59.999Z"


def older_than(store: Store, age: timedelta) -> list[str]:
    """Ids of sessions last updated more than ``age`` ago (damaged files are left alone)."""
    return [r.id for r in store.page(before=utc_ago(age)).rows]


# -- import ----------------------------------------------------------------------------------------------
SPOOLED = "chatcli session kept locally"  # what import_file says of a spool file it read


def import_file(store: Store, path: Path) -> tuple[str, str]:
    """Import a chatcli snapshot (or a spool file), an OpenAI-style ``{"messages": [...]}``, a plain list of
    messages, or JSON Lines of messages, as a new session. Returns (new id, what it was). Never overwrites:
    a snapshot whose id is taken gets a new id. Raises ImportFileError naming the file and what is wrong."""
    try:
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is no content
    except OSError as e:
        raise ImportFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _standard_json(raw)  # numbers beyond 64 bits, lone surrogates: JSON orjson does not take
        if data is None:
            data = _try_jsonl(raw, path)
    kind = "chatcli session"
    if isinstance(data, dict) and data.get("format") == "chatcli.spool":
        data, kind = data.get("snapshot"), SPOOLED
    if isinstance(data, dict) and data.get("format") == FORMAT:
        try:
            conv = Conversation.from_json(data, path)
        except SnapshotError as e:
            raise ImportFileError(str(e)) from None
        sid = conv.id
        if not is_valid_id(sid) or store.exists(sid) or store.exists(sid, trashed=True):
            conv.header.id = new_session_id()
    else:
        if isinstance(data, dict) and isinstance(data.get("messages"), list):
            messages, kind = data["messages"], "OpenAI-style messages"
        elif isinstance(data, list):
            messages, kind = data, "list of messages"
        else:
            raise ImportFileError(
                f'{path} is neither a chatcli session, an object with a "messages" list, '
                f"nor a list of messages"
            )
        conv = _from_messages(messages, path, data if isinstance(data, dict) else {})
    _check_import(conv, path)
    conv.header.updated_at = utc_now()
    lock = store.lock(conv.id)
    try:
        store.create(conv)
    except SessionExists:
        raise ImportFileError(f"session {conv.id} already exists; nothing was imported") from None
    finally:
        lock.release()
    return conv.id, kind


def _check_import(conv: Conversation, path: Path) -> None:
    """Refuse what chatcli itself would never write, as the REPL and ``rename`` refuse it: a title with
    control characters or over 200 characters, sampling parameters of the wrong type or out of range, a
    message status chatcli does not know, token counts that are not counts, a message over the size
    limit. Raises ImportFileError naming the file and the field."""
    try:
        check_title(conv.header.title)
    except ConfigError as e:
        raise ImportFileError(f"{path}: the title is refused: {e}") from None
    problem = GenerationParams.json_problem(conv.header.params)
    if problem is not None:
        raise ImportFileError(f"{path}: params: {problem}")
    why = over_limit(conv)
    if why is not None:
        raise ImportFileError(f"{path}: {why}")
    for i, m in enumerate(message.to_json() for message in conv.messages):  # (as the file has them)
        if m.get("status", "ok") not in STATUSES or m.get("dropped") not in (None, *DROPPED):
            field_ = "status" if m.get("status", "ok") not in STATUSES else "dropped"
            raise ImportFileError(
                f"{path}: message {i} has a {field_} chatcli does not know: {m.get(field_)!r}"
            )
        usage = m.get("usage")
        if isinstance(usage, dict) and any(
            v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**48)
            for v in usage.values()
        ):
            raise ImportFileError(
                f"{path}: message {i} has token counts that are not counts: {usage!r}"[:300]
            )


def _standard_json(raw: bytes) -> Any:
    """``raw`` read by the standard library's JSON reader (None when that fails too)."""
    import json

    try:
        return valid_unicode(json.loads(raw))
    except ValueError:
        return None


def _try_jsonl(raw: bytes, path: Path) -> Any:
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise ImportFileError(
                f"{path} is not JSON (nor JSON Lines: line {n} is not valid JSON)"
            ) from None
    if not rows:
        raise ImportFileError(f"{path} is empty")
    return rows


def _from_messages(messages: list[Any], path: Path, extra: dict[str, Any]) -> Conversation:
    """A new session from OpenAI chat-format messages (``chatcli.wire.from_openai``: ``content`` as text
    or text parts, ``reasoning_content``, ``tool_calls``, role ``tool``); system messages become the
    system prompt."""
    from chatcli.wire import from_openai

    system_parts: list[str] = []
    chat: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ImportFileError(f"{path}: message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        text_ok = isinstance(content, (str, list)) or (content is None and bool(m.get("tool_calls")))
        if role not in ("system", "user", "assistant", "tool") or not text_ok:
            raise ImportFileError(
                f"{path}: message {i} needs a role (system, user, assistant or tool) and text content"
            )
        if role == "system":
            system_parts.append(from_openai([m])[0].content)
        else:
            chat.append(m)
    try:
        out = from_openai(chat)
    except (ValueError, TypeError, AttributeError):
        raise ImportFileError(f"{path}: a message's tool calls are not of the OpenAI shape") from None
    now = utc_now()
    for m in out:
        m.created_at = now
    if not out:
        raise ImportFileError(f"{path} holds no user or assistant messages")
    title = extra.get("title") if isinstance(extra.get("title"), str) else ""
    first_user = next((m.content for m in out if m.role == "user"), "")
    model = extra["model"] if isinstance(extra.get("model"), str) else "imported"
    header = Header(
        id=new_session_id(),
        title=str(title or title_from(first_user)),
        created_at=now,
        updated_at=now,
        backend="openai",
        model=model,
        base_url="",
        system="\n\n".join(system_parts),
    )
    return Conversation(header, out)


# -- fork ------------------------------------------------------------------------------------------------
def fork(store: SessionStore, conv: Conversation, at_turn: int | None = None) -> str:
    """A new session holding the first ``at_turn`` turns of ``conv`` (all when None); returns its id."""
    messages = conv.messages
    cut = len(messages)
    if at_turn is not None:
        if at_turn < 0:
            raise ConfigError("--at must be 0 or more turns")
        turn = 0
        for i, m in enumerate(messages):
            if m.starts_turn:
                turn += 1
                if turn > at_turn:
                    cut = i
                    break
        if turn < at_turn:
            raise ConfigError(
                f"session {conv.id} has only {count(turn, 'turn')}; --at {at_turn} is past its end"
            )
    h = conv.header
    changes = [c for c in h.change_list() if isinstance(c.get("at"), int)]
    now = utc_now()
    new = replace(
        h,
        id=new_session_id(),
        created_at=now,
        updated_at=now,
        context_start=min(h.context_start, cut),
        title=(h.title + " (fork)") if h.title else "",
        extra={**h.extra, "forked_from": h.id},
    )
    for c in reversed(changes):  # settings as they were at the cut: undo the changes made after it
        if c["at"] > cut and c.get("what") in ("model", "system") and isinstance(c.get("from"), str):
            setattr(new, c["what"], c["from"])
    new.changes = [c for c in changes if c["at"] <= cut] or None
    new.clears = [c for c in h.clear_list() if c <= new.context_start] or None
    copied = [Message.from_json(m.to_json()) for m in messages[:cut]]
    lock = store.lock(new.id)
    try:
        store.create(Conversation(new, copied))
    finally:
        lock.release()
    return new.id


# -- migrate ---------------------------------------------------------------------------------------------
@dataclass
class MigrationReport:
    """What ``migrate`` did: ids ``copied``, already there and equal (``same``), there with other content
    (``differs``: never overwritten), entries of the source that could not be read (``damaged``:
    (where, why)), and sessions holding more than every store keeps (``too_large``: (id, why); not
    copied, see ``snapshot.over_limit``)."""

    copied: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)
    too_large: list[tuple[str, str]] = field(default_factory=list)


#: sessions written per transaction by ``migrate`` (and characters of text at most, whichever comes first)
BATCH_SESSIONS = 200
BATCH_CHARS = 8_000_000


def migrate(
    src: Store,
    dst: Store,
    *,
    dry_run: bool = False,
    on_session: Callable[[int, int], None] | None = None,
    report: MigrationReport | None = None,
) -> MigrationReport:
    """Copy every session of ``src``, the trash included (it stays in the trash), into ``dst``, losslessly:
    each snapshot arrives field by field as it was, unknown keys too. A session already in ``dst`` is left
    alone: reported as ``same`` when equal, ``differs`` when not (live in one and trashed in the other
    differs too); one holding a message larger than every store keeps is reported as ``too_large``, in a
    dry run too. With ``dry_run`` nothing is written. Sessions are written in batches (``Store.create_many``:
    a transaction each on a database, at most BATCH_SESSIONS sessions and BATCH_CHARS characters), so a
    migrate stopped half way has copied whole batches and copies the rest when run again.
    ``on_session(done, total)`` follows the progress (sessions read). ``report``: the report to fill (and
    return), so that a caller whose migrate is interrupted (KeyboardInterrupt) knows what was done.

    (The batches are written in turn, not on a thread of their own while the next is read: measured, that
    was no faster on SQLite and slower on the servers, whose many short round trips then waited for
    Python's lock behind the reading.)"""
    report = MigrationReport() if report is None else report
    todo = [(sid, False) for sid in src.ids()] + [(sid, True) for sid in src.trashed_ids()]
    there = {False: set(dst.ids()), True: set(dst.trashed_ids())}
    batch: list[tuple[Conversation, bool]] = []
    size = 0
    for n, (sid, trashed) in enumerate(todo, 1):
        conv = _to_copy(src, dst, sid, trashed, there, report)
        if conv is not None and dry_run:
            report.copied.append(sid)
        elif conv is not None:
            batch.append((conv, trashed))
            size += sum(len(m.content) + len(m.reasoning) for m in conv.messages)
        if len(batch) >= BATCH_SESSIONS or size >= BATCH_CHARS:
            _copy_batch(dst, batch, report)
            batch, size = [], 0
        if on_session is not None:
            on_session(n, len(todo))
    if batch:
        _copy_batch(dst, batch, report)
    return report


def _to_copy(
    src: Store, dst: Store, sid: str, trashed: bool, there: dict[bool, set[str]], report: MigrationReport
) -> Conversation | None:
    """The session to copy, or None when it is damaged, too large, or already in ``dst`` (reported)."""
    try:
        conv = src.load(sid, trashed=trashed)
    except (SnapshotError, SessionNotFound) as e:
        report.damaged.append((src.location(sid, trashed=trashed), str(e)))
        return None
    why = over_limit(conv)
    here = sid in there[trashed]
    if why is not None and not here:
        report.too_large.append((sid, why))
    elif here or sid in there[not trashed]:
        same = here and dst.load(sid, trashed=trashed) == conv
        (report.same if same else report.differs).append(sid)
    else:
        return conv
    return None


def _copy_batch(dst: Store, batch: list[tuple[Conversation, bool]], report: MigrationReport) -> None:
    """Write ``batch``; one another migrate wrote meanwhile is reported as when it was already there."""
    written = set(dst.create_many(batch))
    for conv, trashed in batch:
        if conv.id in written:
            report.copied.append(conv.id)
        else:
            same = dst.exists(conv.id, trashed=trashed) and dst.load(conv.id, trashed=trashed) == conv
            (report.same if same else report.differs).append(conv.id)


__all__ = [
    "SPOOLED",
    "MigrationReport",
    "check_title",
    "fork",
    "import_file",
    "migrate",
    "older_than",
    "parse_age",
    "parse_date",
    "rename",
    "resolve_trashed",
]
