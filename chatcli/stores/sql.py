"""What the SQL engines (sqlite, postgresql, mysql) share: the tables, how a snapshot maps onto them, the
incremental save, the version check, the trash, the catalog and the numbered schema migrations. Each
engine (``sqlite.py``, ``postgresql.py``, ``mysql.py``) adds its driver, its types, its lock and its
full-text search.

The tables are in README, "The SQL schema", and their mapping in ``sql_rows``: a NULL column is a key absent
from the snapshot, a value that does not fit its column is kept in the row's ``extra``; the words search
looks for are columns of their own, made by ``chatcli.search`` (``_searched``).

A save runs one transaction that writes only what changed since this store last saved or loaded the session:
the session row (``... SET version = version + 1 WHERE id = ? AND version = <last seen>``) and the message
rows from the first changed one on (upserted by index, so writing one twice is harmless). The cost of a save
does not grow with the length of the session.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import (
    ChatcliError,
    SaveError,
    SessionExists,
    SessionLocked,
    SessionNotFound,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from chatcli.model import Conversation
from chatcli.snapshot import (
    NO_COUNTS,
    Counts,
    message_counts,
    validate_id,
)
from chatcli.stores.base import SaveInfo
from chatcli.stores.sql_catalog import SQLCatalog
from chatcli.stores.sql_keepalive import LockKeeper
from chatcli.stores.sql_rows import (
    COUNT_COLUMNS,
    JSON_FIELDS,
    MESSAGE_COLUMNS,
    MESSAGE_JSON_COLUMNS,
    SESSION_FIELDS,
    Saved,
    Searched,
    changes_since,
    message_from_row,
    message_row,
    reasoning_hits,
    said,
    session_from_row,
    session_params,
)
from chatcli.stores.sql_schema import SQLSchema
from chatcli.stores.sql_write import create_many, write_session
from chatcli.stores.url import MIN_REDACTED, StoreURL, redact

#: times a transaction the database rolled back to break a deadlock is run again (then: StoreUnavailable, and
#: the turn waits in the spool); the pauses before each grow from about DEADLOCK_PAUSE * 2 seconds, doubling
DEADLOCK_RETRIES = 6
DEADLOCK_PAUSE = 0.01
#: seconds a session lock held by another connection is tried again before the session is said to be open
#: elsewhere (a killed chatcli's lock is freed once its server notices the dropped connection)
LOCK_GRACE = 1.5


class SQLStore(SQLCatalog, SQLSchema):
    """The shared machinery; see the module docstring. Subclasses set ``kind``, ``migrations`` and the
    driver hooks (``_open``, ``_is_lost``, ``_failure``, ``_driver_errors``, ``_try_lock``, ``_unlock``,
    ``_lock_schema``, ``_upsert_messages``, ``_search_rows``, ...).

    ``timeout`` is the longest, in seconds, one statement or a connection attempt may take; past it the
    operation fails with StoreUnavailable, so a hung database never hangs chatcli."""

    kind = "sql"
    #: migrations[n] = (name, step) brings the schema from version n to n + 1 (a step is a list of statements,
    #: or a function of a cursor); the schema's version is the number of migrations applied. The names are
    #: the same on every engine (MIGRATION_NAMES)
    migrations: Sequence[tuple[str, Sequence[str] | Callable[[Any], None]]] = ()
    holds_nul = True  # False: text columns cannot hold NUL (PostgreSQL)
    locks_on_connection = True  # the session locks die with the connection (False: SQLite's lock files)
    begin_write = "BEGIN"
    begin_read = "BEGIN"

    def __init__(self, url: StoreURL, timeout: float = 10.0) -> None:
        self.url = url
        self.display = url.display
        self.address = url.address
        self.secrets: frozenset[str] = url.secrets  # (and a password asked for, once given)
        self.timeout = timeout
        self.writer = secrets.token_hex(8)  # this process's mark on the rows it saves
        self._conn: Any = None
        self._saved: dict[str, Saved] = {}
        self._held: set[str] = set()  # session locks this store holds
        self._lost: set[str] = set()  # locks lost with a connection and taken by someone else since
        self._mutex = threading.RLock()  # one user of the connection at a time (the keeper is another)
        self._keeper = LockKeeper(self) if self.locks_on_connection else None
        self.deadlocks_retried = 0  # transactions run again after the database broke a deadlock with them

    # -- driver hooks (each engine) ------------------------------------------------------------------------
    def _open(self) -> Any:
        """A new connection in autocommit mode. Raises StoreUnavailable or StoreError."""
        raise NotImplementedError

    def _is_lost(self, e: BaseException) -> bool:
        """Whether ``e`` means the connection is gone (reconnect and try again)."""
        raise NotImplementedError

    def _failure(self, e: BaseException) -> ChatcliError:
        """A driver error as the error chatcli reports."""
        raise NotImplementedError

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _is_deadlock(self, e: BaseException) -> bool:
        """Whether ``e`` means the database rolled the whole transaction back to break a deadlock or a
        serialization conflict (run it again as a whole). None do, unless an engine says so."""
        return False

    def _said(self, e: BaseException | str) -> str:
        """A driver error's own words (or ``e``'s text) on one line, with the store's password blanked out."""
        return redact(e if isinstance(e, str) else said(e), self.secrets)

    def _keep_secret(self, password: str) -> None:
        """A password found outside the URL (the environment, a prompt): blanked out of messages too."""
        if len(password) >= MIN_REDACTED:
            self.secrets = self.secrets | {password}

    def _try_lock(self, cur: Any, session_id: str) -> bool:
        raise NotImplementedError

    def _unlock(self, cur: Any, session_id: str) -> None:
        raise NotImplementedError

    def _upsert_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        """Insert or replace message ``rows`` (session_id, then MESSAGE_COLUMNS), each with the words of its
        text and of its reasoning (None: it has none) as ``_searched`` gives them."""
        raise NotImplementedError

    def _searched(self, text: str) -> str:
        """What the engine's full-text index is given for ``text`` (see chatcli.search)."""
        raise NotImplementedError

    _title_words = "title_words = %s"  # how a session row's indexed title is set

    def _index_title(self, cur: Any, session_id: str, title: str) -> None:
        """Keep the full-text index of the session's title up to date."""
        self._x(
            cur,
            f"UPDATE chatcli_sessions SET {self._title_words} WHERE id = %s",
            (self._searched(title), session_id),
        )

    # -- connections ---------------------------------------------------------------------------------------
    def _connection(self) -> Any:
        """The open connection, or a new one: its schema brought up to date and, after a lost connection,
        the session locks this store held taken back (those another chatcli took meanwhile are lost).
        Raises StoreUnavailable or StoreError."""
        if self._conn is not None:
            return self._conn
        conn = self._open()
        try:
            self._migrate(conn)
            if self._held:
                cur = conn.cursor()
                for sid in sorted(self._held):
                    if not self._try_lock(cur, sid):
                        self._lost.add(sid)
        except BaseException as e:
            lost = isinstance(e, self._driver_errors()) and self._is_lost(e)
            try:
                conn.close()
            except Exception:
                pass
            if isinstance(e, self._driver_errors()):
                if lost:
                    raise StoreUnavailable(
                        f"the database {self.display} stopped answering ({self._said(e)})"
                    ) from None
                raise self._failure(e) from None
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(cursor)`` on the connection, reconnecting once when the connection turns out to be gone, and
        run again (after a short, growing, random pause) when the database chose it as a deadlock's victim,
        at most DEADLOCK_RETRIES times: ``fn`` is a whole transaction, which the database rolled back. Driver
        errors leave as StoreUnavailable / StoreError naming the store and ``what`` was done."""
        if not self._mutex.acquire(timeout=self.timeout):  # the keeper waits on a database that hangs
            raise StoreUnavailable(f"{self.display} did not answer within {self.timeout:g} s")
        try:
            reconnected, deadlocks = False, 0
            while True:
                conn = self._connection()  # first: it says so when the driver is missing
                try:
                    return fn(conn.cursor())
                except self._driver_errors() as e:
                    if self._is_deadlock(e) and deadlocks < DEADLOCK_RETRIES:
                        deadlocks += 1
                        self.deadlocks_retried += 1
                        time.sleep(random.uniform(0.5, 1.0) * DEADLOCK_PAUSE * 2**deadlocks)
                        continue
                    if not self._is_lost(e):
                        raise self._failure(e) from None
                    self._drop()
                    if reconnected:
                        raise StoreUnavailable(
                            f"the database {self.display} stopped answering while it {what} ({self._said(e)})"
                        ) from None
                    reconnected = True
        finally:
            self._mutex.release()

    @contextmanager
    def _tx(self, cur: Any, begin: str) -> Iterator[Any]:
        cur.execute(begin)
        try:
            yield cur
        except BaseException:
            self._rollback_quietly(cur)
            raise
        cur.execute("COMMIT")

    def _x(self, cur: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (``%s`` placeholders) and return the cursor."""
        cur.execute(sql, args)
        return cur

    def keep_locks(self) -> bool:
        """For the LockKeeper: a ``SELECT 1`` that opens a lost connection again, which takes the held locks
        back (see ``_connection``). False when no lock is held. Never raises."""
        if not self._mutex.acquire(timeout=self.timeout):
            return bool(self._held)  # the connection is busy (or hangs): check again later
        try:  # (the check of what is held and the SELECT under one hold of the mutex: a store closed
            if not self._held:  # meanwhile, its locks released, is not opened again)
                return False
            try:
                self._run("checked its connection", lambda cur: self._x(cur, "SELECT 1"))
            except Exception:
                pass  # not answering: the next save says so and keeps the turn in the spool
            return bool(self._held)
        finally:
            self._mutex.release()

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._conn is not None and self._held:
            try:
                cur = self._conn.cursor()
                for sid in list(self._held):
                    self._unlock(cur, sid)
            except Exception:
                pass
        self._held.clear()
        self._drop()

    # -- locks ---------------------------------------------------------------------------------------------
    def lock(self, session_id: str) -> _Lock:
        validate_id(session_id)

        def take(cur: Any) -> bool:
            return self._try_lock(cur, session_id)

        if session_id in self._held:
            raise SessionLocked(f"session {session_id} is already open in this chatcli")
        if not self._taken(take):
            raise SessionLocked(
                f"session {session_id} is open in another chatcli (on this machine or another "
                f"one sharing {self.display}); close that one first (`chatcli show {session_id}` "
                f"reads it meanwhile)"
            )
        self._held.add(session_id)
        self._lost.discard(session_id)
        if self._keeper is not None:
            self._keeper.ensure_running()
        return _Lock(self, session_id)

    def _taken(self, take: Callable[[Any], bool]) -> bool:
        """Whether ``take`` got the lock, trying again for LOCK_GRACE seconds: the lock of a chatcli that was
        just killed stays held until its server notices the connection is gone, a moment later."""
        deadline = time.monotonic() + LOCK_GRACE
        while not self._run("took a session lock", take):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _release(self, session_id: str) -> None:
        with self._mutex:
            if session_id not in self._held:
                return
            self._held.discard(session_id)
            if self._conn is not None and session_id not in self._lost:
                try:
                    self._unlock(self._conn.cursor(), session_id)
                except Exception:
                    self._drop()
            self._lost.discard(session_id)

    # -- reading one session -------------------------------------------------------------------------------
    def location(self, session_id: str, *, trashed: bool = False) -> str:
        return f"{self.display} (session {session_id}{', in the trash' if trashed else ''})"

    def stored_size(self, session_id: str) -> int | None:
        return None

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        validate_id(session_id)
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def ask(cur: Any) -> bool:
            return (
                self._x(
                    cur,
                    f"SELECT 1 FROM chatcli_sessions WHERE id = %s AND deleted_at {deleted}",
                    (session_id,),
                ).fetchone()
                is not None
            )

        return bool(self._run("looked a session up", ask))

    def load(self, session_id: str, *, trashed: bool = False) -> Conversation:
        validate_id(session_id)
        columns = ", ".join(self._out(c) if c in JSON_FIELDS else self._q(c) for c in SESSION_FIELDS)
        mcols = self._message_columns()
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def read(cur: Any) -> tuple[Any, list[Any]]:
            with self._tx(cur, self.begin_read):
                row = self._x(
                    cur,
                    f"SELECT version, {columns}, {', '.join(COUNT_COLUMNS)} FROM chatcli_sessions "
                    f"WHERE id = %s AND deleted_at {deleted}",
                    (session_id,),
                ).fetchone()
                if row is None:
                    return None, []
                msgs = self._x(
                    cur,
                    f"SELECT {mcols} FROM chatcli_messages WHERE session_id = %s ORDER BY idx",
                    (session_id,),
                ).fetchall()
            return row, msgs

        row, rows = self._run("read a session", read)
        if row is None:
            where = "the trash of " if trashed else ""
            raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        where = self.location(session_id)
        data = session_from_row(session_id, row[1 : 1 + len(SESSION_FIELDS)])
        data["messages"] = [message_from_row(r) for r in rows]
        conv = Conversation.from_json(data, where)
        total = Counts(*(int(v) for v in row[1 + len(SESSION_FIELDS) :]))  # kept up to date by every save
        counts = [message_counts(m) for m in conv.messages]
        self._saved[session_id] = Saved(
            int(row[0]), counts, [int(r[1]) for r in rows], total, conv.header.title
        )
        return conv

    def _message_columns(self, table: str = "") -> str:
        """MESSAGE_COLUMNS as a SELECT lists them (of ``table``, when given), JSON columns as text."""
        at = f"{table}." if table else ""
        return ", ".join(
            at + (self._out(c) if c in MESSAGE_JSON_COLUMNS else self._q(c)) for c in MESSAGE_COLUMNS
        )

    def _reasoning_hits(
        self, cur: Any, inner: str, args: list[Any], limit: int, *, best: str = "DESC"
    ) -> list[tuple[float, tuple[Any, ...]]]:
        """``search --reasoning``'s rows (``sql_rows.reasoning_hits``) from ``inner``, the engine's query of
        the matching messages as (``mid``, ``score``) with its ``args``: the ``window`` most recent matches,
        ranked (``best``: the order of a better score, ``ASC`` for bm25), in live sessions."""
        sql = (
            f"SELECT h.score, m.session_id, s.title, m.turn, m.idx, {self._message_columns('m')} FROM ({inner} "
            f"ORDER BY mid DESC LIMIT %s) h JOIN chatcli_messages m ON m.mid = h.mid JOIN chatcli_sessions s "
            f"ON s.id = m.session_id WHERE s.deleted_at IS NULL ORDER BY h.score {best}, m.session_id DESC, m.idx "
            f"LIMIT %s"
        )
        return reasoning_hits(self._x(cur, sql, [*args, self.window, limit]).fetchall())

    def _out(self, column: str) -> str:
        """How a JSON column is selected so that it arrives as text."""
        return self._q(column)

    def _q(self, column: str) -> str:
        """A column name as this engine's SQL writes it (MySQL quotes them: ``system`` and ``usage`` are
        reserved words there)."""
        return column

    def saved_version(self, session_id: str) -> int | None:
        """The row version this store last saw for the session (None: not loaded or saved here)."""
        state = self._saved.get(session_id)
        return state.version if state is not None else None

    def row_version(self, session_id: str) -> tuple[int, str | None] | None:
        """The session row's (version, writer) in the database now, or None when there is no row."""

        def ask(cur: Any) -> Any:
            return self._x(
                cur, "SELECT version, writer FROM chatcli_sessions WHERE id = %s", (session_id,)
            ).fetchone()

        row = self._run("read a session's version", ask)
        return (int(row[0]), row[1]) if row is not None else None

    # -- writing -------------------------------------------------------------------------------------------
    def save(self, conv: Conversation, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        return self._save(conv, changed_from)

    def _save(
        self, conv: Conversation, changed_from: int, create: bool = False, deleted_at: str | None = None
    ) -> SaveInfo:
        """One save's transaction; with ``create`` the session row is inserted only if no row has its id
        (SessionExists otherwise: two creators at once never both write), in the trash at ``deleted_at``."""
        sid = validate_id(conv.id)
        if sid in self._lost:
            raise SessionLocked(
                f"session {sid} was opened by another chatcli while the connection to "
                f"{self.display} was lost; nothing was overwritten"
            )
        state = self._saved.get(sid)
        n = len(conv.messages)
        start, tail, turns, counts, total = changes_since(state, conv.messages, changed_from)
        header = session_params(conv.header, total, n, self.holds_nul)
        if create:
            header["deleted_at"] = deleted_at
        rows = [message_row(sid, start + k, turns[k], m, self.holds_nul) for k, m in enumerate(tail)]
        searched = [  # (the exact text: a row's may be cleaned)
            (self._searched(m.searched_text), self._searched(m.reasoning) if m.reasoning else None)
            for m in tail
        ]

        def write(cur: Any) -> int:
            with self._tx(cur, self.begin_write):
                version = write_session(self, cur, sid, header, state, create)
                if rows:
                    self._upsert_messages(cur, rows, searched)
                if state is None or len(state.counts) > n:
                    self._x(cur, "DELETE FROM chatcli_messages WHERE session_id = %s AND idx >= %s", (sid, n))
                if state is None or state.title != conv.header.title:
                    self._index_title(cur, sid, conv.header.title)
            return version

        try:
            version = self._run("saved a session", write)
        except (StoreConflict, SessionExists, StoreUnavailable):
            raise
        except StoreError as e:
            why = str(e).removeprefix(f"{self.display}: ")  # (the store is named once)
            raise SaveError(f"could not save session {sid} in {self.display}: {why}", self.display) from None
        except SaveError as e:  # a message that cannot be stored at all
            raise SaveError(f"{e} in {self.display}", self.display) from None
        if state is None:
            state = Saved(version, [], [], NO_COUNTS)
            self._saved[sid] = state
        state.version = version
        del state.counts[start:], state.turns[start:]
        state.counts += counts
        state.turns += turns
        state.total = total
        state.title = conv.header.title
        return SaveInfo(location=self.location(sid), size=None, saved_at=utc_now())

    _for_update = ""  # a row lock on a SELECT inside a write transaction (SQLite locks the database anyway)
    _if_absent = " ON CONFLICT (id) DO NOTHING"  # an INSERT that leaves a row already there alone

    def _param(self, column: str) -> str:
        """The placeholder for a session column (JSON columns may need a cast)."""
        return "%s"

    def create(self, conv: Conversation, *, trashed: bool = False) -> SaveInfo:
        self._saved.pop(validate_id(conv.id), None)
        return self._save(conv, 0, create=True, deleted_at=utc_now() if trashed else None)

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        """All of ``items`` in one transaction (``sql_write.create_many``)."""
        return create_many(self, items)


class _Lock:
    """A session lock held by a SQLStore (on its connection, or a lock file for SQLite)."""

    def __init__(self, store: SQLStore, session_id: str) -> None:
        self._store: SQLStore | None = store
        self.session_id = session_id

    def release(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store._release(self.session_id)
