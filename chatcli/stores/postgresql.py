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
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from chatcli.errors import StoreError
from chatcli.search import tsquery, tsvector
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_dialect import Dialect
from chatcli.stores.sql_errors import ErrorTable, Fault, Place, Rule, said
from chatcli.stores.sql_rows import MESSAGE_COLUMNS, Searched, exact_text
from chatcli.stores.sql_schema import migration_names_step, named, refill
from chatcli.stores.sql_search import MESSAGES, REASONING, TITLES, Match, Query, Scored, ranked_messages
from chatcli.stores.sql_watchdog import Watchdog
from chatcli.stores.sql_write import upsert_messages
from chatcli.stores.url import MIN_REDACTED, StoreURL

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
    """The heart of a libpq connection error, for its message: ``Connection refused`` out of ``connection
    failed: connection to server at "h", port 5432 failed: Connection refused\n\tIs the server running...``."""
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


#: the faults of a connection that could not be opened: their message has libpq's reason alone
_CONNECTING = frozenset({Fault.UNREACHABLE, Fault.LOGIN, Fault.NO_DATABASE, Fault.DATABASE_DENIED})


def _broken(conn: Any) -> bool:
    return bool(conn.closed or conn.broken)


def _needs_password(e: Any) -> bool:
    """Whether libpq found no password for a server that asked for one (psycopg's ``Error.pgconn``)."""
    pgconn = getattr(e, "pgconn", None)
    return pgconn is not None and bool(pgconn.needs_password)


def _used_password(e: BaseException) -> bool:
    """Whether the login that failed with ``e`` sent a password (the server asked for one)."""
    pgconn = getattr(e, "pgconn", None)
    return pgconn is not None and bool(pgconn.used_password)


@cache
def error_table() -> ErrorTable:
    """psycopg's errors, by class (psycopg.errors names one per SQLSTATE; see
    https://www.postgresql.org/docs/current/errcodes-appendix.html). At connect time an error has no
    SQLSTATE: what is known then is in ``PostgreSQL.connect_fault``."""
    import psycopg
    from psycopg import errors as e

    return ErrorTable(
        driver=(psycopg.Error,),
        rules=(
            Rule(
                "40P01 deadlock_detected, 40001 serialization_failure",
                Fault.DEADLOCK,
                types=(e.DeadlockDetected, e.SerializationFailure),
            ),
            Rule(
                "57014 query_canceled, 55P03 lock_not_available",
                Fault.TIMEOUT,
                types=(e.QueryCanceled, e.LockNotAvailable),
            ),
            Rule("42501 insufficient_privilege", Fault.NOT_ALLOWED, types=(e.InsufficientPrivilege,)),
            Rule("connection timeout", Fault.CONNECT_TIMEOUT, types=(e.ConnectionTimeout,), connecting=True),
            Rule(
                "no password",
                Fault.NO_PASSWORD,
                types=(psycopg.OperationalError,),
                test=_needs_password,
                connecting=True,
            ),
            Rule(
                "a broken connection",
                Fault.LOST,
                types=(psycopg.OperationalError,),
                connecting=False,
                broken=True,
            ),
        ),
        broken=_broken,
    )


