"""The catalog of the SQL stores, over the tables of ``sql.py``: ids, the trash (a ``deleted_at`` mark),
``list`` pages, ``stats`` totals and ``search``. The engines add their full-text query (``_search_rows``)
and a few expressions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import SessionNotFound
from chatcli.search import SEARCH_WINDOW, SearchHit, search_words, snippet, wants_reasoning
from chatcli.snapshot import SessionSummary, validate_id
from chatcli.stores.base import Page, SessionLock, rows_limit


class SQLCatalog:
    """What SQLStore does over many sessions. Subclasses provide ``_run``, ``_x``, ``_tx``, ``lock``,
    ``location``, ``disk_bytes`` and ``_search_rows``."""

    window = SEARCH_WINDOW
    _title_is = "title = %s"  # exact, case counts (MySQL compares it as binary)
    _for_update: str  # (see SQLStore)
    begin_write: str
    display: str
    _saved: dict[str, Any]

    def lock(self, session_id: str) -> SessionLock:
        raise NotImplementedError

    def _tx(self, cur: Any, begin: str) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def _x(self, cur: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def location(self, session_id: str, *, trashed: bool = False) -> str:
        raise NotImplementedError

    def disk_bytes(self) -> int:
        """Space the store's tables take, in bytes."""
        raise NotImplementedError

    def _holds(self, column: str) -> str:
        """SQL true when ``column`` holds the (lower-case) parameter, case ignored (each engine's own)."""
        raise NotImplementedError

    def _search_rows(
        self,
        cur: Any,
        words: list[str],
        role: str | None,
        session_id: str | None,
        limit: int,
        reasoning: bool,
    ) -> list[tuple[Any, ...]]:
        """(session_id, title, turn, role, idx, text) of the best matches among the ``window`` most recent,
        best first; with ``reasoning`` the messages' reasoning too (role ``reasoning``, its text)."""
        raise NotImplementedError

    # -- ids -----------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return self._ids("IS NULL")

    def trashed_ids(self) -> list[str]:
        return self._ids("IS NOT NULL")

    def _ids(self, deleted: str) -> list[str]:
        def ask(cur: Any) -> list[str]:
            return [
                r[0]
                for r in self._x(
                    cur, f"SELECT id FROM chatcli_sessions WHERE deleted_at {deleted} ORDER BY id"
                ).fetchall()
            ]

        return list(self._run("listed sessions", ask))

    def newest_id(self) -> str | None:
        def ask(cur: Any) -> Any:
            return self._x(
                cur,
                "SELECT id FROM chatcli_sessions WHERE deleted_at IS NULL ORDER BY updated_at DESC, "
                "id DESC LIMIT 1",
            ).fetchone()

        row = self._run("looked for the newest session", ask)
        return str(row[0]) if row is not None else None

    def ids_titled(self, title: str) -> list[str]:
        return [r.id for r in self.page(title=title).rows]

    # -- the catalog ----------------------------------------------------------------------------------------
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
        where = "deleted_at IS NOT NULL" if trashed else "deleted_at IS NULL"
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
        sql = (
            f"SELECT {', '.join(SessionSummary.COLUMNS)} FROM chatcli_sessions WHERE {where} "
            f"ORDER BY updated_at DESC, id DESC"
        )
        limit = rows_limit(limit)
        if limit is not None:
            sql += f" LIMIT {limit}"

        def ask(cur: Any) -> tuple[int, list[Any]]:
            total = self._x(cur, f"SELECT count(*) FROM chatcli_sessions WHERE {where}", args).fetchone()[0]
            return int(total), self._x(cur, sql, args).fetchall()

        total, rows = self._run("listed sessions", ask)
        return Page(
            [SessionSummary.from_columns(r, self.location(r[0], trashed=trashed)) for r in rows],
            [],
            total,
        )

    def totals(self, active_since: str) -> dict[str, Any]:
        def ask(cur: Any) -> tuple[Any, list[Any]]:
            r = self._x(
                cur,
                "SELECT count(*), sum(messages), sum(user_messages), sum(assistant_messages), "
                "sum(characters), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "
                "sum(CASE WHEN updated_at >= %s THEN 1 ELSE 0 END) FROM chatcli_sessions "
                "WHERE deleted_at IS NULL",
                (active_since,),
            ).fetchone()
            models = self._x(
                cur,
                "SELECT backend, model, count(*) FROM chatcli_sessions WHERE deleted_at IS NULL "
                "GROUP BY backend, model",
            ).fetchall()
            return r, models

        r, models = self._run("added up sessions", ask)
        by_model = sorted(((f"{b}/{m}", int(n)) for b, m, n in models), key=lambda mn: (-mn[1], mn[0]))
        keys = (
            "sessions",
            "messages",
            "user_messages",
            "assistant_messages",
            "characters",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "active",
        )
        out: dict[str, Any] = {k: int(v or 0) for k, v in zip(keys, r, strict=True)}
        out.update(models=by_model, damaged=0, bytes=self.disk_bytes())
        return out

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        words = search_words(text)
        if not words:
            return []
        also = wants_reasoning(role, reasoning)

        def ask(cur: Any) -> list[Any]:
            return self._search_rows(cur, words, role, session_id, max(1, rows_limit(limit) or 1), also)

        rows = self._run("searched", ask)
        return [SearchHit(r[0], r[1], int(r[2]), r[3], int(r[4]), snippet(r[5], words)) for r in rows]

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
                row = self._x(
                    cur,
                    "SELECT deleted_at FROM chatcli_sessions WHERE id = %s" + self._for_update,
                    (session_id,),
                ).fetchone()
                if row is None:
                    return "missing"
                if (row[0] is None) != expect_live:
                    return "live" if row[0] is None else "trashed"
                self._x(
                    cur,
                    "UPDATE chatcli_sessions SET deleted_at = %s, version = version + 1 WHERE id = %s",
                    (when, session_id),
                )
            return "done"

        outcome = self._run("moved a session", move)
        if outcome != "done":  # a session is either live or in the trash: never both
            where = "" if expect_live else "the trash of "
            raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        self._saved.pop(session_id, None)

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        validate_id(session_id)
        lock = None if trashed else self.lock(session_id)
        deleted = "IS NOT NULL" if trashed else "IS NULL"

        def remove(cur: Any) -> int:
            with self._tx(cur, self.begin_write):
                found = self._x(
                    cur,
                    f"SELECT 1 FROM chatcli_sessions WHERE id = %s AND deleted_at {deleted}",
                    (session_id,),
                ).fetchone()
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
