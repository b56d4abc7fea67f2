"""What the SQL engines (sqlite, postgresql, mysql) share: ``SQLStore``, a VersionedStore composed of an
``Engine`` (``sql_engine.py``: the dialect, the driver and its error table, the lock, the full-text
strategy, the migrations), a ``Runner`` (``sql_runner.py``: the connection, retries, error mapping, the
session locks held), the schema (``sql_schema.py``), the catalog and the trash (``sql_catalog.py``).

The tables are in README, "The SQL schema", and their mapping in ``sql_rows``: a NULL column is a key absent
from the snapshot, a value that does not fit its column is kept in the row's ``extra``; the words search
looks for are columns of their own, made by ``chatcli.search`` (the full-text strategy's ``indexed``).

A save runs one transaction that writes only what changed since this store last saved or loaded the session:
the session row (``... SET version = version + 1 WHERE id = ? AND version = <last seen>``) and the message
rows from the first changed one on (upserted by index, so writing one twice is harmless). The cost of a save
does not grow with the length of the session.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import (
    SaveError,
    SessionExists,
    SessionLocked,
    SessionNotFound,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from chatcli.model import Conversation, Message
from chatcli.search import SearchHit
from chatcli.snapshot import NO_COUNTS, Counts, message_counts, validate_id
from chatcli.stores.base import Page, SaveInfo, SessionLock
from chatcli.stores.sql_catalog import SQLCatalog, SQLTrash, location
from chatcli.stores.sql_engine import Engine
from chatcli.stores.sql_rows import (
    COUNT_COLUMNS,
    JSON_FIELDS,
    SESSION_FIELDS,
    Saved,
    Searched,
    changes_since,
    message_from_row,
    message_row,
    session_from_row,
    session_params,
)
from chatcli.stores.sql_runner import Runner, x
from chatcli.stores.sql_schema import SQLSchema, transaction
from chatcli.stores.sql_search import message_columns
from chatcli.stores.sql_write import create_many, write_session
from chatcli.stores.url import StoreURL


class SQLStore:
    """Sessions in the database ``url`` names, through ``engine``. ``timeout`` is the longest, in seconds,
    one statement or a connection attempt may take (the engine sets it on its connections; past it the
    operation fails with StoreUnavailable, so a hung database never hangs chatcli); ``ask_password(prompt)``
    is asked once when the server wants a password and none was found (None: never ask)."""

    def __init__(
        self,
        url: StoreURL,
        engine: Engine,
        *,
        timeout: float = 10.0,
        ask_password: Callable[[str], str] | None = None,
    ) -> None:
        self.url = url
        self.engine = engine
        self.dialect = engine.dialect
        self.kind = engine.kind
        self.display = url.display
        self.address = url.address
        self.timeout = timeout
        self.writer = secrets.token_hex(8)  # this process's mark on the rows it saves
        self._saved: dict[str, Saved] = {}
        self.schema = SQLSchema(engine, self.display)
        self.runner = Runner(engine, self.display, url.secrets, timeout, self.schema.migrate, ask_password)
        self.catalog = SQLCatalog(self.runner, engine, self.display)
        self.bin = SQLTrash(self.runner, engine, self.display, self.forget)

    def close(self) -> None:
        self.runner.close()

    def forget(self, session_id: str) -> None:
        """Forget what this store knew of the session's rows (it was moved or removed)."""
        self._saved.pop(session_id, None)

    # -- one session ---------------------------------------------------------------------------------------
    def lock(self, session_id: str) -> SessionLock:
        return self.runner.lock(session_id)

    def location(self, session_id: str, *, trashed: bool = False) -> str:
        return location(self.display, session_id, trashed)

    def stored_size(self, session_id: str) -> int | None:
        return None

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        validate_id(session_id)
        sql = f"SELECT 1 FROM chatcli_sessions WHERE id = {self.dialect.mark} AND deleted_at "
        sql += "IS NOT NULL" if trashed else "IS NULL"
        return bool(self.runner.run("looked a session up", lambda cur: x(cur, sql, (session_id,)).fetchone()))

    def load(self, session_id: str, *, trashed: bool = False) -> Conversation:
        validate_id(session_id)
        d, p = self.dialect, self.dialect.mark
        columns = ", ".join(d.text(c, json=c in JSON_FIELDS) for c in SESSION_FIELDS)
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def read(cur: Any) -> tuple[Any, list[Any]]:
            with transaction(cur, d.begin_read):
                row = x(
                    cur,
                    f"SELECT version, {columns}, {', '.join(COUNT_COLUMNS)} FROM chatcli_sessions "
                    f"WHERE id = {p} AND deleted_at {deleted}",
                    (session_id,),
                ).fetchone()
                if row is None:
                    return None, []
                msgs = x(
                    cur,
                    f"SELECT {message_columns(d)} FROM chatcli_messages WHERE session_id = {p} ORDER BY idx",
                    (session_id,),
                ).fetchall()
            return row, msgs

        row, rows = self.runner.run("read a session", read)
        if row is None:
            where = "the trash of " if trashed else ""
            raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        data = session_from_row(session_id, row[1 : 1 + len(SESSION_FIELDS)])
        data["messages"] = [message_from_row(r) for r in rows]
        conv = Conversation.from_json(data, self.location(session_id))
        total = Counts(*(int(v) for v in row[1 + len(SESSION_FIELDS) :]))  # kept up to date by every save
        counts = [message_counts(m) for m in conv.messages]
        self._saved[session_id] = Saved(
            int(row[0]), counts, [int(r[1]) for r in rows], total, conv.header.title
        )
        return conv

    # -- versions ------------------------------------------------------------------------------------------
    def saved_version(self, session_id: str) -> int | None:
        state = self._saved.get(session_id)
        return state.version if state is not None else None

    def row_version(self, session_id: str) -> tuple[int, str | None] | None:
        sql = f"SELECT version, writer FROM chatcli_sessions WHERE id = {self.dialect.mark}"
        row = self.runner.run("read a session's version", lambda cur: x(cur, sql, (session_id,)).fetchone())
        return (int(row[0]), row[1]) if row is not None else None

    # -- writing -------------------------------------------------------------------------------------------
    def save(self, conv: Conversation, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        return self._save(conv, changed_from)

    def create(self, conv: Conversation, *, trashed: bool = False) -> SaveInfo:
        self.forget(validate_id(conv.id))
        return self._save(conv, 0, create=True, deleted_at=utc_now() if trashed else None)

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        """All of ``items`` in one transaction (``sql_write.create_many``)."""
        return create_many(self, items)

    def message_rows(
        self, sid: str, start: int, messages: Sequence[Message], turns: Sequence[int]
    ) -> tuple[list[tuple[Any, ...]], list[Searched]]:
        """The rows of ``messages`` (messages ``start`` on of session ``sid``, with their ``turns``), and what
        the full-text index is given for each: its text and its reasoning (None: none)."""
        holds_nul, indexed = self.dialect.holds_nul, self.engine.fulltext.indexed
        rows = [message_row(sid, start + k, turns[k], m, holds_nul) for k, m in enumerate(messages)]
        searched = [  # (the exact text: a row's may be cleaned)
            (indexed(m.searched_text), indexed(m.reasoning) if m.reasoning else None) for m in messages
        ]
        return rows, searched

    def index_title(self, cur: Any, session_id: str, title: str) -> None:
        """Keep the full-text index of the session's title up to date."""
        fulltext, p = self.engine.fulltext, self.dialect.mark
        x(
            cur,
            f"UPDATE chatcli_sessions SET {fulltext.title_column} = {p}{fulltext.cast} WHERE id = {p}",
            (fulltext.indexed(title), session_id),
        )

    def _save(
        self, conv: Conversation, changed_from: int, create: bool = False, deleted_at: str | None = None
    ) -> SaveInfo:
        """One save's transaction; with ``create`` the session row is inserted only if no row has its id
        (SessionExists otherwise: two creators at once never both write), in the trash at ``deleted_at``."""
        sid = validate_id(conv.id)
        if sid in self.runner.lost:
            raise SessionLocked(
                f"session {sid} was opened by another chatcli while the connection to "
                f"{self.display} was lost; nothing was overwritten"
            )
        state = self._saved.get(sid)
        n = len(conv.messages)
        start, tail, turns, counts, total = changes_since(state, conv.messages, changed_from)
        header = session_params(conv.header, total, n, self.dialect.holds_nul)
        if create:
            header["deleted_at"] = deleted_at
        rows, searched = self.message_rows(sid, start, tail, turns)
        d = self.dialect

        def write(cur: Any) -> int:
            with transaction(cur, d.begin_write):
                version = write_session(cur, d, self.writer, self.display, sid, header, state, create)
                if rows:
                    self.engine.write_messages(cur, rows, searched)
                if state is None or len(state.counts) > n:
                    x(
                        cur,
                        f"DELETE FROM chatcli_messages WHERE session_id = {d.mark} AND idx >= {d.mark}",
                        (sid, n),
                    )
                if state is None or state.title != conv.header.title:
                    self.index_title(cur, sid, conv.header.title)
            return version

        self.runner.writing()
        try:
            version = self.runner.run("saved a session", write)
        except (StoreConflict, SessionExists, StoreUnavailable):
            raise
        except StoreError as e:
            why = str(e).removeprefix(f"{self.display}: ")  # (the store is named once)
            raise SaveError(f"could not save session {sid} in {self.display}: {why}", self.display) from None
        except SaveError as e:  # a message that cannot be stored at all
            raise SaveError(f"{e} in {self.display}", self.display) from None
        self._saved_after(sid, state, version, start, counts, turns, total, conv.header.title)
        return SaveInfo(location=self.location(sid), size=None, saved_at=utc_now())

    def _saved_after(
        self,
        sid: str,
        state: Saved | None,
        version: int,
        start: int,
        counts: list[Counts],
        turns: list[int],
        total: Counts,
        title: str,
    ) -> None:
        """What this store knows of the session's rows once a save landed."""
        if state is None:
            state = Saved(version, [], [], NO_COUNTS)
            self._saved[sid] = state
        state.version = version
        del state.counts[start:], state.turns[start:]
        state.counts += counts
        state.turns += turns
        state.total = total
        state.title = title

    # -- the catalog and the trash (sql_catalog) -----------------------------------------------------------
    def ids(self) -> list[str]:
        return self.catalog.ids()

    def trashed_ids(self) -> list[str]:
        return self.catalog.trashed_ids()

    def newest_id(self) -> str | None:
        return self.catalog.newest_id()

    def ids_titled(self, title: str) -> list[str]:
        return self.catalog.ids_titled(title)

    def page(
        self,
        limit: int | None = None,
        *,
        since: str | None = None,
        before: str | None = None,
        model: str | None = None,
        title: str | None = None,
        trashed: bool = False,
    ) -> Page:
        return self.catalog.page(limit, since=since, before=before, model=model, title=title, trashed=trashed)

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        return self.catalog.search(text, role=role, session_id=session_id, limit=limit, reasoning=reasoning)

    def totals(self, active_since: str) -> dict[str, Any]:
        return self.catalog.totals(active_since)

    def trash(self, session_id: str) -> None:
        self.bin.trash(session_id)

    def restore(self, session_id: str) -> None:
        self.bin.restore(session_id)

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        self.bin.purge(session_id, trashed=trashed)


__all__ = ["SQLStore"]