class PostgreSQL:
    """The PostgreSQL engine (``sql_engine.Engine``) of the parsed store URL ``url`` (its password, if it
    has one, is only handed to libpq, as a keyword: never in a URI libpq might quote back). ``timeout``:
    seconds a connection attempt, a statement or a lock wait may take."""

    kind = "postgresql"
    streams_load = True  # (load_messages: COPY)
    dialect = Dialect(
        json_cast="::jsonb",
        json_text="::text",
        for_update=" FOR UPDATE",
        begin_read="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        holds_nul=False,  # text and jsonb cannot hold NUL: such records are kept whole in extra
    )
    migrations = named(_TABLES, _add_search, _search_words, migration_names_step("text"), _PARTS)

    def __init__(self, url: StoreURL, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self.params = url.libpq_params()
        self.place = Place(
            url.display,
            timeout,
            database=str(self.params.get("dbname", "")),
            user=str(self.params.get("user", "")),
            password_from="the URL, PGPASSWORD or ~/.pgpass",
            create_database="e.g. `createdb`",
        )
        self.fulltext = TSVector()
        self.locks = AdvisoryLocks()
        self.watchdog = Watchdog(self._cut)  # libpq waits forever on a network that stalls
        self._conn: Any = None  # the last connection made (the watchdog's to cut)
        self._password: str | None = None  # the one last given to connect
        password = os.environ.get("PGPASSWORD", "")
        self.secrets = frozenset({password} if len(password) >= MIN_REDACTED else ())

    @property
    def errors(self) -> ErrorTable:
        return error_table()

    def _libpq(self, password: str | None) -> dict[str, Any]:
        """libpq's connection keywords: the store's timeouts, then the URL's own (its libpq "options" after
        ours), and ``password`` when one was asked for."""
        ms = int(self.timeout * 1000)
        ours = (
            f"-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms * 6}"
        )
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(self.timeout)),
            "application_name": "chatcli",
            "options": ours,
            "tcp_user_timeout": ms,
            "keepalives": 1,
            "keepalives_idle": 30,
            **self.params,
        }
        if "options" in self.params:
            kwargs["options"] = f"{ours} {self.params['options']}"
        if password is not None:
            kwargs["password"] = password
        return kwargs

    def connect(self, password: str | None) -> Any:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs psycopg: pip install 'chatcli[postgresql]'"
            ) from None
        self._password = password
        factory = _guarded(psycopg, self.watchdog, self.timeout + 1)
        conn = psycopg.connect(**self._libpq(password), autocommit=True, cursor_factory=factory)
        if conn.info.server_version < MIN_VERSION:
            version = conn.info.server_version
            conn.close()
            raise StoreError(
                f"{self.url.display} runs PostgreSQL {version // 10000}; chatcli needs PostgreSQL 12 or newer"
            )
        self._conn = conn
        return conn

    def connect_fault(self, e: BaseException) -> Fault:
        """The error table's fault; where it has none (libpq's errors at connect time carry no SQLSTATE), the
        server is asked: ``PQping`` says whether a server answers at the address (UNREACHABLE if not);
        then, logged in with the same user and password to its maintenance database (``postgres``), whether
        the database exists (NO_DATABASE if not, DATABASE_DENIED if it does: the user may not open it). A
        login refused there too, a password used both times, is LOGIN; anything else REFUSED."""
        import psycopg

        fault = error_table().fault(e, connecting=True)
        if fault is not Fault.REFUSED or not isinstance(e, psycopg.OperationalError):
            return fault
        if not self._answers():
            return Fault.UNREACHABLE
        exists, refused_password = self._database_exists()
        if exists is not None:
            return Fault.DATABASE_DENIED if exists else Fault.NO_DATABASE
        return Fault.LOGIN if refused_password and _used_password(e) else Fault.REFUSED

    def _answers(self) -> bool:
        """Whether a server answers at the URL's address (``PQping``: it needs no valid login)."""
        from psycopg import pq
        from psycopg.conninfo import make_conninfo

        conninfo = make_conninfo("", **self._libpq(self._password))
        return bool(pq.PGconn.ping(conninfo.encode()) == pq.Ping.OK)

    def _database_exists(self) -> tuple[bool | None, bool]:
        """Whether the database the URL names exists, asked of the server's maintenance database with the
        same login (None when the URL names no other database, or that login fails too); and whether that
        login failed though a password was used."""
        import psycopg

        name = self.params.get("dbname")
        if not name or name == "postgres":
            return None, True
        try:
            with psycopg.connect(
                **{**self._libpq(self._password), "dbname": "postgres"}, autocommit=True
            ) as conn:
                row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        except psycopg.Error as e:
            return None, _used_password(e)
        return row is not None, False

    def said(self, e: BaseException, fault: Fault) -> str:
        """libpq's reason alone for a failed connection (``Connection refused``, ``FATAL: password
        authentication failed for user "u"``); the whole message otherwise."""
        return " ".join(_libpq_reason(e).split()) if fault in _CONNECTING else said(e)

    def writing(self) -> bool:
        return False

    def _cut(self) -> None:
        """The watchdog's cut: shut the connection's socket down, so the statement waiting on it fails now
        (as a lost connection: the store reconnects once, then says the database does not answer)."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def write_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        upsert_messages(cur, self.dialect, self.fulltext, rows, searched)

    def load_messages(self, cur: Any, messages: Iterable[tuple[tuple[Any, ...], Searched]]) -> None:
        """``COPY ... FROM STDIN`` (text format: the server reads the JSON and tsvector columns from their
        text), about twice as fast as the upsert for a batch, and streamed: the server stores rows while
        the next are made. A COPY lasts as long as its rows take to make, so the store timeout bounds the
        wait for the next row rather than the whole: ``statement_timeout`` is lifted for it (lock waits keep
        ``lock_timeout``), and the watchdog's deadline is moved on at every row sent (a stalled network
        blocks the sending or the end of the COPY, and the deadline passes)."""
        cols = ", ".join(["session_id", *MESSAGE_COLUMNS, *self.fulltext.message_columns])
        wait = self.timeout + 1
        cur.execute("SET LOCAL statement_timeout = 0")
        with self.watchdog.armed(wait), cur.copy(f"COPY chatcli_messages ({cols}) FROM STDIN") as copy:
            for row, words in messages:
                copy.write_row((*row, *words))
                self.watchdog.rearm(wait)
        cur.execute("RESET statement_timeout")  # (to the connection's own, for the rest of the transaction)

    def disk_bytes(self, cur: Any) -> int:
        """Bytes chatcli's tables take, with their indexes and TOAST data (``pg_total_relation_size``)."""
        row = cur.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c)), 0) FROM (VALUES "
            "('chatcli_sessions'::regclass), ('chatcli_messages'::regclass)) AS t (c)"
        ).fetchone()
        return int(row[0])


