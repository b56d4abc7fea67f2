"""Writing sessions in SQL: the session row of a save (``write_session``: the version check that keeps two
writers from overwriting each other), the message rows (``upsert_messages``: the engines' default bulk
path, one executemany, which psycopg pipelines and PyMySQL turns into multi-row INSERTs kept under its
statement size) and many new sessions in one transaction (``create_many``, for ``migrate`` and ``import``:
one commit for the batch instead of one per session, every message of the batch in one statement batch
through the engine's ``load_messages``). Functions of a cursor and a ``Dialect``, and of an ``SQLStore``
for ``create_many``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcli.clock import utc_now
from chatcli.errors import SaveError, SessionExists, StoreConflict, StoreError, StoreUnavailable
from chatcli.model import Conversation, Message
from chatcli.snapshot import validate_id
from chatcli.stores.sql_dialect import Dialect
from chatcli.stores.sql_rows import (
    JSON_FIELDS,
    MESSAGE_COLUMNS,
    MESSAGE_JSON_COLUMNS,
    Saved,
    Searched,
    changes_since,
    session_params,
)
from chatcli.stores.sql_runner import x
from chatcli.stores.sql_schema import transaction
from chatcli.stores.sql_search import FullText

if TYPE_CHECKING:
    from chatcli.stores.sql import SQLStore


def write_session(
    cur: Any,
    d: Dialect,
    writer: str,
    display: str,
    sid: str,
    header: dict[str, Any],
    state: Saved | None,
    create: bool = False,
) -> int:
    """Write the session row (its columns ``header``, marked by ``writer``); return its new version. Raises
    StoreConflict when another writer saved the session since this store last saw it (``state``); with
    ``create``, SessionExists when the id is taken. ``display`` names the store in messages."""
    p = d.mark
    names = list(header)
    sets = ", ".join(f"{d.q(c)} = {d.value(c in JSON_FIELDS)}" for c in names)
    values = [header[c] for c in names]
    cols = ", ".join(d.q(c) for c in ["id", *names, "version", "writer"])
    marks = ", ".join([p, *(d.value(c in JSON_FIELDS) for c in names), p, p])
    insert = (f"INSERT INTO chatcli_sessions ({cols}) VALUES ({marks})", [sid, *values, 1, writer])
    if create:
        if x(cur, insert[0] + d.if_absent("id"), insert[1]).rowcount != 1:
            raise SessionExists(f"a session {sid} already exists in {display}; nothing was written")
        return 1
    if state is None:
        row = x(
            cur, f"SELECT version, deleted_at FROM chatcli_sessions WHERE id = {p}{d.for_update}", (sid,)
        ).fetchone()
        if row is None:
            x(cur, *insert)
            return 1
        version = int(row[0]) + 1
        x(
            cur,
            f"UPDATE chatcli_sessions SET {sets}, version = {p}, writer = {p} WHERE id = {p}",
            [*values, version, writer, sid],
        )
        return version
    seen = state.version
    for _ in (1, 2):
        cur = x(
            cur,
            f"UPDATE chatcli_sessions SET {sets}, version = {p}, writer = {p} WHERE id = {p} AND version = {p}",
            [*values, seen + 1, writer, sid, seen],
        )
        if cur.rowcount == 1:
            return seen + 1
        row = x(cur, f"SELECT version, writer FROM chatcli_sessions WHERE id = {p}", (sid,)).fetchone()
        if row is None:
            raise StoreConflict(
                f"session {sid} is no longer in {display} (deleted by another chatcli "
                f"meanwhile); nothing was overwritten"
            )
        if row[1] != writer:
            raise StoreConflict(
                f"session {sid} was changed in {display} by another chatcli since this "
                f"one read it (version {row[0]}, not {seen}); nothing was overwritten"
            )
        seen = int(row[0])  # our own last commit landed though its answer was lost: go on from it
    raise StoreConflict(f"session {sid} could not be saved in {display}: its version keeps changing")


def upsert_messages(
    cur: Any, d: Dialect, fulltext: FullText, rows: list[tuple[Any, ...]], searched: list[Searched]
) -> None:
    """Insert or replace message ``rows`` (session_id, then MESSAGE_COLUMNS) by (session_id, idx), each with
    what ``fulltext``'s index is given for its text and its reasoning: one executemany."""
    words = list(fulltext.message_columns)
    cols = ["session_id", *MESSAGE_COLUMNS, *words]
    marks = [d.value(c in MESSAGE_JSON_COLUMNS) for c in cols[:-2]] + [d.mark + fulltext.cast] * 2
    cur.executemany(
        f"INSERT INTO chatcli_messages ({', '.join(d.q(c) for c in cols)}) VALUES ({', '.join(marks)}) "
        f"{d.upsert(('session_id', 'idx'), cols[2:])}",
        [(*r, *w) for r, w in zip(rows, searched, strict=True)],
    )


@dataclass
class _New:
    """One session of a batch: its session row made before the transaction starts; its messages (with
    their turns), whose rows are made as the engine takes them (``_message_rows``)."""

    sid: str
    title: str
    header: dict[str, Any]
    messages: Sequence[Message]
    turns: list[int]


def _new(store: SQLStore, conv: Conversation, deleted_at: str | None) -> _New:
    sid = validate_id(conv.id)
    store.forget(sid)
    _, tail, turns, _, total = changes_since(None, conv.messages, 0)
    header = session_params(conv.header, total, len(conv.messages), store.dialect.holds_nul)
    header["deleted_at"] = deleted_at
    return _New(sid, conv.header.title, header, tail, turns)


def _message_rows(store: SQLStore, sessions: list[_New]) -> Iterator[tuple[tuple[Any, ...], Searched]]:
    """The message rows of ``sessions``, a session at a time, each with what its full-text index is given."""
    for n in sessions:
        rows, searched = store.message_rows(n.sid, 0, n.messages, n.turns)
        yield from zip(rows, searched, strict=True)


def create_many(store: SQLStore, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
    """Write the sessions of ``items`` (each with its ``trashed``) that are not in the store yet, in one
    transaction: each session row inserted only if its id is free (a taken one is left out, never
    overwritten), then all their messages at once (the engine's ``load_messages``; their rows made as they
    are sent when it ``streams_load``, else before the transaction), then their titles' search words.
    Returns the ids written, in order. Raises SaveError (a message no row holds, a refusal: nothing is
    written), StoreUnavailable."""
    now = utc_now()
    batch = [_new(store, conv, now if trashed else None) for conv, trashed in items]
    made = None if store.engine.streams_load else {n.sid: list(_message_rows(store, [n])) for n in batch}
    d = store.dialect

    def write(cur: Any) -> list[_New]:
        done: list[_New] = []
        with transaction(cur, d.begin_write):
            for n in batch:
                try:
                    write_session(cur, d, store.writer, store.display, n.sid, n.header, None, create=True)
                except SessionExists:
                    continue
                done.append(n)
            if any(n.messages for n in done):
                rows = _message_rows(store, done) if made is None else [r for n in done for r in made[n.sid]]
                store.engine.load_messages(cur, rows)
            for n in done:
                if n.title:
                    store.index_title(cur, n.sid, n.title)
        return done

    store.runner.writing()
    try:
        written: list[_New] = store.runner.run("copied sessions", write)
    except (StoreConflict, StoreUnavailable):
        raise
    except StoreError as e:
        why = str(e).removeprefix(f"{store.display}: ")
        raise SaveError(
            f"could not write {len(batch)} sessions in {store.display}: {why}", store.display
        ) from None
    return [n.sid for n in written]


__all__ = ["create_many", "upsert_messages", "write_session"]
