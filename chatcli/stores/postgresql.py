"""The PostgreSQL store: ``postgresql://user@host:port/db`` (psycopg 3, the ``chatcli[postgresql]`` extra).

The URL is a libpq connection URI, so libpq's own ways of finding a password work: the URL itself,
``PGPASSWORD``, ``~/.pgpass``; at a terminal chatcli asks when none is found. JSON columns are ``jsonb``.
A session's writer lock is ``pg_try_advisory_lock`` on the store's connection: the server releases it when
the connection ends, however chatcli ends. Search uses ``tsvector`` columns with GIN indexes, made from the
words chatcli.search cuts the text into (no text search configuration, no parser: the words as they are),
queried with ``tsquery`` prefixes (``'word':*``). PostgreSQL 12 or newer.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from typing import Any

from chatcli.errors import ChatcliError, StoreError, StoreUnavailable
from chatcli.search import tie_break, tsquery, tsvector
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_rows import (
    JSON_FIELDS,
    MESSAGE_COLUMNS,
    MESSAGE_JSON_COLUMNS,
    Searched,
    exact_text,
)
from chatcli.stores.sql_schema import migration_names_step, named, refill
from chatcli.stores.sql_watchdog import Watchdog
from chatcli.stores.url import StoreURL

MIN_VERSION = 120000  # generated columns and the planner's handling of tsvector statistics we rely on

_TABLES = [
    "CREATE TABLE chatcli_schema (version integer PRIMARY KEY, applied_at text NOT NULL)",
    """CREATE TABLE chatcli_sessions (
        id text COLLATE "C" PRIMARY KEY, title text NOT NULL, created_at text COLLATE "C" NOT NULL,
        updated_at text COLLATE "C" NOT NULL, backend text NOT NULL, model text NOT NULL, base_url text,
        model_path text, params jsonb NOT NULL, system text NOT NULL, context_start integer NOT NULL,
        clears jsonb, changes jsonb, extra jsonb, format_version integer NOT NULL,
        message_count integer NOT NULL, turns integer NOT NULL, messages integer NOT NULL,
        user_messages integer NOT NULL, assistant_messages integer NOT NULL, characters bigint NOT NULL,
        prompt_tokens bigint NOT NULL, completion_tokens bigint NOT NULL, cached_tokens bigint NOT NULL,
        version bigint NOT NULL, writer text, deleted_at text COLLATE "C")""",
    "CREATE INDEX chatcli_sessions_updated ON chatcli_sessions (updated_at)",
    """CREATE TABLE chatcli_messages (
        session_id text COLLATE "C" NOT NULL REFERENCES chatcli_sessions (id) ON DELETE CASCADE,
        idx integer NOT NULL, mid bigint GENERATED ALWAYS AS IDENTITY, turn integer NOT NULL,
        role text NOT NULL, content text NOT NULL, created_at text, status text, finish_reason text,
        model text, error text, dropped text, usage jsonb, timings jsonb, extra jsonb,
        PRIMARY KEY (session_id, idx))""",
    "CREATE INDEX chatcli_messages_mid ON chatcli_messages (mid)",
]


def _add_search(cur: Any) -> None:
    """Schema 2: full-text search, the tsvector columns and their GIN indexes (filled by schema 3)."""
    cur.execute("ALTER TABLE chatcli_messages ADD COLUMN tsv tsvector")
    cur.execute("ALTER TABLE chatcli_sessions ADD COLUMN title_tsv tsvector")
    cur.execute("CREATE INDEX chatcli_messages_tsv ON chatcli_messages USING gin (tsv)")
    cur.execute("CREATE INDEX chatcli_sessions_title_tsv ON chatcli_sessions USING gin (title_tsv)")


def _search_words(cur: Any) -> None:
    """Schema 3, "search words": the tsvector columns rebuilt from chatcli's definition of a word (the
    text as it is, NUL and all: a row's column may hold a cleaned copy, the exact text is in ``extra``)."""
    refill(
        cur,
        "SELECT mid, content, extra::text FROM chatcli_messages WHERE mid > %s ORDER BY mid LIMIT 500",
        "UPDATE chatcli_messages SET tsv = %s::tsvector WHERE mid = %s",
        tsvector,
        first=-1,
        exact=lambda text, extra: exact_text(text, extra, "content"),
    )
    refill(
        cur,
        'SELECT id, title, extra::text FROM chatcli_sessions WHERE id > %s COLLATE "C" ORDER BY id LIMIT 500',
        "UPDATE chatcli_sessions SET title_tsv = %s::tsvector WHERE id = %s",
        tsvector,
        first="",
        exact=lambda text, extra: exact_text(text, extra, "title"),
    )