class AdvisoryLocks:
    """Session locks as ``pg_try_advisory_lock(key)`` on the store's connection (the server frees them when
    the connection ends); the migration lock is ``pg_advisory_lock`` (waited for up to ``lock_timeout``)."""

    on_connection = True

    @staticmethod
    def key(name: str) -> int:
        """The advisory-lock key of a name: 64 bits of its BLAKE2b hash, as a signed bigint."""
        digest = hashlib.blake2b(f"chatcli:{name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def take(self, cur: Any, session_id: str) -> bool:
        return bool(cur.execute("SELECT pg_try_advisory_lock(%s)", (self.key(session_id),)).fetchone()[0])

    def release(self, cur: Any, session_id: str) -> None:
        cur.execute("SELECT pg_advisory_unlock(%s)", (self.key(session_id),))

    def take_schema(self, cur: Any) -> Any:
        cur.execute("SELECT pg_advisory_lock(%s)", (self.key("#schema"),))
        return None

    def release_schema(self, cur: Any, token: Any) -> None:
        cur.execute("SELECT pg_advisory_unlock(%s)", (self.key("#schema"),))


class TSVector:
    """Full-text search with ``tsvector`` columns (``tsv``, ``reasoning_tsv``, ``title_tsv``) and their GIN
    indexes, made from the words chatcli.search cuts the text into (``tsvector``: no text search
    configuration), found with ``tsquery`` prefixes (``'word':*``), ranked by ``ts_rank`` (higher is
    better)."""

    best = "DESC"
    message_columns = ("tsv", "reasoning_tsv")
    title_column = "title_tsv"
    cast = "::tsvector"

    def indexed(self, text: str) -> str:
        return tsvector(text)

    def match(self, target: str, words: list[str]) -> Match:
        query = [tsquery(words)]
        if target == TITLES:
            source = "chatcli_sessions s, CAST(%s AS tsquery) q"
            return Match(source, "s.title_tsv @@ q", "ts_rank(s.title_tsv, q)", query)
        column = "m.reasoning_tsv" if target == REASONING else "m.tsv"
        return Match(
            "chatcli_messages m, CAST(%s AS tsquery) q", f"{column} @@ q", f"ts_rank({column}, q)", query
        )

    def messages(self, cur: Any, dialect: Dialect, query: Query) -> list[Scored]:
        return ranked_messages(cur, dialect, self.match(MESSAGES, query.words), query, self.best)


def open_postgresql(
    url: StoreURL, timeout: float = 10.0, ask_password: Callable[[str], str] | None = None
) -> SQLStore:
    """The store of ``postgresql://`` URL ``url`` (see PostgreSQL); ``ask_password(prompt)`` is called when
    the server wants a password and none was found (None: do not ask)."""
    return SQLStore(url, PostgreSQL(url, timeout), timeout=timeout, ask_password=ask_password)
