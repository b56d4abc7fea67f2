"""Writing sessions in SQL: the session row of a save (``write_session``: the version check that keeps two
writers from overwriting each other) and many new sessions in one transaction (``create_many``, for
``migrate`` and ``import``: one commit for the batch instead of one per session, every message of the batch
in one statement batch: executemany, which psycopg pipelines and PyMySQL turns into multi-row INSERTs kept
under its statement size). Functions of an ``SQLStore``, composed into it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatcli.errors import SaveError, SessionExists, StoreConflict, StoreError, StoreUnavailable
from chatcli.model import Conversation
from chatcli.snapshot import validate_id
from chatcli.stores.sql_rows import Saved, Searched, changes_since, message_row, session_params

if TYPE_CHECKING:
    from chatcli.stores.sql import SQLStore


def write_session(
    store: SQLStore, cur: Any, sid: str, header: dict[str, Any], state: Saved | None, create: bool = False
) -> int:
    """Write the session row; return its new version. Raises StoreConflict when another writer saved
    the session since this store last saw it; with ``create``, SessionExists when the id is taken."""
    names = list(header)
    sets = ", ".join(f"{store._q(c)} = {store._param(c)}" for c in names)
    values = [header[c] for c in names]
    cols = ", ".join(store._q(c) for c in ["id", *names, "version", "writer"])
    marks = ", ".join(["%s", *(store._param(c) for c in names), "%s", "%s"])
    insert = (f"INSERT INTO chatcli_sessions ({cols}) VALUES ({marks})", [sid, *values, 1, store.writer])
    if create:
        if store._x(cur, insert[0] + store._if_absent, insert[1]).rowcount != 1:
            raise SessionExists(f"a session {sid} already exists in {store.display}; nothing was written")
        return 1
    if state is None:
        sql = "SELECT version, deleted_at FROM chatcli_sessions WHERE id = %s" + store._for_update
        row = store._x(cur, sql, (sid,)).fetchone()
        if row is None:
            store._x(cur, *insert)
            return 1
        version = int(row[0]) + 1
        sql = f"UPDATE chatcli_sessions SET {sets}, version = %s, writer = %s WHERE id = %s"
        store._x(cur, sql, [*values, version, store.writer, sid])
        return version
    seen = state.version
    for _ in (1, 2):
        cur = store._x(
            cur,
            f"UPDATE chatcli_sessions SET {sets}, version = %s, writer = %s WHERE id = %s AND version = %s",
            [*values, seen + 1, store.writer, sid, seen],
        )
        if cur.rowcount == 1:
            return seen + 1
        row = store._x(cur, "SELECT version, writer FROM chatcli_sessions WHERE id = %s", (sid,)).fetchone()
        if row is None:
            raise StoreConflict(
                f"session {sid} is no longer in {store.display} (deleted by another chatcli "
                f"meanwhile); nothing was overwritten"
            )
        if row[1] != store.writer:
            raise StoreConflict(
                f"session {sid} was changed in {store.display} by another chatcli since this "
                f"one read it (version {row[0]}, not {seen}); nothing was overwritten"
            )
        seen = int(row[0])  # our own last commit landed though its answer was lost: go on from it
    raise StoreConflict(f"session {sid} could not be saved in {store.display}: its version keeps changing")


@dataclass
class _New:
    """One session of a batch, turned into its rows before the transaction starts."""

    sid: str
    title: str
    header: dict[str, Any]
    rows: list[tuple[Any, ...]]
    searched: list[Searched]


def _new(store: SQLStore, conv: Conversation, deleted_at: str | None) -> _New:
    sid = validate_id(conv.id)
    store._saved.pop(sid, None)
    _, tail, turns, _, total = changes_since(None, conv.messages, 0)
    header = session_params(conv.header, total, len(conv.messages), store.holds_nul)
    header["deleted_at"] = deleted_at
    rows = [message_row(sid, k, turns[k], m, store.holds_nul) for k, m in enumerate(tail)]
    searched = [
        (store._searched(m.searched_text), store._searched(m.reasoning) if m.reasoning else None)
        for m in tail
    ]
    return _New(sid, conv.header.title, header, rows, searched)


def create_many(store: SQLStore, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
    """Write the sessions of ``items`` (each with its ``trashed``) that are not in the store yet, in one
    transaction: each session row inserted only if its id is free (a taken one is left out, never
    overwritten), then all their messages at once, then their titles' search words. Returns the ids
    written, in order. Raises SaveError (a message no row holds, a refusal: nothing is written),
    StoreUnavailable."""
    from chatcli.clock import utc_now

    now = utc_now()
    batch = [_new(store, conv, now if trashed else None) for conv, trashed in items]

    def write(cur: Any) -> list[_New]:
        done: list[_New] = []
        with store._tx(cur, store.begin_write):
            for n in batch:
                try:
                    write_session(store, cur, n.sid, n.header, None, create=True)
                except SessionExists:
                    continue
                done.append(n)
            rows = [r for n in done for r in n.rows]
            if rows:
                store._upsert_messages(cur, rows, [w for n in done for w in n.searched])
            for n in done:
                if n.title:
                    store._index_title(cur, n.sid, n.title)
        return done

    try:
        written: list[_New] = store._run("copied sessions", write)
    except (StoreConflict, StoreUnavailable):
        raise
    except StoreError as e:
        why = str(e).removeprefix(f"{store.display}: ")
        raise SaveError(
            f"could not write {len(batch)} sessions in {store.display}: {why}", store.display
        ) from None
    return [n.sid for n in written]


__all__ = ["create_many", "write_session"]
