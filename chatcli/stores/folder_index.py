"""A cache of the sessions folder for fast ``list`` and ``search``: ``<sessions>/.index.sqlite``.

The JSON snapshots stay the source of truth. The index holds one row per snapshot (its summary and the
file's size and mtime) and every message's text with its words (chatcli.search) in an SQLite FTS5 table.
Before each use it is brought up to date by one ``scandir`` of the folder: files whose size or mtime
changed are read again, vanished files are dropped. Deleting the index (or finding it damaged) loses
nothing: it is rebuilt from the files.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from chatcli.errors import SessionNotFound, SnapshotError, StoreError
from chatcli.search import (
    HIGHLIGHT,
    REASONING,
    SEARCH_WINDOW,
    SearchHit,
    index_text,
    search_words,
    snippet,
    wants_reasoning,
)
from chatcli.snapshot import DamagedFile, SessionSummary, summarize
from chatcli.stores.base import Page, rows_limit

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from chatcli.model import Conversation


class Files(Protocol):
    """What the index needs of its folder store."""

    root: Path

    def ensure_root(self) -> None:
        """Create the sessions folder if it is missing."""
        ...

    def path_for(self, session_id: str) -> Path:
        """The snapshot file of a live session."""
        ...

    def snapshot_entries(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(session id, directory entry) for every snapshot file in the folder, in no order."""
        ...

    def load_path(self, path: Path, session_id: str | None = None) -> Conversation:
        """The validated session in ``path``. Raises SnapshotError (damaged or foreign), OSError."""
        ...


