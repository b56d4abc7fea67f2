"""The SQLite store: ``sqlite:////abs/path/chats.db`` or ``sqlite://chats.db`` (the standard library's
``sqlite3``).

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
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatcli.errors import SaveError, SessionLocked, StoreError
from chatcli.search import index_text
from chatcli.stores.folder import FileLock, ensure_folder
from chatcli.stores.folder_index import add_holds, fts_query
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_dialect import Dialect
from chatcli.stores.sql_errors import ErrorTable, Fault, Place, Rule, said
from chatcli.stores.sql_rows import Searched, unzipped
from chatcli.stores.sql_schema import migration_names_step, named, refill
from chatcli.stores.sql_search import MESSAGES, REASONING, TITLES, Match, Query, Scored, ranked_messages
from chatcli.stores.sql_write import upsert_messages
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
#: the triggers that put each new message row into the full-text indexes (schema 3 and 5); ``load_messages``
#: sets them aside for a batch of new sessions and indexes their rows in one statement each instead
_MESSAGES_AI = """CREATE TRIGGER chatcli_messages_ai AFTER INSERT ON chatcli_messages BEGIN
        INSERT INTO chatcli_messages_fts (rowid, words, session_id, role)
        VALUES (new.mid, new.words, new.session_id, new.role); END"""
_REASONING_AI = """CREATE TRIGGER chatcli_reasoning_ai AFTER INSERT ON chatcli_messages
        WHEN new.reasoning_words IS NOT NULL BEGIN
        INSERT INTO chatcli_reasoning_fts (rowid, reasoning_words, session_id)
        VALUES (new.mid, new.reasoning_words, new.session_id); END"""
#: what those triggers do, for every row after mid ``?`` at once
_INDEX_AFTER = (
    "INSERT INTO chatcli_messages_fts (rowid, words, session_id, role) "
    "SELECT mid, words, session_id, role FROM chatcli_messages WHERE mid > ?",
    "INSERT INTO chatcli_reasoning_fts (rowid, reasoning_words, session_id) "
    "SELECT mid, reasoning_words, session_id FROM chatcli_messages WHERE mid > ? AND reasoning_words IS NOT NULL",
)
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
    _MESSAGES_AI,
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
    _REASONING_AI,
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


class SQLite:
    """The SQLite engine (``sql_engine.Engine``) of the database file ``url.path``: the file is made by the
    first write; its folder must exist (StoreError otherwise). ``timeout``: seconds a statement waits for a
    lock another program holds on the file."""

    kind = "sqlite"
    streams_load = False
    dialect = Dialect(
        mark="?",
        begin_write="BEGIN IMMEDIATE",  # the write lock first: two writers never deadlock on upgrading theirs
        contains="chatcli_holds({column}, {mark})",
    )
    migrations = named(_TABLES, _SEARCH, _search_words, migration_names_step("TEXT"), _PARTS)
    secrets: frozenset[str] = frozenset()

    def __init__(self, url: StoreURL, timeout: float = 10.0) -> None:
        assert url.path is not None
        self.path = url.path
        self.display = url.display
        self.timeout = timeout
        self.place = Place(url.display, timeout)
        self.fulltext = FTS5()
        self.locks = FileLocks(self.path.parent / (self.path.name + ".locks"), timeout)
        self.in_memory = False  # the connection is the empty stand-in for a file not made yet
        self.make = False  # a write asked for the file: make it

    @property
    def errors(self) -> ErrorTable:
        return ERRORS

    def connect(self, password: str | None) -> sqlite3.Connection:
        """The file's connection; until a write asks for the file (``writing``), an empty database in memory
        stands in for a file that does not exist, so reads create nothing."""
        if not self.path.parent.is_dir():
            raise StoreError(
                f"cannot use {self.display}: the folder {self.path.parent} does not exist (chatcli makes the "
                f"database file, not its folder): create it, or fix the path"
            )
        self.in_memory = self.locks.in_memory = not self.make and not self.path.exists()
        if self.in_memory:
            return self._connect(":memory:")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot open {self.display}: {e.strerror}") from None
        return self._connect(str(self.path))

    def _connect(self, target: str) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=self.timeout, isolation_level=None)
        try:
            self._wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            add_holds(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """WAL mode for the file (kept in the file: once set, this is a no-op). Two connections switching a
        new file at once each hold a read lock and want the write lock; SQLite refuses one at once, without
        waiting (SQLITE_BUSY), so the switch is tried again every 10 ms for up to ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if _sqlite_code(e) != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def connect_fault(self, e: BaseException) -> Fault:
        return ERRORS.fault(e, connecting=True)

    def said(self, e: BaseException, fault: Fault) -> str:
        return said(e)

    def writing(self) -> bool:
        self.make = True  # a save makes the file, also when nothing was read before it
        return self.in_memory  # the first write after reads: from now on the database is the file

    def write_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        upsert_messages(cur, self.dialect, self.fulltext, rows, searched)

    def load_messages(self, cur: Any, messages: Iterable[tuple[tuple[Any, ...], Searched]]) -> None:
        """The rows inserted with the full-text insert triggers set aside, then indexed in one statement
        per index (a trigger run a row costs about three times as much), all in the caller's transaction:
        whatever happens, the triggers are as they were once it ends. The write lock it holds (BEGIN
        IMMEDIATE) keeps every other writer out meanwhile. New rows have the highest mids (AUTOINCREMENT)."""
        rows, searched = unzipped(messages)
        first = cur.execute("SELECT coalesce(max(mid), 0) FROM chatcli_messages").fetchone()[0]
        cur.execute("DROP TRIGGER chatcli_messages_ai")
        cur.execute("DROP TRIGGER chatcli_reasoning_ai")
        upsert_messages(cur, self.dialect, self.fulltext, rows, searched)
        for statement in _INDEX_AFTER:
            cur.execute(statement, (first,))
        cur.execute(_MESSAGES_AI)
        cur.execute(_REASONING_AI)

    def disk_bytes(self, cur: Any) -> int:
        """Bytes the database takes on disk: its file with its -wal and -shm files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        return total


def _sqlite_code(e: BaseException) -> object:
    """An SQLite error's primary result code (``sqlite3.Error.sqlite_errorcode`` without its extended
    bits); None for an error of the Python module itself."""
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


#: SQLite's errors, by result code (https://sqlite.org/rescode.html); a file does not hang up, so none is lost
ERRORS = ErrorTable(
    driver=(sqlite3.Error,),
    rules=(
        Rule(
            "SQLITE_BUSY, SQLITE_LOCKED",
            Fault.BUSY,
            codes=frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}),
        ),
        Rule(
            "SQLITE_NOTADB, SQLITE_CORRUPT",
            Fault.NOT_A_DATABASE,
            codes=frozenset({sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}),
        ),
    ),
    code=_sqlite_code,
)


class FileLocks:
    """Session locks as OS file locks in ``folder`` beside the database (``<file>.locks/<id>.lock``),
    released when their process ends however it ends; the migration lock is ``schema.lock`` there (waited
    for up to ``timeout`` seconds), not needed for the stand-in in memory (``in_memory``)."""

    on_connection = False

    def __init__(self, folder: Path, timeout: float) -> None:
        self.folder = folder
        self.timeout = timeout
        self.in_memory = False
        self._files: dict[str, FileLock] = {}

    def take(self, cur: Any, session_id: str) -> bool:
        try:
            ensure_folder(self.folder)
        except SaveError as e:
            raise SessionLocked(f"cannot lock session {session_id}: {e}") from None
        lock = FileLock(self.folder / f"{session_id}.lock")
        try:
            lock.acquire(session_id)
        except SessionLocked:
            return False
        self._files[session_id] = lock
        return True

    def release(self, cur: Any, session_id: str) -> None:
        lock = self._files.pop(session_id, None)
        if lock is not None:
            lock.release()

    def take_schema(self, cur: Any) -> Any:
        if self.in_memory:  # no one else can see a database in memory
            return None
        ensure_folder(self.folder)
        from filelock import FileLock as Blocking

        lock = Blocking(str(self.folder / "schema.lock"), timeout=self.timeout, mode=0o600)
        lock.acquire()
        return lock

    def release_schema(self, cur: Any, token: Any) -> None:
        if token is not None:
            token.release()


class FTS5:
    """Full-text search with FTS5 over the words chatcli.search cuts each message, reasoning and title into
    (``index_text``), tokenized by ``ascii`` (each word stays whole), kept up to date by triggers; ranked
    by bm25 (``rank``: lower is better); each word matched as a prefix."""

    best = "ASC"
    message_columns = ("words", "reasoning_words")
    title_column = "title_words"
    cast = ""

    def indexed(self, text: str) -> str:
        return index_text(text)

    def match(self, target: str, words: list[str]) -> Match:
        query = fts_query(words)
        if target == TITLES:
            source = "chatcli_titles_fts t JOIN chatcli_sessions s ON s.rowid = t.rowid"
            return Match(source, "chatcli_titles_fts MATCH ?", "t.rank", [query])
        table = "chatcli_reasoning_fts" if target == REASONING else "chatcli_messages_fts"
        return Match(table, f"{table} MATCH ?", "rank", [query], mid="rowid AS mid", at="", rows=False)

    def messages(self, cur: Any, dialect: Dialect, query: Query) -> list[Scored]:
        return ranked_messages(cur, dialect, self.match(MESSAGES, query.words), query, self.best)


def open_sqlite(url: StoreURL, timeout: float = 10.0) -> SQLStore:
    """The store of ``sqlite://`` URL ``url`` (see SQLite)."""
    return SQLStore(url, SQLite(url, timeout), timeout=timeout)
