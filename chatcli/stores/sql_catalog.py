"""The catalog and the trash of the SQL stores, over the tables of ``sql.py``: ids, ``list`` pages, ``stats``
totals and ``search`` (``SQLCatalog``); trash, restore and purge, the trash being a ``deleted_at`` mark
(``SQLTrash``). Each is handed what it needs: the store's ``Runner`` and its ``Engine``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import SessionNotFound
from chatcli.search import SEARCH_WINDOW, SearchHit, search_words, snippet, wants_reasoning
from chatcli.snapshot import SessionSummary, validate_id
from chatcli.stores.base import Page, rows_limit
from chatcli.stores.sql_engine import Engine
from chatcli.stores.sql_runner import Runner, x
from chatcli.stores.sql_schema import transaction
from chatcli.stores.sql_search import Query, search_rows

#: the figures of ``totals`` in the order the query sums them
_TOTALS = (
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


def location(display: str, session_id: str, trashed: bool = False) -> str:
    """Where a session of the store shown as ``display`` is, for messages."""
    return f"{display} (session {session_id}{', in the trash' if trashed else ''})"


class SQLCatalog:
    """The sessions of ``engine``'s database, reached through ``runner``, as a whole (the Catalog protocol);
    ``display`` names the store."""

    window = SEARCH_WINDOW  # the most recent matches a search ranks

    def __init__(self, runner: Runner, engine: Engine, display: str) -> None:
        self.runner = runner
        self.engine = engine
        self.display = display

    # -- ids -----------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return self._ids("IS NULL")

    def trashed_ids(self) -> list[str]:
        return self._ids("IS NOT NULL")

    def _ids(self, deleted: str) -> list[str]:
        def ask(cur: Any) -> list[str]:
            sql = f"SELECT id FROM chatcli_sessions WHERE deleted_at {deleted} ORDER BY id"
            return [r[0] for r in x(cur, sql).fetchall()]

        return list(self.runner.run("listed sessions", ask))

    def newest_id(self) -> str | None:
        def ask(cur: Any) -> Any:
            return x(
                cur,
                "SELECT id FROM chatcli_sessions WHERE deleted_at IS NULL ORDER BY updated_at DESC, "
                "id DESC LIMIT 1",
            ).fetchone()

        row = self.runner.run("looked for the newest session", ask)
        return str(row[0]) if row is not None else None

    def ids_titled(self, title: str) -> list[str]:
        return [r.id for r in self.page(title=title).rows]

    # -- pages, totals, search -----------------------------------------------------------------------------
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
        d = self.engine.dialect
        where = "deleted_at IS NOT NULL" if trashed else "deleted_at IS NULL"
        args: list[Any] = []
        for condition, value in (
            (f"updated_at >= {d.mark}", since or None),
            (f"updated_at < {d.mark}", before or None),
            (d.holds("model"), model.lower() if model else None),
            (d.equals("title"), title),
        ):
            if value is not None:
                where += " AND " + condition
                args.append(value)
        sql = (
            f"SELECT {', '.join(SessionSummary.COLUMNS)} FROM chatcli_sessions WHERE {where} "
            f"ORDER BY updated_at DESC, id DESC"
        )
        limit = rows_limit(limit)
        if limit is not None:
            sql += f" LIMIT {limit}"

        def ask(cur: Any) -> tuple[int, list[Any]]:
            total = x(cur, f"SELECT count(*) FROM chatcli_sessions WHERE {where}", args).fetchone()[0]
            return int(total), x(cur, sql, args).fetchall()

        total, rows = self.runner.run("listed sessions", ask)
        shown = [SessionSummary.from_columns(r, location(self.display, r[0], trashed)) for r in rows]
        return Page(shown, [], total)

    def totals(self, active_since: str) -> dict[str, Any]:
        def ask(cur: Any) -> tuple[Any, list[Any]]:
            r = x(
                cur,
                "SELECT count(*), sum(messages), sum(user_messages), sum(assistant_messages), "
                "sum(characters), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "
                f"sum(CASE WHEN updated_at >= {self.engine.dialect.mark} THEN 1 ELSE 0 END) FROM "
                "chatcli_sessions WHERE deleted_at IS NULL",
                (active_since,),
            ).fetchone()
            models = x(
                cur,
                "SELECT backend, model, count(*) FROM chatcli_sessions WHERE deleted_at IS NULL "
                "GROUP BY backend, model",
            ).fetchall()
            return r, models

        r, models = self.runner.run("added up sessions", ask)
        by_model = sorted(((f"{b}/{m}", int(n)) for b, m, n in models), key=lambda mn: (-mn[1], mn[0]))
        out: dict[str, Any] = {k: int(v or 0) for k, v in zip(_TOTALS, r, strict=True)}
        out.update(
            models=by_model, damaged=0, bytes=self.runner.run("measured its size", self.engine.disk_bytes)
        )
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
        query = Query(words, role, session_id, self.window, max(1, rows_limit(limit) or 1))
        also = wants_reasoning(role, reasoning)

        def ask(cur: Any) -> list[Any]:
            d, fulltext = self.engine.dialect, self.engine.fulltext
            return search_rows(cur, d, fulltext, query, titles=role in (None, "title"), reasoning=also)

        rows = self.runner.run("searched", ask)
        return [SearchHit(r[0], r[1], int(r[2]), r[3], int(r[4]), snippet(r[5], words)) for r in rows]


class SQLTrash:
    """The trash of ``engine``'s database, reached through ``runner`` (the Trash protocol): a session in it
    has a ``deleted_at`` time. ``forget(session_id)`` is told of every session moved or removed (the store
    forgets what it knew of its rows)."""

    def __init__(self, runner: Runner, engine: Engine, display: str, forget: Callable[[str], None]) -> None:
        self.runner = runner
        self.engine = engine
        self.display = display
        self.forget = forget

    def trash(self, session_id: str) -> None:
        lock = self.runner.lock(session_id)
        try:
            self._set_deleted(session_id, utc_now(), expect_live=True)
        finally:
            lock.release()

    def restore(self, session_id: str) -> None:
        validate_id(session_id)
        self._set_deleted(session_id, None, expect_live=False)

    def _set_deleted(self, session_id: str, when: str | None, *, expect_live: bool) -> None:
        d = self.engine.dialect
        p = d.mark

        def move(cur: Any) -> str:
            with transaction(cur, d.begin_write):
                sql = f"SELECT deleted_at FROM chatcli_sessions WHERE id = {p}{d.for_update}"
                row = x(cur, sql, (session_id,)).fetchone()
                if row is None:
                    return "missing"
                if (row[0] is None) != expect_live:
                    return "live" if row[0] is None else "trashed"
                sql = f"UPDATE chatcli_sessions SET deleted_at = {p}, version = version + 1 WHERE id = {p}"
                x(cur, sql, (when, session_id))
            return "done"

        outcome = self.runner.run("moved a session", move)
        if outcome != "done":  # a session is either live or in the trash: never both
            where = "" if expect_live else "the trash of "
            raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        self.forget(session_id)

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        validate_id(session_id)
        lock = None if trashed else self.runner.lock(session_id)
        deleted = "IS NOT NULL" if trashed else "IS NULL"
        d = self.engine.dialect
        p = d.mark

        def remove(cur: Any) -> int:
            with transaction(cur, d.begin_write):
                sql = f"SELECT 1 FROM chatcli_sessions WHERE id = {p} AND deleted_at {deleted}"
                if x(cur, sql, (session_id,)).fetchone() is None:
                    return 0
                x(cur, f"DELETE FROM chatcli_messages WHERE session_id = {p}", (session_id,))
                x(cur, f"DELETE FROM chatcli_sessions WHERE id = {p}", (session_id,))
            return 1

        try:
            if not self.runner.run("removed a session", remove):
                where = "the trash of " if trashed else ""
                raise SessionNotFound(f"no session {session_id} in {where}{self.display}")
        finally:
            if lock is not None:
                lock.release()
        self.forget(session_id)


__all__ = ["SQLCatalog", "SQLTrash", "location"]