INDEX_NAME = ".index.sqlite"
#: 2: a session's texts have the rowids of its range (see _ROWS_SHIFT); 3: turns skip undone ones; 4: the
#: words of chatcli.search, with FTS5's ascii tokenizer (each word whole); 5: reasoning, as texts of the role
#: ``reasoning``; 6: tool calls and results (``Message.searched_text``)
SCHEMA_VERSION = 6
#: the texts of the session in files row R have rowids R << _ROWS_SHIFT onwards, so forgetting a session
#: deletes one rowid range (an FTS5 UNINDEXED column cannot be searched without reading the whole table)
_ROWS_SHIFT = 24

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, damaged TEXT,
    title TEXT, backend TEXT, model TEXT, turns INTEGER, messages INTEGER,
    prompt_tokens INTEGER, completion_tokens INTEGER, cached_tokens INTEGER,
    user_messages INTEGER, assistant_messages INTEGER, characters INTEGER,
    created_at TEXT, updated_at TEXT
);
CREATE INDEX IF NOT EXISTS files_updated ON files(updated_at);
CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5(
    words, content UNINDEXED, session_id UNINDEXED, turn UNINDEXED, role UNINDEXED, position UNINDEXED,
    tokenize = 'ascii'
);
"""


class SessionIndex:
    """The catalog of one FolderStore, kept in ``<folder>/.index.sqlite``. Every reading method first
    brings it up to date (``refresh``). Use as a context manager, or call ``close``."""

    def __init__(self, store: Files, on_progress: Callable[[int, int], None] | None = None) -> None:
        """``on_progress(done, total)`` is called while a refresh (re)reads 500 files or more: every 500
        and at the end."""
        self.store = store
        self.path = store.root / INDEX_NAME
        self.on_progress = on_progress
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> SessionIndex:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the database ----------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self.store.ensure_root()
        for attempt in (1, 2):
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError as e:
                    raise StoreError(
                        f"cannot use {self.path}, the sessions folder's index ({e.strerror}): it is only a "
                        f"cache of the session files; move it away and chatcli makes it again"
                    ) from None
                os.close(fd)
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif row[0] != str(SCHEMA_VERSION):
                    raise sqlite3.DatabaseError("index schema changed")
                self._db = db
                return db
            except sqlite3.DatabaseError:
                if attempt == 2:
                    raise
                self.drop()  # a damaged or outdated cache: rebuild it from the snapshots
        raise AssertionError("unreachable")

    def drop(self) -> None:
        """Delete the index files (it is only a cache)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(str(self.path) + suffix)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Close the index database (also done by leaving the ``with`` block). Safe to call twice."""
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- keeping it up to date -------------------------------------------------------------------------
    def refresh(self) -> int:
        """Re-read every snapshot whose size or mtime changed and forget vanished ones; return how many
        files were (re)indexed."""
        db = self._connect()
        known = {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, size, mtime_ns FROM files")}
        seen: dict[str, tuple[int, int]] = {}
        for sid, e in self.store.snapshot_entries():
            try:
                st = e.stat(follow_symlinks=False)  # a link is listed as damaged, never followed
            except OSError:
                continue
            seen[sid] = (st.st_size, st.st_mtime_ns)
        changed = [sid for sid, sig in seen.items() if known.get(sid) != sig]
        changed.sort(key=lambda sid: seen[sid][1])  # oldest change first: rowids grow with recency
        gone = [sid for sid in known if sid not in seen]
        if not changed and not gone:
            return 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for sid in gone:
                self._forget(db, sid)
            for n, sid in enumerate(changed, 1):
                self._index_file(db, sid, seen[sid])
                if (
                    self.on_progress is not None
                    and len(changed) >= 500
                    and (n % 500 == 0 or n == len(changed))
                ):
                    self.on_progress(n, len(changed))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(changed)

    def _forget(self, db: sqlite3.Connection, sid: str) -> None:
        row = db.execute("SELECT rowid FROM files WHERE id = ?", (sid,)).fetchone()
        if row is None:
            return
        db.execute("DELETE FROM files WHERE id = ?", (sid,))
        first = row[0] << _ROWS_SHIFT
        db.execute("DELETE FROM texts WHERE rowid BETWEEN ? AND ?", (first, first + (1 << _ROWS_SHIFT) - 1))

    def _index_file(self, db: sqlite3.Connection, sid: str, sig: tuple[int, int]) -> None:
        self._forget(db, sid)
        path = self.store.path_for(sid)
        try:
            conv = self.store.load_path(path, sid)
        except (SnapshotError, SessionNotFound) as e:
            db.execute(
                "INSERT INTO files (id, size, mtime_ns, damaged) VALUES (?, ?, ?, ?)",
                (sid, sig[0], sig[1], str(e)),
            )
            return
        c, h = summarize(conv), conv.header
        cursor = db.execute(
            "INSERT INTO files VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sid,
                sig[0],
                sig[1],
                h.title,
                h.backend,
                h.model,
                c.user_messages,
                c.messages,
                c.prompt_tokens,
                c.completion_tokens,
                c.cached_tokens,
                c.user_messages,
                c.assistant_messages,
                c.characters,
                h.created_at,
                h.updated_at,
            ),
        )
        first = (cursor.lastrowid or 0) << _ROWS_SHIFT
        rows: list[tuple[int, str, str, str, int, str, int]] = []
        if h.title:
            rows.append((first, index_text(h.title), h.title, sid, 0, "title", -1))
        turn = 0
        for i, m in enumerate(conv.messages):
            turn += m.starts_turn
            for role, text in ((m.role, m.searched_text), (REASONING, m.reasoning)):
                if text:
                    rows.append((first + len(rows), index_text(text), text, sid, max(turn, 1), role, i))
        db.executemany(
            "INSERT INTO texts (rowid, words, content, session_id, turn, role, position) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows[: 1 << _ROWS_SHIFT],
        )

    # -- reading ---------------------------------------------------------------------------------------
    def page(
        self,
        limit: int | None = None,
        *,
        since: str | None = None,
        before: str | None = None,
        model: str | None = None,
        title: str | None = None,
    ) -> Page:
        """As ``Store.page``, with the damaged files of the folder. Only the rows shown are read."""
        self.refresh()
        db = self._connect()
        where = "damaged IS NULL"
        args: list[Any] = []
        if since:
            where += " AND updated_at >= ?"
            args.append(since)
        if before:
            where += " AND updated_at < ?"
            args.append(before)
        if model:
            add_holds(db)
            where += " AND chatcli_holds(model, ?)"
            args.append(model.lower())
        if title is not None:
            where += " AND title = ?"
            args.append(title)
        total = int(db.execute(f"SELECT count(*) FROM files WHERE {where}", args).fetchone()[0])
        path_for = self.store.path_for
        sql = (
            f"SELECT {', '.join(SessionSummary.COLUMNS)} FROM files WHERE {where} ORDER BY updated_at DESC, "
            f"id DESC LIMIT ?"
        )
        rows = [
            SessionSummary.from_columns(r, str(path_for(r[0])))
            for r in db.execute(sql, [*args, -1 if limit is None else rows_limit(limit)])
        ]
        damaged = [
            DamagedFile(str(path_for(r[0])), r[1])
            for r in db.execute("SELECT id, damaged FROM files WHERE damaged IS NOT NULL ORDER BY id")
        ]
        return Page(rows, damaged, total)

    def totals(self, active_since: str) -> dict[str, Any]:
        """As ``Store.totals``; ``bytes`` is the size of the snapshot files."""
        self.refresh()
        db = self._connect()
        r = db.execute(
            "SELECT count(*), sum(messages), sum(user_messages), sum(assistant_messages), "
            "sum(characters), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "
            "sum(size), sum(updated_at >= ?) FROM files WHERE damaged IS NULL",
            (active_since,),
        ).fetchone()
        models = db.execute(
            "SELECT backend || '/' || model, count(*) FROM files WHERE damaged IS NULL "
            "GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
        damaged = db.execute("SELECT count(*) FROM files WHERE damaged IS NOT NULL").fetchone()[0]
        return {
            "sessions": r[0] or 0,
            "active": r[9] or 0,
            "messages": r[1] or 0,
            "user_messages": r[2] or 0,
            "assistant_messages": r[3] or 0,
            "characters": r[4] or 0,
            "prompt_tokens": r[5] or 0,
            "completion_tokens": r[6] or 0,
            "cached_tokens": r[7] or 0,
            "bytes": r[8] or 0,
            "models": [(m, n) for m, n in models],
            "damaged": damaged,
        }

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        """As ``Store.search`` (reasoning is indexed as texts of the role ``reasoning``). Matches are ranked
        among the ``SEARCH_WINDOW`` most recent ones (every match when there are fewer): ranking all the
        matches of a word found in most of a million messages would take seconds."""
        words = search_words(text)
        if not words:
            return []
        self.refresh()
        db = self._connect()
        # Newest first (rowids grow with the time a file was indexed, see refresh) the FTS5 doclist stops
        # after SEARCH_WINDOW matches; only those are ranked.
        sql = (
            "SELECT t.session_id, t.turn, t.role, t.position, t.content, rank AS score "
            "FROM texts t WHERE texts MATCH ?"
        )
        args: list[Any] = [fts_query(words)]
        if role:
            sql += " AND t.role IN (?, ?)"
            args += [role, REASONING if wants_reasoning(role, reasoning) else role]
        elif not reasoning:
            sql += " AND t.role != ?"
            args.append(REASONING)
        if session_id:
            sql += " AND t.session_id = ?"
            args.append(session_id)
        sql = (
            f"SELECT b.session_id, f.title, b.turn, b.role, b.position, b.content FROM ({sql} ORDER BY "
            f"t.rowid DESC LIMIT ?) AS b JOIN files f ON f.id = b.session_id "
            f"ORDER BY b.score, b.session_id DESC, b.position LIMIT ?"
        )
        args += [SEARCH_WINDOW, max(1, rows_limit(limit) or 1)]
        return [
            SearchHit(sid, title, turn, role, pos, snippet(content, words))
            for sid, title, turn, role, pos, content in db.execute(sql, args)
        ]


def add_holds(db: sqlite3.Connection) -> None:
    """Give ``db`` the SQL function ``chatcli_holds(text, part)``: whether ``text`` lower-cased holds
    ``part`` (the filter ``list --model`` uses on both SQLite stores)."""
    db.create_function(
        "chatcli_holds", 2, lambda text, part: part in (text or "").lower(), deterministic=True
    )


def fts_query(words: list[str]) -> str:
    """An FTS5 query matching every word as a prefix: ``[rome, empire]`` -> ``"rome"* "empire"*``. Quotes
    and operators are taken literally."""
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words)


__all__ = ["HIGHLIGHT", "INDEX_NAME", "SessionIndex", "add_holds", "fts_query"]