#: schema 5, "message parts": messages made of more than text keep their parts; their reasoning has a
#: tsvector of its own (NULL without reasoning), for ``search --reasoning``
_PARTS = [
    "ALTER TABLE chatcli_messages ADD COLUMN parts jsonb, ADD COLUMN reasoning_tsv tsvector",
    "CREATE INDEX chatcli_messages_reasoning_tsv ON chatcli_messages USING gin (reasoning_tsv)",
]


def _libpq_reason(e: BaseException) -> str:
    """The heart of a libpq connection error: ``Connection refused`` out of ``connection failed: connection
    to server at "h", port 5432 failed: Connection refused\n\tIs the server running...``."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first.rsplit("failed: ", 1)[-1].strip() or first


def _guarded(psycopg: Any, watchdog: Watchdog, seconds: float) -> Any:
    """A psycopg cursor class whose statements are each armed on ``watchdog`` for ``seconds``."""

    class GuardedCursor(psycopg.Cursor):  # type: ignore[misc]
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            with watchdog.armed(seconds):
                return super().execute(*args, **kwargs)

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            with watchdog.armed(seconds):
                return super().executemany(*args, **kwargs)

    return GuardedCursor


class PostgreSQLStore(SQLStore):
    """Sessions in a PostgreSQL database. ``url`` is the parsed store URL (its password, if it has one, is
    only handed to libpq, as a keyword: never in a URI libpq might quote back). ``ask_password(prompt)`` is
    called when the server wants a password and none was found (None: do not ask)."""

    kind = "postgresql"
    migrations = named(
        _TABLES,
        _add_search,
        _search_words,
        migration_names_step("text"),
        _PARTS,
    )
    holds_nul = False  # text and jsonb cannot hold NUL: such records are kept whole in extra
    begin_write = "BEGIN"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    _for_update = " FOR UPDATE"

    def __init__(
        self, url: StoreURL, timeout: float = 10.0, ask_password: Callable[[str], str] | None = None
    ) -> None:
        super().__init__(url, timeout)
        self.watchdog = Watchdog(self._cut)  # libpq waits forever on a network that stalls
        self.ask_password = ask_password
        self._keep_secret(os.environ.get("PGPASSWORD", ""))
        self._password: str | None = None

    def _open(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs psycopg: pip install 'chatcli[postgresql]'"
            ) from None
        ms = int(self.timeout * 1000)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(self.timeout)),
            "application_name": "chatcli",
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout="
            f"{ms * 6}",
            "tcp_user_timeout": ms,
            "keepalives": 1,
            "keepalives_idle": 30,
            "cursor_factory": _guarded(psycopg, self.watchdog, self.timeout + 1),
        }
        params = self.url.libpq_params()  # the URL's own options win, its libpq "options" go after ours
        if "options" in params:
            params["options"] = f"{kwargs['options']} {params['options']}"
        if self._password is not None:
            params["password"] = self._password
        try:
            conn = psycopg.connect(**{**kwargs, **params})
        except psycopg.Error as e:
            pgconn = getattr(e, "pgconn", None)
            if (
                pgconn is not None
                and pgconn.needs_password
                and self._password is None
                and self.ask_password is not None
            ):
                self._password = self.ask_password(f"Password for {self.display}: ")
                self._keep_secret(self._password)
                return self._open()
            raise self._connect_failure(e) from None
        if conn.info.server_version < MIN_VERSION:
            version = conn.info.server_version
            conn.close()
            raise StoreError(
                f"{self.display} runs PostgreSQL {version // 10000}; chatcli needs PostgreSQL 12 or newer"
            )
        return conn

    def _cut(self) -> None:
        """The watchdog's cut: shut the connection's socket down, so the statement waiting on it fails now
        (as a lost connection: the store reconnects once, then says the database does not answer)."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def _connect_failure(self, e: BaseException) -> ChatcliError:
        text = " ".join(str(e).split())
        if "password authentication failed" in text or "no password supplied" in text:
            return StoreError(
                f"{self.display} refused the login ({'wrong password' if 'failed' in text else 'no password given'}): "
                f"give it in the URL, PGPASSWORD or ~/.pgpass"
            )
        if "does not exist" in text and "database" in text:
            return StoreError(
                f"{self.display}: the database does not exist; create it (e.g. `createdb`) or fix the URL"
            )
        if "role" in text and "does not exist" in text:
            return StoreError(f"{self.display}: no such user on the server; fix the URL")
        if "timeout" in text:
            return StoreUnavailable(
                f"{self.display} did not answer within {self.timeout:g} s; is the server "
                f"up and the address right?"
            )
        if (
            "refused" in text
            or "could not connect" in text
            or "translate host name" in text
            or "No route" in text
            or "Connection reset" in text
            or "server closed" in text
        ):
            return StoreUnavailable(
                f"cannot connect to {self.display} ({self._said(_libpq_reason(e))}); is the server running?"
            )
        return StoreError(f"cannot use {self.display}: {self._said(e)}")

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def _is_deadlock(self, e: BaseException) -> bool:
        import psycopg

        return isinstance(e, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure))

    def _is_lost(self, e: BaseException) -> bool:
        import psycopg

        conn = self._conn
        return isinstance(e, psycopg.OperationalError) and (conn is None or conn.closed or conn.broken)

    def _failure(self, e: BaseException) -> ChatcliError:
        import psycopg

        if isinstance(e, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)):
            return StoreUnavailable(f"{self.display} did not answer within {self.timeout:g} s")
        if self._is_deadlock(e):  # a deadlock every retry ran into
            return StoreUnavailable(
                f"{self.display} is too busy: its writers keep deadlocking ({self._said(e)})"
            )
        if isinstance(e, psycopg.errors.InsufficientPrivilege):
            return StoreError(
                f"{self.display}: the user may not do this ({self._said(e)}); chatcli needs to create "
                f"and write its tables (chatcli_*)"
            )
        if isinstance(e, psycopg.OperationalError):
            return self._connect_failure(e)
        return StoreError(f"{self.display}: {self._said(e)}")

    # -- locks ----------------------------------------------------------------------------------------------
    @staticmethod
    def lock_key(name: str) -> int:
        """The advisory-lock key of a name: 64 bits of its BLAKE2b hash, as a signed bigint."""
        digest = hashlib.blake2b(f"chatcli:{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _try_lock(self, cur: Any, session_id: str) -> bool:
        return bool(
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key(session_id),)).fetchone()[0]
        )

    def _unlock(self, cur: Any, session_id: str) -> None:
        cur.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key(session_id),))

    def _lock_schema(self, cur: Any) -> Any:
        cur.execute("SELECT pg_advisory_lock(%s)", (self.lock_key("#schema"),))
        return None

    def _unlock_schema(self, cur: Any, token: Any) -> None:
        cur.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key("#schema"),))

    # -- rows ----------------------------------------------------------------------------------------------
    def _param(self, column: str) -> str:
        return "%s::jsonb" if column in JSON_FIELDS else "%s"

    def _out(self, column: str) -> str:
        return f"{column}::text"

    def _upsert_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        cols = ["session_id", *MESSAGE_COLUMNS, "tsv", "reasoning_tsv"]
        marks = [
            "%s::jsonb" if c in MESSAGE_JSON_COLUMNS else "%s::tsvector" if "tsv" in c else "%s" for c in cols
        ]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        sql = (
            f"INSERT INTO chatcli_messages ({', '.join(cols)}) VALUES ({', '.join(marks)}) "
            f"ON CONFLICT (session_id, idx) DO UPDATE SET {updates}"
        )
        cur.executemany(sql, [(*r, *w) for r, w in zip(rows, searched, strict=True)])

    def _searched(self, text: str) -> str:
        return tsvector(text)

    _title_words = "title_tsv = %s::tsvector"

    def _holds(self, column: str) -> str:
        return f"strpos(lower({column}), %s) > 0"

    def _search_rows(
        self,
        cur: Any,
        words: list[str],
        role: str | None,
        session_id: str | None,
        limit: int,
        reasoning: bool,
    ) -> list[tuple[Any, ...]]:
        query = tsquery(words)
        found: list[tuple[float, tuple[Any, ...]]] = []
        if role != "title":
            inner = (
                "SELECT m.session_id, m.turn, m.role, m.idx, m.content, ts_rank(m.tsv, q) AS score "
                "FROM chatcli_messages m, CAST(%s AS tsquery) q WHERE m.tsv @@ q"
            )
            args: list[Any] = [query]
            if role:
                inner += " AND m.role = %s"
                args.append(role)
            if session_id:
                inner += " AND m.session_id = %s"
                args.append(session_id)
            sql = (
                f"SELECT h.score, h.session_id, s.title, h.turn, h.role, h.idx, h.content FROM ({inner} "
                f"ORDER BY m.mid DESC LIMIT %s) h JOIN chatcli_sessions s ON s.id = h.session_id "
                f"WHERE s.deleted_at IS NULL ORDER BY h.score DESC, h.session_id DESC, h.idx LIMIT %s"
            )
            found += [(float(r[0]), r[1:]) for r in cur.execute(sql, [*args, self.window, limit]).fetchall()]
        if role in (None, "title"):
            sql = (
                "SELECT ts_rank(s.title_tsv, q), s.id, s.title, 0, 'title', -1, s.title FROM chatcli_sessions s, "
                "CAST(%s AS tsquery) q WHERE s.title_tsv @@ q AND s.deleted_at IS NULL"
            )
            args = [query]
            if session_id:
                sql += " AND s.id = %s"
                args.append(session_id)
            found += [
                (float(r[0]), r[1:])
                for r in cur.execute(sql + " ORDER BY 1 DESC, s.id DESC LIMIT %s", [*args, limit]).fetchall()
            ]
        if reasoning:
            found += self._reasoning_rows(cur, query, session_id, limit)
        found.sort(key=lambda sr: (-sr[0], tie_break(sr[1][0], sr[1][4])))
        return [r for _, r in found[:limit]]

    def _reasoning_rows(
        self, cur: Any, query: str, session_id: str | None, limit: int
    ) -> list[tuple[float, tuple[Any, ...]]]:
        inner = (
            "SELECT m.mid, ts_rank(m.reasoning_tsv, q) AS score FROM chatcli_messages m, CAST(%s AS tsquery) q "
            "WHERE m.reasoning_tsv @@ q"
        )
        args: list[Any] = [query]
        if session_id:
            inner += " AND m.session_id = %s"
            args.append(session_id)
        return self._reasoning_hits(cur, inner, args, limit)

    def disk_bytes(self) -> int:
        """Bytes chatcli's tables take, with their indexes and TOAST data (``pg_total_relation_size``)."""

        def ask(cur: Any) -> int:
            row = cur.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c)), 0) FROM (VALUES "
                "('chatcli_sessions'::regclass), ('chatcli_messages'::regclass)) AS t (c)"
            ).fetchone()
            return int(row[0])

        return int(self._run("measured its size", ask))


def open_postgresql(
    url: StoreURL, timeout: float = 10.0, ask_password: Callable[[str], str] | None = None
) -> PostgreSQLStore:
    """The store of ``postgresql://`` URL ``url`` (see PostgreSQLStore)."""
    return PostgreSQLStore(url, timeout, ask_password)
