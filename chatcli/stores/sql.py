"""What the SQL engines (sqlite, postgresql, mysql) share: the tables, how a snapshot maps onto them, the
incremental save, the version check, the trash, the catalog and the numbered schema migrations. Each
engine (``sqlite.py``, ``postgresql.py``, ``mysql.py``) adds its driver, its types, its lock and its
full-text search.

Tables (README, "The SQL schema")::

    chatcli_schema    version, applied_at                    one row per applied migration
    chatcli_sessions  id, the snapshot's top-level fields as columns (JSON columns for params, clears,
                      changes and unknown keys), the counts ``list``/``stats`` show, ``version`` (+1 at each
                      save), ``writer`` (who saved last), ``deleted_at`` (set while in the trash)
    chatcli_messages  (session_id, idx) one row per message in order, its fields as columns, JSON columns
                      for usage, timings and unknown keys; ``mid`` grows with each new row (recency)

A column that is NULL means the key is absent from the snapshot; a value that does not fit its column's
type is kept in the row's ``extra`` JSON, so a session read back equals the snapshot that was saved.

A save runs one transaction that writes only what changed since this store last saved or loaded the session:
the session row (``... SET version = version + 1 WHERE id = ? AND version = <last seen>``) and the message
rows from the first changed one on (upserted by index, so writing one twice is harmless). The cost of a save
does not grow with the length of the session.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

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
from chatcli.snapshot import (
    FORMAT,
    KNOWN_KEYS,
    NO_COUNTS,
    SEARCH_WINDOW,
    Counts,
    SearchHit,
    SessionSummary,
    Snapshot,
    message_counts,
    search_words,
    snippet,
    valid_unicode,
    validate_id,
    validate_snapshot,
)
from chatcli.stores.base import Page, SaveInfo

#: message keys kept in text columns (NULL = absent), then in JSON columns
MESSAGE_TEXT = ("created_at", "status", "finish_reason", "model", "error", "dropped")
MESSAGE_JSON = ("usage", "timings")
MESSAGE_COLUMNS = ("idx", "turn", "role", "content", *MESSAGE_TEXT, *MESSAGE_JSON, "extra")
#: session row columns that hold snapshot fields
SESSION_FIELDS = ("title", "created_at", "updated_at", "backend", "model", "base_url", "model_path", "params",
                  "system", "context_start", "clears", "changes", "extra", "format_version")
COUNT_COLUMNS = ("messages", "user_messages", "assistant_messages", "characters", "prompt_tokens",
                 "completion_tokens", "cached_tokens")
_B64 = "$chatcli_b64"  # an extra holding the whole record, for text a column cannot hold (NUL on PostgreSQL)


@dataclass
class _Saved:
    """What this store knows of a session it loaded or saved: the row's ``version``, and per message its
    counts and turn number (so a save updates the session's figures from the changed messages alone)."""

    version: int
    counts: list[Counts]
    turns: list[int]
    total: Counts
    title: str | None = None


class SQLStore:
    """The shared machinery; see the module docstring. Subclasses set ``kind``, ``migrations`` and the
    driver hooks (``_open``, ``_lost``, ``_failure``, ``_try_lock``, ``_unlock``, ``_search``, ...).

    ``timeout`` is the longest, in seconds, one statement or a connection attempt may take; past it the
    operation fails with StoreUnavailable, so a hung database never hangs chatcli."""

    kind = "sql"
    #: migrations[n] brings the schema from version n to n + 1 (a list of statements, or a function of a
    #: cursor); the schema's version is the number of migrations applied
    migrations: Sequence[Sequence[str] | Callable[[Any], None]] = ()
    holds_nul = True       # False: text columns cannot hold NUL (PostgreSQL)
    begin_write = "BEGIN"
    begin_read = "BEGIN"

    def __init__(self, display: str, timeout: float = 10.0) -> None:
        self.display = display
        self.timeout = timeout
        self.writer = secrets.token_hex(8)  # this process's mark on the rows it saves
        self._conn: Any = None
        self._saved: dict[str, _Saved] = {}
        self._held: set[str] = set()     # session locks this store holds
        self._lost: set[str] = set()     # locks lost with a connection and taken by someone else since

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

    def _try_lock(self, cur: Any, session_id: str) -> bool:
        raise NotImplementedError

    def _unlock(self, cur: Any, session_id: str) -> None:
        raise NotImplementedError

    def _json(self, text: str | None) -> Any:
        """A JSON value as a parameter (the engine's cast, if it needs one, is in its SQL)."""
        return text

    def _upsert_messages(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _index_texts(self, cur: Any, session_id: str, rows: list[tuple[Any, ...]]) -> None:
        """Keep the engine's full-text index up to date for message rows just written (if it needs help)."""

    def _index_title(self, cur: Any, session_id: str, title: str) -> None:
        """Keep the full-text index of titles up to date (if the engine needs help)."""

    def _search_rows(self, cur: Any, words: list[str], role: str | None, session_id: str | None,
                     limit: int) -> list[tuple[Any, ...]]:
        """(session_id, title, turn, role, idx, content) of the best matches, best first."""
        raise NotImplementedError

    def _holds(self, column: str) -> str:
        """SQL true when ``column`` holds the (lower-case) parameter, case ignored."""
        return f"instr(lower({column}), %s) > 0"

    def disk_bytes(self) -> int:
        return 0

    # -- connections ---------------------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._open()
            self._migrate(self._conn)
            if self._held:  # a new connection after a lost one: take the session locks back
                cur = self._conn.cursor()
                for sid in sorted(self._held):
                    if not self._try_lock(cur, sid):
                        self._lost.add(sid)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    def _run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(cursor)`` on the connection, reconnecting once when the connection turns out to be gone.
        Driver errors leave as StoreUnavailable / StoreError naming the store and ``what`` was done."""
        errors = self._driver_errors()
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return fn(conn.cursor())
            except errors as e:
                if self._is_lost(e):
                    self._drop()
                    if attempt == 1:
                        continue
                    raise StoreUnavailable(f"the database {self.display} stopped answering while it {what} "
                                           f"({_said(e)})") from None
                raise self._failure(e) from None
        raise AssertionError("unreachable")

    @contextmanager
    def _tx(self, cur: Any, begin: str) -> Iterator[Any]:
        cur.execute(begin)
        try:
            yield cur
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - a lost connection rolls back by itself
                pass
            raise
        cur.execute("COMMIT")

    def _x(self, cur: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (``%s`` placeholders) and return the cursor."""
        cur.execute(sql, args)
        return cur

    def _many(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur.executemany(sql, rows)

    def close(self) -> None:
        if self._conn is not None and self._held:
            try:
                cur = self._conn.cursor()
                for sid in list(self._held):
                    self._unlock(cur, sid)
            except Exception:  # noqa: BLE001 - closing the connection releases them anyway
                pass
        self._held.clear()
        self._drop()

    # -- schema --------------------------------------------------------------------------------------------
    def schema_version(self, cur: Any) -> int:
        """How many migrations the database has (0: none yet)."""
        try:
            row = self._x(cur, "SELECT max(version) FROM chatcli_schema").fetchone()
        except self._driver_errors() as e:
            if self._is_lost(e):
                raise
            self._rollback_quietly(cur)
            return 0
        return int(row[0] or 0)

    def _rollback_quietly(self, cur: Any) -> None:
        try:
            cur.execute("ROLLBACK")
        except Exception:  # noqa: BLE001
            pass

    def _migrate(self, conn: Any, upto: int | None = None) -> None:
        """Apply the migrations the database lacks, each in its own transaction, under a lock that keeps
        two chatclis from migrating at once; refuse a database whose schema is newer than this chatcli
        knows. ``upto`` stops at that version (tests build old databases with it)."""
        cur = conn.cursor()
        want = len(self.migrations) if upto is None else upto
        have = self.schema_version(cur)
        if have > len(self.migrations):
            raise StoreError(f"the database {self.display} has chatcli schema version {have}, newer than this "
                             f"chatcli knows ({len(self.migrations)}): upgrade chatcli")
        if have >= want:
            return
        token = self._lock_schema(cur)
        try:
            for version in range(self.schema_version(cur), want):  # again, under the lock
                step = self.migrations[version]
                with self._tx(cur, self.begin_write):
                    if callable(step):
                        step(cur)
                    else:
                        for statement in step:
                            self._x(cur, statement)
                    self._x(cur, "INSERT INTO chatcli_schema (version, applied_at) VALUES (%s, %s)",
                            (version + 1, utc_now()))
        finally:
            self._unlock_schema(cur, token)

    def _lock_schema(self, cur: Any) -> Any:
        """Take the lock that serialises migrations (waits up to ``timeout``); returns what unlocks it."""
        raise NotImplementedError

    def _unlock_schema(self, cur: Any, token: Any) -> None:
        raise NotImplementedError

    # -- locks ---------------------------------------------------------------------------------------------
    def lock(self, session_id: str) -> _Lock:
        validate_id(session_id)

        def take(cur: Any) -> bool:
            return self._try_lock(cur, session_id)

        if session_id in self._held:
            raise SessionLocked(f"session {session_id} is already open in this chatcli")
        if not self._run("took a session lock", take):
            raise SessionLocked(f"session {session_id} is open in another chatcli (on this machine or another "
                                f"one sharing {self.display}); close that one first (`chatcli show {session_id}` "
                                f"reads it meanwhile)")
        self._held.add(session_id)
        self._lost.discard(session_id)
        return _Lock(self, session_id)

    def _release(self, session_id: str) -> None:
        if session_id not in self._held:
            return
        self._held.discard(session_id)
        if self._conn is not None and session_id not in self._lost:
            try:
                self._unlock(self._conn.cursor(), session_id)
            except Exception:  # noqa: BLE001 - a dead connection has released it
                self._drop()
        self._lost.discard(session_id)

    # -- reading one session -------------------------------------------------------------------------------
    def location(self, session_id: str) -> str:
        return f"{self.display} (session {session_id})"

    def stored_size(self, session_id: str) -> int | None:
        return None

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        validate_id(session_id)
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def ask(cur: Any) -> bool:
            return self._x(cur, f"SELECT 1 FROM chatcli_sessions WHERE id = %s AND deleted_at {deleted}",
                           (session_id,)).fetchone() is not None

        return bool(self._run("looked a session up", ask))

    def load(self, session_id: str, *, trashed: bool = False) -> Snapshot:
        validate_id(session_id)
        columns = ", ".join(f"{self._out(c) if c in _JSON_FIELDS else c}" for c in SESSION_FIELDS)
        mcols = ", ".join(self._out(c) if c in (*MESSAGE_JSON, "extra") else c for c in MESSAGE_COLUMNS)
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def read(cur: Any) -> tuple[Any, list[Any]]:
            with self._tx(cur, self.begin_read):
                row = self._x(cur, f"SELECT version, {columns} FROM chatcli_sessions WHERE id = %s AND "
                              f"deleted_at {deleted}", (session_id,)).fetchone()
                if row is None:
                    return None, []
                msgs = self._x(cur, f"SELECT {mcols} FROM chatcli_messages WHERE session_id = %s ORDER BY idx",
                               (session_id,)).fetchall()
            return row, msgs

        row, rows = self._run("read a session", read)
        if row is None:
            where = "the trash of " if trashed else ""
            raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        where = self.location(session_id)
        snap = _session_from_row(session_id, row[1:])
        snap["messages"] = [_message_from_row(r) for r in rows]
        snap = validate_snapshot(snap, where)
        counts = [message_counts(m) for m in snap["messages"]]
        total = NO_COUNTS
        for c in counts:
            total = total.plus(c)
        self._saved[session_id] = _Saved(int(row[0]), counts, [int(r[1]) for r in rows], total, snap["title"])
        return snap

    def _out(self, column: str) -> str:
        """How a JSON column is selected so that it arrives as text."""
        return column

    def saved_version(self, session_id: str) -> int | None:
        """The row version this store last saw for the session (None: not loaded or saved here)."""
        state = self._saved.get(session_id)
        return state.version if state is not None else None

    def row_version(self, session_id: str) -> tuple[int, str | None] | None:
        """The session row's (version, writer) in the database now, or None when there is no row."""
        def ask(cur: Any) -> Any:
            return self._x(cur, "SELECT version, writer FROM chatcli_sessions WHERE id = %s",
                           (session_id,)).fetchone()

        row = self._run("read a session's version", ask)
        return (int(row[0]), row[1]) if row is not None else None

    # -- writing -------------------------------------------------------------------------------------------
    def save(self, snapshot: Snapshot, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        sid = validate_id(snapshot["id"])
        if sid in self._lost:
            raise SessionLocked(f"session {sid} was opened by another chatcli while the connection to "
                                f"{self.display} was lost; nothing was overwritten")
        state = self._saved.get(sid)
        messages = snapshot["messages"]
        n = len(messages)
        start = 0 if state is None else max(0, min(changed_from, len(state.counts), n))
        tail = list(messages[start:])
        turn = state.turns[start - 1] if state is not None and start > 0 else 0
        turns: list[int] = []
        counts: list[Counts] = []
        for m in tail:
            if m.get("role") == "user":
                turn += 1
            turns.append(max(turn, 1))
            counts.append(message_counts(m))
        total = NO_COUNTS if state is None else state.total
        if state is not None:
            for c in state.counts[start:]:
                total = total.minus(c)
        for c in counts:
            total = total.plus(c)
        header = self._session_params(snapshot, total, n)
        rows = [self._message_row(sid, start + k, turns[k], m) for k, m in enumerate(tail)]

        def write(cur: Any) -> int:
            with self._tx(cur, self.begin_write):
                version = self._write_session(cur, sid, header, state)
                if rows:
                    self._upsert_messages(cur, rows)
                    self._index_texts(cur, sid, rows)
                if state is None or len(state.counts) > n:
                    self._x(cur, "DELETE FROM chatcli_messages WHERE session_id = %s AND idx >= %s", (sid, n))
                if state is None or state.title != snapshot["title"]:
                    self._index_title(cur, sid, header["title"])
            return version

        try:
            version = self._run("saved a session", write)
        except (StoreConflict, SessionExists, StoreUnavailable):
            raise
        except StoreError as e:
            raise SaveError(f"could not save session {sid} in {self.display}: {e}", self.display) from None
        if state is None:
            state = _Saved(version, [], [], NO_COUNTS)
            self._saved[sid] = state
        state.version = version
        del state.counts[start:], state.turns[start:]
        state.counts += counts
        state.turns += turns
        state.total = total
        state.title = snapshot["title"]
        return SaveInfo(location=self.location(sid), size=None, saved_at=utc_now())

    def _write_session(self, cur: Any, sid: str, header: dict[str, Any], state: _Saved | None) -> int:
        """Write the session row; return its new version. Raises StoreConflict when another writer saved
        the session since this store last saw it."""
        names = list(header)
        sets = ", ".join(f"{c} = {self._param(c)}" for c in names)
        values = [header[c] for c in names]
        if state is None:
            row = self._x(cur, "SELECT version, deleted_at FROM chatcli_sessions WHERE id = %s" + self._for_update,
                          (sid,)).fetchone()
            if row is None:
                cols = ", ".join(["id", *names, "version", "writer"])
                marks = ", ".join(["%s", *(self._param(c) for c in names), "%s", "%s"])
                self._x(cur, f"INSERT INTO chatcli_sessions ({cols}) VALUES ({marks})",
                        [sid, *values, 1, self.writer])
                return 1
            version = int(row[0]) + 1
            self._x(cur, f"UPDATE chatcli_sessions SET {sets}, version = %s, writer = %s WHERE id = %s",
                    [*values, version, self.writer, sid])
            return version
        seen = state.version
        for _ in (1, 2):
            cur = self._x(cur, f"UPDATE chatcli_sessions SET {sets}, version = %s, writer = %s "
                               f"WHERE id = %s AND version = %s", [*values, seen + 1, self.writer, sid, seen])
            if cur.rowcount == 1:
                return seen + 1
            row = self._x(cur, "SELECT version, writer FROM chatcli_sessions WHERE id = %s", (sid,)).fetchone()
            if row is None:
                raise StoreConflict(f"session {sid} is no longer in {self.display} (deleted by another chatcli "
                                    f"meanwhile); nothing was overwritten")
            if row[1] != self.writer:
                raise StoreConflict(f"session {sid} was changed in {self.display} by another chatcli since this "
                                    f"one read it (version {row[0]}, not {seen}); nothing was overwritten")
            seen = int(row[0])  # our own last commit landed though its answer was lost: go on from it
        raise StoreConflict(f"session {sid} could not be saved in {self.display}: its version keeps changing")

    _for_update = ""

    def _param(self, column: str) -> str:
        """The placeholder for a session column (JSON columns may need a cast)."""
        return "%s"

    def create(self, snapshot: Snapshot, *, trashed: bool = False) -> SaveInfo:
        sid = validate_id(snapshot["id"])

        def taken(cur: Any) -> bool:
            return self._x(cur, "SELECT 1 FROM chatcli_sessions WHERE id = %s", (sid,)).fetchone() is not None

        if self._run("looked a session up", taken):
            raise SessionExists(f"a session {sid} already exists in {self.display}; nothing was written")
        self._saved.pop(sid, None)
        info = self.save(snapshot)
        if trashed:
            self._set_deleted(sid, utc_now(), expect_live=True)
        return info

    def _session_params(self, snap: Snapshot, total: Counts, rows: int) -> dict[str, Any]:
        extra = {k: v for k, v in snap.items() if k not in KNOWN_KEYS}
        header: dict[str, Any] = {
            "title": snap["title"], "created_at": snap["created_at"], "updated_at": snap["updated_at"],
            "backend": snap["backend"], "model": snap["model"], "base_url": snap.get("base_url"),
            "model_path": snap.get("model_path"), "params": _dump(snap["params"]), "system": snap["system"],
            "context_start": snap["context_start"],
            "clears": _dump(snap["clears"]) if "clears" in snap else None,
            "changes": _dump(snap["changes"]) if "changes" in snap else None,
            "extra": _dump(extra) if extra else None, "format_version": snap["version"],
        }
        texts = [header[k] for k in ("title", "created_at", "updated_at", "backend", "model", "base_url",
                                     "model_path", "system")]
        if not all(isinstance(t, str) or t is None for t in texts) or (not self.holds_nul and _has_nul(header)):
            # a field a column cannot hold as it is: keep the whole header in extra, the columns cleaned
            whole = {k: v for k, v in snap.items() if k != "messages"}
            header["extra"] = _dump({_B64: base64.b64encode(_bytes(whole)).decode()})
            for k in ("title", "created_at", "updated_at", "backend", "model", "base_url", "model_path", "system"):
                header[k] = _clean(header[k]) if header[k] is not None else None
            for k in ("params", "clears", "changes"):
                header[k] = _clean(header[k]) if header[k] is not None else None
        header.update(zip(COUNT_COLUMNS, total, strict=True))
        header["turns"] = total.user_messages
        header["message_count"] = rows
        return {k: (self._json(v) if k in _JSON_FIELDS else v) for k, v in header.items()}

    def _message_row(self, sid: str, idx: int, turn: int, m: dict[str, Any]) -> tuple[Any, ...]:
        extra = {k: v for k, v in m.items() if k not in _MESSAGE_KEYS}
        texts: list[str | None] = []
        for k in MESSAGE_TEXT:
            v = m.get(k)
            if isinstance(v, str):
                texts.append(v)
            else:
                texts.append(None)
                if k in m:
                    extra[k] = v
        jsons = [_dump(m[k]) if k in m else None for k in MESSAGE_JSON]
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise SaveError(f"message {idx} of session {sid} has no text role and content; nothing was saved",
                            self.display)
        extra_text = _dump(extra) if extra else None
        if not self.holds_nul and (_has_nul(m) or _has_nul(extra)):
            extra_text = _dump({_B64: base64.b64encode(_bytes(m)).decode()})
            content, role = _clean(content), _clean(role)
            texts = [_clean(t) if t is not None else None for t in texts]
            jsons = [_clean(j) if j is not None else None for j in jsons]
        return (sid, idx, turn, role, _clean_surrogates(content), *[_clean_surrogates(t) for t in texts],
                *[self._json(j) for j in jsons], self._json(extra_text))

    # -- ids -----------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return self._ids("IS NULL")

    def trashed_ids(self) -> list[str]:
        return self._ids("IS NOT NULL")

    def _ids(self, deleted: str) -> list[str]:
        def ask(cur: Any) -> list[str]:
            return [r[0] for r in self._x(cur, f"SELECT id FROM chatcli_sessions WHERE deleted_at {deleted} "
                                                f"ORDER BY id").fetchall()]

        return list(self._run("listed sessions", ask))

    def newest_id(self) -> str | None:
        rows = self.page(limit=1).rows
        return rows[0].id if rows else None

    def ids_titled(self, title: str) -> list[str]:
        return [r.id for r in self.page(title=title).rows]

    # -- the trash ------------------------------------------------------------------------------------------
    def trash(self, session_id: str) -> None:
        lock = self.lock(session_id)
        try:
            self._set_deleted(session_id, utc_now(), expect_live=True)
        finally:
            lock.release()

    def restore(self, session_id: str) -> None:
        validate_id(session_id)
        self._set_deleted(session_id, None, expect_live=False)

    def _set_deleted(self, session_id: str, when: str | None, *, expect_live: bool) -> None:
        def move(cur: Any) -> str:
            with self._tx(cur, self.begin_write):
                row = self._x(cur, "SELECT deleted_at FROM chatcli_sessions WHERE id = %s" + self._for_update,
                              (session_id,)).fetchone()
                if row is None:
                    return "missing"
                if (row[0] is None) != expect_live:
                    return "live" if row[0] is None else "trashed"
                self._x(cur, "UPDATE chatcli_sessions SET deleted_at = %s, version = version + 1 WHERE id = %s",
                        (when, session_id))
            return "done"

        outcome = self._run("moved a session", move)
        if outcome == "missing" or (outcome == "trashed" and expect_live):
            where = "the trash of " if not expect_live else ""
            raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        if outcome == "live":
            raise SessionExists(f"a session {session_id} already exists in {self.display}; nothing was restored")
        self._saved.pop(session_id, None)

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        validate_id(session_id)
        lock = None if trashed else self.lock(session_id)
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def remove(cur: Any) -> int:
            with self._tx(cur, self.begin_write):
                found = self._x(cur, f"SELECT 1 FROM chatcli_sessions WHERE id = %s AND deleted_at {deleted}",
                                (session_id,)).fetchone()
                if found is None:
                    return 0
                self._x(cur, "DELETE FROM chatcli_messages WHERE session_id = %s", (session_id,))
                self._x(cur, "DELETE FROM chatcli_sessions WHERE id = %s", (session_id,))
            return 1

        try:
            if not self._run("removed a session", remove):
                where = "the trash of " if trashed else ""
                raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        finally:
            if lock is not None:
                lock.release()
        self._saved.pop(session_id, None)

    # -- the catalog ----------------------------------------------------------------------------------------
    def page(self, limit: int | None = None, *, since: str | None = None, before: str | None = None,
             model: str | None = None, title: str | None = None) -> Page:
        where = "deleted_at IS NULL"
        args: list[Any] = []
        if since:
            where += " AND updated_at >= %s"
            args.append(since)
        if before:
            where += " AND updated_at < %s"
            args.append(before)
        if model:
            where += " AND " + self._holds("model")
            args.append(model.lower())
        if title is not None:
            where += " AND " + self._title_is
            args.append(title)
        sql = (f"SELECT id, title, backend, model, turns, messages, created_at, updated_at, prompt_tokens, "
               f"completion_tokens FROM chatcli_sessions WHERE {where} ORDER BY updated_at DESC, id DESC")
        if limit is not None:
            sql += f" LIMIT {max(0, int(limit))}"

        def ask(cur: Any) -> tuple[int, list[Any]]:
            total = self._x(cur, f"SELECT count(*) FROM chatcli_sessions WHERE {where}", args).fetchone()[0]
            return int(total), self._x(cur, sql, args).fetchall()

        total, rows = self._run("listed sessions", ask)
        return Page([SessionSummary(id=r[0], title=r[1], backend=r[2], model=r[3], turns=int(r[4]),
                                    messages=int(r[5]), created_at=r[6], updated_at=r[7],
                                    location=self.location(r[0]), tokens=int(r[8]) + int(r[9]))
                     for r in rows], [], total)

    _title_is = "title = %s"

    def totals(self, active_since: str) -> dict[str, Any]:
        def ask(cur: Any) -> tuple[Any, list[Any]]:
            r = self._x(cur, "SELECT count(*), sum(messages), sum(user_messages), sum(assistant_messages), "
                             "sum(characters), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "
                             "sum(CASE WHEN updated_at >= %s THEN 1 ELSE 0 END) FROM chatcli_sessions "
                             "WHERE deleted_at IS NULL", (active_since,)).fetchone()
            models = self._x(cur, "SELECT backend, model, count(*) FROM chatcli_sessions WHERE deleted_at IS NULL "
                                  "GROUP BY backend, model").fetchall()
            return r, models

        r, models = self._run("added up sessions", ask)
        by_model = sorted(((f"{b}/{m}", int(n)) for b, m, n in models), key=lambda mn: (-mn[1], mn[0]))
        keys = ("sessions", "messages", "user_messages", "assistant_messages", "characters", "prompt_tokens",
                "completion_tokens", "cached_tokens", "active")
        out: dict[str, Any] = {k: int(v or 0) for k, v in zip(keys, r, strict=True)}
        out.update(models=by_model, damaged=0, bytes=self.disk_bytes())
        return out

    def search(self, text: str, *, role: str | None = None, session_id: str | None = None,
               limit: int = 20) -> list[SearchHit]:
        words = search_words(text)
        if not words:
            return []

        def ask(cur: Any) -> list[Any]:
            return self._search_rows(cur, words, role, session_id, max(1, limit))

        rows = self._run("searched", ask)
        return [SearchHit(r[0], r[1], int(r[2]), r[3], int(r[4]), snippet(r[5], words)) for r in rows]

    window = SEARCH_WINDOW


class _Lock:
    """A session lock held by a SQLStore (on its connection, or a lock file for SQLite)."""

    def __init__(self, store: SQLStore, session_id: str) -> None:
        self._store: SQLStore | None = store
        self.session_id = session_id

    def release(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store._release(self.session_id)


_JSON_FIELDS = frozenset({"params", "clears", "changes", "extra"})
_MESSAGE_KEYS = frozenset({"role", "content", *MESSAGE_TEXT, *MESSAGE_JSON})


def _session_from_row(sid: str, row: Sequence[Any]) -> Snapshot:
    f = dict(zip(SESSION_FIELDS, row, strict=True))
    extra = _load(f["extra"]) if f["extra"] is not None else {}
    if isinstance(extra, dict) and _B64 in extra:
        whole = orjson.loads(base64.b64decode(extra[_B64]))
        assert isinstance(whole, dict)
        return whole
    snap: Snapshot = {"format": FORMAT, "version": int(f["format_version"]), "id": sid, "title": f["title"],
                      "created_at": f["created_at"], "updated_at": f["updated_at"], "backend": f["backend"],
                      "model": f["model"]}
    if f["base_url"] is not None:
        snap["base_url"] = f["base_url"]
    if f["model_path"] is not None:
        snap["model_path"] = f["model_path"]
    snap.update(params=_load(f["params"]), system=f["system"], context_start=int(f["context_start"]))
    for key in ("clears", "changes"):
        if f[key] is not None:
            snap[key] = _load(f[key])
    if isinstance(extra, dict):
        snap.update(extra)
    return snap


def _message_from_row(row: Sequence[Any]) -> dict[str, Any]:
    extra = _load(row[-1]) if row[-1] is not None else None
    if isinstance(extra, dict) and _B64 in extra:
        whole = orjson.loads(base64.b64decode(extra[_B64]))
        assert isinstance(whole, dict)
        return whole
    m: dict[str, Any] = {"role": row[2], "content": row[3]}
    for k, v in zip(MESSAGE_TEXT, row[4:10], strict=True):
        if v is not None:
            m[k] = v
    for k, v in zip(MESSAGE_JSON, row[10:12], strict=True):
        if v is not None:
            m[k] = _load(v)
    if isinstance(extra, dict):
        m.update(extra)
    return m


def _bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(valid_unicode(value))


def _dump(value: Any) -> str:
    return _bytes(value).decode()


def _load(text: Any) -> Any:
    if isinstance(text, (dict, list)):  # a driver that decoded JSON itself
        return text
    return orjson.loads(text)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or "\\u0000" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _clean(text: Any) -> Any:
    """Text a column can hold: NUL as U+FFFD (the exact text is kept in ``extra``)."""
    if isinstance(text, str):
        return _clean_surrogates(text.replace("\x00", "\ufffd").replace("\\u0000", "\\ufffd"))
    return text


def _clean_surrogates(text: Any) -> Any:
    return valid_unicode(text) if isinstance(text, str) else text


def _said(e: BaseException) -> str:
    """A driver error's own words, on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
