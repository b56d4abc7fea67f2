"""The SQLite store: ``sqlite:///path/to/chats.db`` (the standard library's ``sqlite3``).

One database file (mode 0600, its folder 0700) in WAL mode with ``synchronous=FULL``: a committed save is
on disk. The writer lock of a session is an OS file lock in ``<file>.locks/`` beside the database (released
when its process ends, however it ends), so chatclis on one machine, or on machines sharing the folder
over a file system with working locks, never write the same session at once. Full-text search is FTS5 over
the words chatcli.search cuts each message and title into (columns ``words`` and ``title_words``, and
``reasoning_words`` for ``search --reasoning``, with the ``ascii`` tokenizer, which keeps every word whole),
kept up to date by triggers.

The file is made by the first save: until then a store whose file does not exist answers from an empty
database in memory, so ``list``, ``search`` or a mistyped path create nothing. Its folder must exist: a
store in a folder that does not is refused (a mistyped path never makes folders).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatcli.errors import ChatcliError, SaveError, SessionLocked, StoreError, StoreUnavailable
from chatcli.model import Conversation
from chatcli.paths import expanded
from chatcli.search import index_text, tie_break
from chatcli.stores.base import SaveInfo
from chatcli.stores.folder import FileLock, ensure_folder
from chatcli.stores.folder_index import add_holds, fts_query
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_rows import MESSAGE_COLUMNS, Searched
from chatcli.stores.sql_schema import migration_names_step, named, refill
from chatcli.stores.url import StoreURL

_TABLES = [
    "CREATE TABLE chatcli_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    """CREATE TABLE chatcli_sessions (
        id TEXT PRIMARY KEY, title TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        backend TEXT NOT NULL, model TEXT NOT NULL, base_url TEXT, model_path TEXT, params TEXT NOT NULL,
        system TEXT NOT NULL, context_start INTEGER NOT NULL, clears TEXT, changes TEXT, extra TEXT,
        format_version INTEGER NOT NULL, message_count INTEGER NOT NULL, turns INTEGER NOT NULL,
        messages INTEGER NOT NULL, user_messages INTEGER NOT NULL, assistant_messages INTEGER NOT NULL,
        characters INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL, version INTEGER NOT NULL, writer TEXT, deleted_at TEXT)""",
    "CREATE INDEX chatcli_sessions_updated ON chatcli_sessions (updated_at)",
    """CREATE TABLE chatcli_messages (
        mid INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES chatcli_sessions (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL, turn INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
        created_at TEXT, status TEXT, finish_reason TEXT, model TEXT, error TEXT, dropped TEXT,
        usage TEXT, timings TEXT, extra TEXT, UNIQUE (session_id, idx))""",
]
_SEARCH = [
    """CREATE VIRTUAL TABLE chatcli_messages_fts USING fts5(content, session_id UNINDEXED, role UNINDEXED,
        content='chatcli_messages', content_rowid='mid', tokenize='unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER chatcli_messages_ai AFTER INSERT ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (rowid, content, session_id, role)
        VALUES (new.mid, new.content, new.session_id, new.role); END""",
    """CREATE TRIGGER chatcli_messages_ad AFTER DELETE ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (chatcli_messages_fts, rowid, content, session_id, role)
        VALUES ('delete', old.mid, old.content, old.session_id, old.role); END""",
    """CREATE TRIGGER chatcli_messages_au AFTER UPDATE OF content, role ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (chatcli_messages_fts, rowid, content, session_id, role)
        VALUES ('delete', old.mid, old.content, old.session_id, old.role);
        INSERT INTO chatcli_messages_fts (rowid, content, session_id, role)
        VALUES (new.mid, new.content, new.session_id, new.role); END""",
    """CREATE VIRTUAL TABLE chatcli_titles_fts USING fts5(title, content='chatcli_sessions', content_rowid='rowid',
        tokenize='unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER chatcli_titles_ai AFTER INSERT ON chatcli_sessions BEGIN
        INSERT INTO chatcli_titles_fts (rowid, title) VALUES (new.rowid, new.title); END""",
    """CREATE TRIGGER chatcli_titles_ad AFTER DELETE ON chatcli_sessions BEGIN
        INSERT INTO chatcli_titles_fts (chatcli_titles_fts, rowid, title) VALUES ('delete', old.rowid, old.title);
        END""",
    """CREATE TRIGGER chatcli_titles_au AFTER UPDATE OF title ON chatcli_sessions BEGIN
        INSERT INTO chatcli_titles_fts (chatcli_titles_fts, rowid, title) VALUES ('delete', old.rowid, old.title);
        INSERT INTO chatcli_titles_fts (rowid, title) VALUES (new.rowid, new.title); END""",
    "INSERT INTO chatcli_messages_fts (chatcli_messages_fts) VALUES ('rebuild')",
    "INSERT INTO chatcli_titles_fts (chatcli_titles_fts) VALUES ('rebuild')",
]
#: schema 3, "search words": the words of chatcli.search in columns of their own, FTS5 over them with the
#: ``ascii`` tokenizer (it cuts at spaces and ASCII punctuation only, so each word stays whole)
_WORDS = [
    *(
        f"DROP TRIGGER chatcli_{t}"
        for t in ("messages_ai", "messages_ad", "messages_au", "titles_ai", "titles_ad", "titles_au")
    ),
    "DROP TABLE chatcli_messages_fts",
    "DROP TABLE chatcli_titles_fts",
    "ALTER TABLE chatcli_messages ADD COLUMN words TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE chatcli_sessions ADD COLUMN title_words TEXT NOT NULL DEFAULT ''",
]
_WORDS_INDEX = [  # (after the words are filled in: a trigger must never delete what the index lacks)
    """CREATE VIRTUAL TABLE chatcli_messages_fts USING fts5(words, session_id UNINDEXED, role UNINDEXED,
        content='chatcli_messages', content_rowid='mid', tokenize='ascii')""",
    """CREATE TRIGGER chatcli_messages_ai AFTER INSERT ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (rowid, words, session_id, role)
        VALUES (new.mid, new.words, new.session_id, new.role); END""",
    """CREATE TRIGGER chatcli_messages_ad AFTER DELETE ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (chatcli_messages_fts, rowid, words, session_id, role)
        VALUES ('delete', old.mid, old.words, old.session_id, old.role); END""",
    """CREATE TRIGGER chatcli_messages_au AFTER UPDATE OF words, role ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (chatcli_messages_fts, rowid, words, session_id, role)
        VALUES ('delete', old.mid, old.words, old.session_id, old.role);
        INSERT INTO chatcli_messages_fts (rowid, words, session_id, role)
        VALUES (new.mid, new.words, new.session_id, new.role); END""",
    """CREATE VIRTUAL TABLE chatcli_titles_fts USING fts5(title_words, content='chatcli_sessions',
        content_rowid='rowid', tokenize='ascii')""",
    """CREATE TRIGGER chatcli_titles_ai AFTER INSERT ON chatcli_sessions BEGIN
        INSERT INTO chatcli_titles_fts (rowid, title_words) VALUES (new.rowid, new.title_words); END""",
    """CREATE TRIGGER chatcli_titles_ad AFTER DELETE ON chatcli_sessions BEGIN
        INSERT INTO chatcli_titles_fts (chatcli_titles_fts, rowid, title_words)
        VALUES ('delete', old.rowid, old.title_words); END""",
    """CREATE TRIGGER chatcli_titles_au AFTER UPDATE OF title_words ON chatcli_sessions BEGIN
        INSERT INTO chatcli_titles_fts (chatcli_titles_fts, rowid, title_words)
        VALUES ('delete', old.rowid, old.title_words);
        INSERT INTO chatcli_titles_fts (rowid, title_words) VALUES (new.rowid, new.title_words); END""",
    "INSERT INTO chatcli_messages_fts (chatcli_messages_fts) VALUES ('rebuild')",
    "INSERT INTO chatcli_titles_fts (chatcli_titles_fts) VALUES ('rebuild')",
]


#: schema 5, "message parts": messages made of more than text keep their parts; their reasoning has words
#: and an FTS5 index of its own (only rows with reasoning are in it: ``search --reasoning``)
_PARTS = [
    "ALTER TABLE chatcli_messages ADD COLUMN parts TEXT",
    "ALTER TABLE chatcli_messages ADD COLUMN reasoning_words TEXT",
    """CREATE VIRTUAL TABLE chatcli_reasoning_fts USING fts5(reasoning_words, session_id UNINDEXED,
        content='chatcli_messages', content_rowid='mid', tokenize='ascii')""",
    """CREATE TRIGGER chatcli_reasoning_ai AFTER INSERT ON chatcli_messages
        WHEN new.reasoning_words IS NOT NULL BEGIN
        INSERT INTO chatcli_reasoning_fts (rowid, reasoning_words, session_id)
        VALUES (new.mid, new.reasoning_words, new.session_id); END""",
    """CREATE TRIGGER chatcli_reasoning_ad AFTER DELETE ON chatcli_messages
        WHEN old.reasoning_words IS NOT NULL BEGIN
        INSERT INTO chatcli_reasoning_fts (chatcli_reasoning_fts, rowid, reasoning_words, session_id)
        VALUES ('delete', old.mid, old.reasoning_words, old.session_id); END""",
    """CREATE TRIGGER chatcli_reasoning_au AFTER UPDATE OF reasoning_words ON chatcli_messages BEGIN
        INSERT INTO chatcli_reasoning_fts (chatcli_reasoning_fts, rowid, reasoning_words, session_id)
        SELECT 'delete', old.mid, old.reasoning_words, old.session_id WHERE old.reasoning_words IS NOT NULL;
        INSERT INTO chatcli_reasoning_fts (rowid, reasoning_words, session_id)
        SELECT new.mid, new.reasoning_words, new.session_id WHERE new.reasoning_words IS NOT NULL; END""",
]


def _search_words(cur: Any) -> None:
    """Schema 3: every message and title indexed again by chatcli's definition of a word."""
    for statement in _WORDS:
        cur.execute(statement)
    refill(
        cur,
        "SELECT mid, content, NULL FROM chatcli_messages WHERE mid > ? ORDER BY mid LIMIT 500",
        "UPDATE chatcli_messages SET words = ? WHERE mid = ?",
        index_text,
        first=-1,
    )
    refill(
        cur,
        "SELECT id, title, NULL FROM chatcli_sessions WHERE id > ? ORDER BY id LIMIT 500",
        "UPDATE chatcli_sessions SET title_words = ? WHERE id = ?",
        index_text,
        first="",
    )
    for statement in _WORDS_INDEX:
        cur.execute(statement)


class SQLiteStore(SQLStore):
    """Sessions in the SQLite database at ``path`` (the file is created by the first save; its folder must
    exist: StoreError otherwise)."""

    kind = "sqlite"
    migrations = named(
        _TABLES,
        _SEARCH,
        _search_words,
        migration_names_step("TEXT"),
        _PARTS,
    )
    locks_on_connection = False  # lock files: nothing to keep alive
    begin_write = "BEGIN IMMEDIATE"
    begin_read = "BEGIN"

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self.path = expanded(path)
        super().__init__(StoreURL("sqlite", path=self.path), timeout)
        self.lock_dir = self.path.parent / (self.path.name + ".locks")
        self._files: dict[str, FileLock] = {}
        self._in_memory = False  # the connection is the empty stand-in for a file not made yet
        self._make = False  # a save asked for the file: make it

    def _connection(self) -> Any:
        if self._conn is None and not self.path.parent.is_dir():
            raise StoreError(
                f"cannot use {self.display}: the folder {self.path.parent} does not exist (chatcli makes the "
                f"database file, not its folder): create it, or fix the path"
            )
        if self._conn is None and not self._make and not self.path.exists():
            conn = self._connect(":memory:")  # the empty stand-in, until a save makes the file
            self._in_memory = True
            self._migrate(conn)
            self._conn = conn
            return conn
        return super()._connection()

    def _open(self) -> Any:
        self._in_memory = False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot open {self.display}: {e.strerror}") from None
        return self._connect(str(self.path))

    def _connect(self, target: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            add_holds(conn)
        except sqlite3.DatabaseError as e:
            raise self._failure(e) from None
        return conn

    def _save(
        self, conv: Conversation, changed_from: int, create: bool = False, deleted_at: str | None = None
    ) -> SaveInfo:
        self._make = True  # a save makes the file, also when nothing was read before it
        if self._in_memory:  # the first save after reads: from now on the database is the file
            self._drop()
        return super()._save(conv, changed_from, create, deleted_at)

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        self._make = True  # (as ``_save``)
        if self._in_memory:
            self._drop()
        return super().create_many(items)

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _is_lost(self, e: BaseException) -> bool:
        return False  # a file does not hang up

    def _failure(self, e: BaseException) -> ChatcliError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return StoreUnavailable(
                f"{self.display} is busy (locked by another program) for more than {self.timeout:g} s"
            )
        if "not a database" in text or "malformed" in text:
            return StoreError(
                f"{self.path} is not an SQLite database chatcli can use ({text}); move it away "
                f"or choose another file"
            )
        return StoreError(f"{self.display}: {self._said(e)}")

    def _x(self, cur: Any, sql: str, args: Any = ()) -> Any:
        cur.execute(sql.replace("%s", "?"), args)
        return cur

    def _many(self, cur: Any, sql: str, rows: Any) -> None:
        cur.executemany(sql.replace("%s", "?"), rows)

    # -- locks: files beside the database ---------------------------------------------------------------
    def _try_lock(self, cur: Any, session_id: str) -> bool:
        if session_id in self._files:  # held already (taken again when the stand-in gives way to the file)
            return True
        try:
            ensure_folder(self.lock_dir)
        except SaveError as e:
            raise SessionLocked(f"cannot lock session {session_id}: {e}") from None
        lock = FileLock(self.lock_dir / f"{session_id}.lock")
        try:
            lock.acquire(session_id)
        except SessionLocked:
            return False
        self._files[session_id] = lock
        return True

    def _unlock(self, cur: Any, session_id: str) -> None:
        lock = self._files.pop(session_id, None)
        if lock is not None:
            lock.release()

    def _release(self, session_id: str) -> None:
        self._held.discard(session_id)
        self._unlock(None, session_id)

    def _close(self) -> None:
        for sid in list(self._files):
            self._unlock(None, sid)
        self._held.clear()
        self._drop()

    def _lock_schema(self, cur: Any) -> Any:
        if self._in_memory:  # no one else can see a database in memory
            return None
        ensure_folder(self.lock_dir)
        from filelock import FileLock as Blocking

        lock = Blocking(str(self.lock_dir / "schema.lock"), timeout=self.timeout, mode=0o600)
        lock.acquire()
        return lock

    def _unlock_schema(self, cur: Any, token: Any) -> None:
        if token is not None:
            token.release()

    # -- rows ---------------------------------------------------------------------------------------------
    def _upsert_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        cols = ["session_id", *MESSAGE_COLUMNS, "words", "reasoning_words"]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        self._many(
            cur,
            f"INSERT INTO chatcli_messages ({', '.join(cols)}) VALUES ({', '.join(['?'] * len(cols))}) "
            f"ON CONFLICT (session_id, idx) DO UPDATE SET {updates}",
            [(*r, *w) for r, w in zip(rows, searched, strict=True)],
        )

    def _searched(self, text: str) -> str:
        return index_text(text)

    def _search_rows(
        self,
        cur: Any,
        words: list[str],
        role: str | None,
        session_id: str | None,
        limit: int,
        reasoning: bool,
    ) -> list[tuple[Any, ...]]:
        query = fts_query(words)
        found: list[tuple[float, tuple[Any, ...]]] = []
        if role != "title":
            inner = "SELECT rowid AS r, rank AS score FROM chatcli_messages_fts WHERE chatcli_messages_fts MATCH ?"
            args: list[Any] = [query]
            if role:
                inner += " AND role = ?"
                args.append(role)
            if session_id:
                inner += " AND session_id = ?"
                args.append(session_id)
            sql = (
                f"SELECT b.score, m.session_id, s.title, m.turn, m.role, m.idx, m.content FROM ({inner} ORDER BY "
                f"rowid DESC LIMIT ?) AS b JOIN chatcli_messages m ON m.mid = b.r JOIN chatcli_sessions s ON "
                f"s.id = m.session_id WHERE s.deleted_at IS NULL ORDER BY b.score, m.session_id DESC, m.idx LIMIT ?"
            )
            found += [(r[0], r[1:]) for r in cur.execute(sql, [*args, self.window, limit])]
        if role in (None, "title"):
            sql = (
                "SELECT t.rank, s.id, s.title, 0, 'title', -1, s.title FROM chatcli_titles_fts t JOIN "
                "chatcli_sessions s ON s.rowid = t.rowid WHERE chatcli_titles_fts MATCH ? AND s.deleted_at IS NULL"
            )
            args = [query]
            if session_id:
                sql += " AND s.id = ?"
                args.append(session_id)
            found += [
                (r[0], r[1:])
                for r in cur.execute(sql + " ORDER BY t.rank, s.id DESC LIMIT ?", [*args, limit])
            ]
        if reasoning:
            found += self._reasoning_rows(cur, query, session_id, limit)
        found.sort(key=lambda sr: (sr[0], tie_break(sr[1][0], sr[1][4])))  # bm25: lower is better
        return [r for _, r in found[:limit]]

    def _reasoning_rows(
        self, cur: Any, query: str, session_id: str | None, limit: int
    ) -> list[tuple[float, tuple[Any, ...]]]:
        inner = "SELECT rowid AS mid, rank AS score FROM chatcli_reasoning_fts WHERE chatcli_reasoning_fts MATCH %s"
        args: list[Any] = [query]
        if session_id:
            inner += " AND session_id = %s"
            args.append(session_id)
        return self._reasoning_hits(cur, inner, args, limit, best="ASC")  # bm25: lower is better

    def _holds(self, column: str) -> str:
        return f"chatcli_holds({column}, %s)"

    def disk_bytes(self) -> int:
        """Bytes the database takes on disk: its file with its -wal and -shm files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        return total


def open_sqlite(url: StoreURL, timeout: float = 10.0) -> SQLiteStore:
    """The store of ``sqlite://`` URL ``url`` (see SQLiteStore)."""
    assert url.path is not None
    return SQLiteStore(url.path, timeout)
