"""The MySQL / MariaDB store: ``mysql://user@host:port/db`` (PyMySQL, the ``chatcli[mysql]`` extra).

The password comes from the URL, ``MYSQL_PWD``, or (at a terminal) a prompt. Tables are InnoDB, utf8mb4;
ids and timestamps are ASCII with binary collation (exact, case-sensitive, sortable). A session's writer
lock is ``GET_LOCK(name, 0)`` on the store's connection, released by the server when the connection ends.
Search uses InnoDB FULLTEXT indexes in BOOLEAN MODE (``+word*``) over columns holding the words
chatcli.search cuts the text into, each spelled in ASCII (``search.mysql_text``), so InnoDB's own parser,
its minimum word length and its collation change nothing; a word spelled shorter than a server's
``innodb_ft_min_token_size`` is matched at the start of a word with LIKE instead.
MySQL 8.0 or MariaDB 10.6 and newer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from chatcli.errors import StoreError, StoreUnavailable
from chatcli.search import mysql_text, mysql_word, word_share
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_dialect import Dialect
from chatcli.stores.sql_errors import ErrorTable, Fault, Place, Rule, said
from chatcli.stores.sql_rows import Searched, unzipped
from chatcli.stores.sql_schema import migration_names_step, named, refill
from chatcli.stores.sql_search import MESSAGES, REASONING, TITLES, Match, Query, Scored, ranked_messages
from chatcli.stores.sql_write import upsert_messages
from chatcli.stores.url import MIN_REDACTED, StoreURL

BIG = 100_000  # messages (by ``mid``) from which a search first checks how frequent its words are
SAMPLE = 1_000  # newest messages it samples for that
FREQUENT = 0.05  # a share of messages from which a word is looked for newest first instead of by FULLTEXT
ER_CLIENT_INTERACTION_TIMEOUT = 4031  # MySQL 8.0.24: the server closed a connection idle too long (not in ER)
_ID = "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin"
_TIME = "VARCHAR(40) CHARACTER SET ascii COLLATE ascii_bin"
_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
_TABLES = [
    f"CREATE TABLE chatcli_schema (version INT PRIMARY KEY, applied_at {_TIME} NOT NULL) {_TABLE}",
    f"""CREATE TABLE chatcli_sessions (
        id {_ID} PRIMARY KEY, title LONGTEXT NOT NULL, created_at {_TIME} NOT NULL, updated_at {_TIME} NOT NULL,
        backend VARCHAR(255) NOT NULL, model VARCHAR(1000) NOT NULL, base_url LONGTEXT, model_path LONGTEXT,
        params JSON NOT NULL, `system` LONGTEXT NOT NULL, context_start INT NOT NULL, clears JSON, changes JSON,
        extra JSON, format_version INT NOT NULL, message_count INT NOT NULL, turns INT NOT NULL,
        messages INT NOT NULL, user_messages INT NOT NULL, assistant_messages INT NOT NULL,
        characters BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL, version BIGINT NOT NULL, writer VARCHAR(40), deleted_at {_TIME},
        KEY chatcli_sessions_updated (updated_at)) {_TABLE}""",
    f"""CREATE TABLE chatcli_messages (
        session_id {_ID} NOT NULL, idx INT NOT NULL, mid BIGINT NOT NULL AUTO_INCREMENT, turn INT NOT NULL,
        role VARCHAR(16) NOT NULL, content LONGTEXT NOT NULL, created_at {_TIME}, status VARCHAR(32),
        finish_reason VARCHAR(255), model VARCHAR(1000), error LONGTEXT, dropped VARCHAR(32), `usage` JSON,
        timings JSON, extra JSON, PRIMARY KEY (session_id, idx), UNIQUE KEY chatcli_messages_mid (mid),
        CONSTRAINT chatcli_messages_session FOREIGN KEY (session_id) REFERENCES chatcli_sessions (id)
        ON DELETE CASCADE) {_TABLE}""",
]


def _add_search(cur: Any) -> None:
    """Schema 2: FULLTEXT indexes on message text and titles, with no stopwords (an empty stopword table
    named before the indexes are built; InnoDB keeps that choice with each index)."""
    cur.execute("CREATE TABLE chatcli_ft_stopwords (value VARCHAR(30)) ENGINE=InnoDB")
    _no_stopwords(cur)
    cur.execute("ALTER TABLE chatcli_messages ADD FULLTEXT INDEX chatcli_messages_ft (content)")
    cur.execute("ALTER TABLE chatcli_sessions ADD FULLTEXT INDEX chatcli_sessions_ft (title)")


def _no_stopwords(cur: Any) -> None:
    cur.execute("SELECT DATABASE()")
    database = cur.fetchone()[0]
    cur.execute("SET SESSION innodb_ft_user_stopword_table = %s", (f"{database}/chatcli_ft_stopwords",))


def _search_words(cur: Any) -> None:
    """Schema 3, "search words": columns of the words chatcli.search cuts each message and title into
    (``search.mysql_text``), filled, and the FULLTEXT indexes moved onto them."""
    cur.execute("ALTER TABLE chatcli_messages ADD COLUMN words LONGTEXT")
    cur.execute("ALTER TABLE chatcli_sessions ADD COLUMN title_words LONGTEXT")
    refill(
        cur,
        "SELECT mid, content, NULL FROM chatcli_messages WHERE mid > %s ORDER BY mid LIMIT 500",
        "UPDATE chatcli_messages SET words = %s WHERE mid = %s",
        mysql_text,
        first=-1,
    )
    refill(
        cur,
        "SELECT id, title, NULL FROM chatcli_sessions WHERE id > %s ORDER BY id LIMIT 500",
        "UPDATE chatcli_sessions SET title_words = %s WHERE id = %s",
        mysql_text,
        first="",
    )
    _no_stopwords(cur)
    for table, old, new, column in (
        ("chatcli_messages", "chatcli_messages_ft", "chatcli_words_ft", "words"),
        ("chatcli_sessions", "chatcli_sessions_ft", "chatcli_title_words_ft", "title_words"),
    ):
        cur.execute(f"ALTER TABLE {table} DROP INDEX {old}, ADD FULLTEXT INDEX {new} ({column})")


def _message_parts(cur: Any) -> None:
    """Schema 5, "message parts": messages made of more than text keep their parts; the words of their
    reasoning (``search.mysql_text``; NULL without reasoning) get a FULLTEXT index of their own, for
    ``search --reasoning``."""
    cur.execute("ALTER TABLE chatcli_messages ADD COLUMN parts JSON, ADD COLUMN reasoning_words LONGTEXT")
    _no_stopwords(cur)
    cur.execute("ALTER TABLE chatcli_messages ADD FULLTEXT INDEX chatcli_reasoning_ft (reasoning_words)")


@cache
def error_table() -> ErrorTable:
    """PyMySQL's errors, by the server's error number (``pymysql.constants.ER``) or the client's (``CR``), and
    for a client error, what the socket raised (a timeout: the server did not answer in time)."""
    import pymysql
    from pymysql.constants import CR, ER

    lost = {
        CR.CR_SERVER_GONE_ERROR,
        CR.CR_SERVER_LOST,
        CR.CR_COMMANDS_OUT_OF_SYNC,
        CR.CR_SERVER_LOST_EXTENDED,
    }
    cannot_connect = {CR.CR_CONN_HOST_ERROR, CR.CR_CONNECTION_ERROR, CR.CR_UNKNOWN_HOST}
    socket_ends = frozenset(lost | cannot_connect)
    return ErrorTable(
        driver=(pymysql.err.Error,),
        rules=(
            Rule("ER_LOCK_DEADLOCK", Fault.DEADLOCK, codes=frozenset({ER.LOCK_DEADLOCK})),
            Rule(
                "ER_LOCK_WAIT_TIMEOUT, ER_STATEMENT_TIMEOUT, ER_QUERY_TIMEOUT",
                Fault.TIMEOUT,
                codes=frozenset({ER.LOCK_WAIT_TIMEOUT, ER.STATEMENT_TIMEOUT, ER.QUERY_TIMEOUT}),
            ),
            Rule(
                "a socket timeout while connecting",
                Fault.CONNECT_TIMEOUT,
                codes=socket_ends,
                cause=(TimeoutError,),
                connecting=True,
            ),
            Rule("a socket timeout", Fault.TIMEOUT, codes=socket_ends, cause=(TimeoutError,)),
            Rule(
                "CR_CONN_HOST_ERROR, CR_CONNECTION_ERROR, CR_UNKNOWN_HOST, a lost connection, while connecting",
                Fault.UNREACHABLE,
                codes=socket_ends,
                connecting=True,
            ),
            Rule("InterfaceError", Fault.LOST, types=(pymysql.err.InterfaceError,)),
            Rule(
                "CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_COMMANDS_OUT_OF_SYNC, CR_SERVER_LOST_EXTENDED, "
                "ER_CLIENT_INTERACTION_TIMEOUT",
                Fault.LOST,
                codes=frozenset({*lost, ER_CLIENT_INTERACTION_TIMEOUT}),
            ),
            Rule("ER_ACCESS_DENIED_ERROR", Fault.LOGIN, codes=frozenset({ER.ACCESS_DENIED_ERROR})),
            Rule("ER_BAD_DB_ERROR", Fault.NO_DATABASE, codes=frozenset({ER.BAD_DB_ERROR})),
            Rule(
                "ER_DBACCESS_DENIED_ERROR while connecting",
                Fault.DATABASE_DENIED,
                codes=frozenset({ER.DBACCESS_DENIED_ERROR}),
                connecting=True,
            ),
            Rule(
                "ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR",
                Fault.NOT_ALLOWED,
                codes=frozenset(
                    {ER.DBACCESS_DENIED_ERROR, ER.TABLEACCESS_DENIED_ERROR, ER.SPECIFIC_ACCESS_DENIED_ERROR}
                ),
            ),
        ),
        code=_error_number,
    )


def _error_number(e: BaseException) -> object:
    """PyMySQL's error number: the first of an error's args."""
    return e.args[0] if e.args and isinstance(e.args[0], int) else None


class MySQL:
    """The MySQL / MariaDB engine (``sql_engine.Engine``) of the parsed URL ``url``
    (``mysql://user[:password]@host[:port]/db``, ``?unix_socket=PATH`` to connect through a socket; see
    ``StoreURL.pymysql_params``). The password is the URL's, ``MYSQL_PWD``'s or one asked for, sent as UTF-8
    bytes, as the ``mariadb`` client sends it (PyMySQL would encode a str as latin-1). ``timeout``: seconds
    a connection attempt, a statement or a lock wait may take."""

    kind = "mysql"
    streams_load = False
    dialect = Dialect(
        quote="`",
        on_duplicate_key=True,
        for_update=" FOR UPDATE",
        begin_write="START TRANSACTION",
        begin_read="START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
        exact=" COLLATE utf8mb4_bin",
        contains="LOCATE({mark}, LOWER({column})) > 0",
    )
    migrations = named(
        _TABLES,
        _add_search,
        _search_words,
        migration_names_step("VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin"),
        _message_parts,
    )

    def __init__(self, url: StoreURL, timeout: float = 10.0) -> None:
        self.display = url.display
        self.timeout = timeout
        self.params: dict[str, Any] = url.pymysql_params()
        self.database: str = self.params["database"]
        self.place = Place(
            url.display,
            timeout,
            database=self.database,
            user=self.params["user"],
            password_from="the URL or MYSQL_PWD",
            create_database="CREATE DATABASE",
        )
        self.password = url.password if url.password is not None else os.environ.get("MYSQL_PWD")
        self.secrets = frozenset(
            {self.password} if self.password is not None and len(self.password) >= MIN_REDACTED else ()
        )
        self.server = Server()
        self.fulltext = InnoDBFullText(self.server)
        self.locks = NamedLocks(self.database, timeout, url.display)
        self._sent_password = False

    @property
    def errors(self) -> ErrorTable:
        return error_table()

    def connect(self, password: str | None) -> Any:
        try:
            import pymysql
        except ImportError:
            raise StoreError("the MySQL store needs PyMySQL: pip install 'chatcli[mysql]'") from None
        password = password if password is not None else self.password
        self._sent_password = password is not None
        conn = pymysql.connect(
            **self.params,
            password=(password or "").encode("utf-8", "surrogateescape"),
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=max(1, round(self.timeout)),
            read_timeout=self.timeout,
            write_timeout=self.timeout,
        )
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_up(self, conn: Any) -> None:
        """Read what the server is (its version, ``innodb_ft_min_token_size``, ``max_allowed_packet``; a
        server too old is refused) and bound its waits by the store's timeout."""
        cur = conn.cursor()
        cur.execute("SELECT VERSION(), @@innodb_ft_min_token_size, @@max_allowed_packet")
        version, self.server.min_token, self.server.max_packet = cur.fetchone()
        self.server.check(str(version), self.display)
        seconds = max(1, round(self.timeout))
        cur.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}")  # row locks
        cur.execute(f"SET SESSION lock_wait_timeout = {seconds}")  # table and metadata locks
        if self.server.mariadb:
            cur.execute(f"SET SESSION max_statement_time = {self.timeout:g}")
        else:
            cur.execute(f"SET SESSION max_execution_time = {int(self.timeout * 1000)}")

    def connect_fault(self, e: BaseException) -> Fault:
        fault = error_table().fault(e, connecting=True)
        return Fault.NO_PASSWORD if fault is Fault.LOGIN and not self._sent_password else fault

    def said(self, e: BaseException, fault: Fault) -> str:
        return said(e)

    def writing(self) -> bool:
        return False

    def write_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        """``sql_write.upsert_messages``, once every row is known to fit the server's statement size (the
        server would drop the connection otherwise). Raises StoreError."""
        for row, (words, thought) in zip(rows, searched, strict=True):
            size = sum(len(str(v).encode("utf-8", "surrogatepass")) for v in row)
            need = 2 * size + len(words) + len(thought or "") + 4096
            if need > self.server.max_packet:
                raise StoreError(
                    f"the server takes statements of at most {self.server.max_packet:,} bytes (its "
                    f"max_allowed_packet) and this message needs up to {need:,}: have it raised to 16M, "
                    f"MySQL's and MariaDB's default"
                )
        upsert_messages(cur, self.dialect, self.fulltext, rows, searched)

    def load_messages(self, cur: Any, messages: Iterable[tuple[tuple[Any, ...], Searched]]) -> None:
        """``write_messages``: PyMySQL's executemany already sends multi-row INSERTs (as large as
        max_allowed_packet allows), InnoDB's fastest path short of LOAD DATA, which servers often refuse."""
        rows, searched = unzipped(messages)
        self.write_messages(cur, rows, searched)

    def disk_bytes(self, cur: Any) -> int:
        """Bytes chatcli's tables take, data and indexes (``information_schema.tables``)."""
        cur.execute(
            "SELECT coalesce(sum(data_length + index_length), 0) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name LIKE %s",
            ("chatcli%",),
        )
        return int(cur.fetchone()[0])


@dataclass
class Server:
    """What the server said of itself at connect: whether it is MariaDB, its ``innodb_ft_min_token_size``
    (the shortest word its FULLTEXT index holds) and its ``max_allowed_packet`` (bytes)."""

    mariadb: bool = False
    min_token: int = 3
    max_packet: int = 16 * 2**20

    def check(self, version: str, display: str) -> None:
        """Note whether ``version`` (``SELECT VERSION()``) is MariaDB's; StoreError when it is older than
        MySQL 8.0 or MariaDB 10.6."""
        self.mariadb = "mariadb" in version.lower()
        numbers = [int(p) for p in version.split("-")[0].split(".")[:2] if p.isdigit()]
        have = tuple(numbers) if len(numbers) == 2 else (0, 0)
        need = (10, 6) if self.mariadb else (8, 0)
        if have < need:
            product = "MariaDB" if self.mariadb else "MySQL"
            raise StoreError(
                f"{display} runs {product} {version}; chatcli needs {product} {need[0]}.{need[1]} or newer"
            )


class NamedLocks:
    """Session locks as ``GET_LOCK(name, 0)`` on the store's connection (the server frees them when the
    connection ends); names are server-wide, so ``database`` is part of each. The migration lock waits up
    to ``timeout`` seconds (then StoreUnavailable, naming the store as ``display``)."""

    on_connection = True

    def __init__(self, database: str, timeout: float, display: str) -> None:
        self.database = database
        self.timeout = timeout
        self.display = display

    def name(self, name: str) -> str:
        """A GET_LOCK name (at most 64 characters)."""
        return "chatcli:" + hashlib.blake2b(f"{self.database}:{name}".encode(), digest_size=16).hexdigest()

    def take(self, cur: Any, session_id: str) -> bool:
        cur.execute("SELECT GET_LOCK(%s, 0)", (self.name(session_id),))
        return bool(cur.fetchone()[0] == 1)

    def release(self, cur: Any, session_id: str) -> None:
        cur.execute("SELECT RELEASE_LOCK(%s)", (self.name(session_id),))

    def take_schema(self, cur: Any) -> Any:
        cur.execute("SELECT GET_LOCK(%s, %s)", (self.name("#schema"), max(1, round(self.timeout))))
        if cur.fetchone()[0] != 1:
            raise StoreUnavailable(f"{self.display}: another chatcli is setting up the tables; try again")
        return None

    def release_schema(self, cur: Any, token: Any) -> None:
        cur.execute("SELECT RELEASE_LOCK(%s)", (self.name("#schema"),))


class InnoDBFullText:
    """Full-text search with InnoDB FULLTEXT indexes in BOOLEAN MODE (``+word*``) over columns holding each
    word spelled in ASCII (``search.mysql_text``); a word spelled shorter than the ``server``'s
    ``innodb_ft_min_token_size`` is matched at the start of a word with LIKE instead. Ranked by MATCH's
    relevance (higher is better). InnoDB reads every match of a FULLTEXT query, which takes seconds for a
    word in most of a million messages: in a big store (BIG messages) the newest SAMPLE are sampled first,
    and a word found in a large share of them (FREQUENT) is looked for newest first with LIKE instead."""

    best = "DESC"
    message_columns = ("words", "reasoning_words")
    title_column = "title_words"
    cast = ""

    def __init__(self, server: Server) -> None:
        self.server = server

    def indexed(self, text: str) -> str:
        return mysql_text(text)

    def match(self, target: str, words: list[str]) -> Match:
        column = {TITLES: "s.title_words", REASONING: "m.reasoning_words"}.get(target, "m.words")
        source = "chatcli_sessions s" if target == TITLES else "chatcli_messages m"
        spelled = [mysql_word(w) for w in words]
        long = [w for w in spelled if len(w) >= self.server.min_token]
        conditions, args = _likes(column, [w for w in spelled if len(w) < self.server.min_token])
        if not long:
            return Match(source, " AND ".join(conditions), "0", args)
        against = " ".join(f"+{w}*" for w in long)
        fulltext = f"MATCH({column}) AGAINST (%s IN BOOLEAN MODE)"
        return Match(source, " AND ".join([fulltext, *conditions]), fulltext, [against, against, *args])

    def messages(self, cur: Any, dialect: Dialect, query: Query) -> list[Scored]:
        """Matching messages, best first: by FULLTEXT (``ranked_messages``), unless the store is big and a
        word is frequent: then newest first with LIKE until ``window`` matches, the older rest, if needed,
        by FULLTEXT."""
        match = self.match(MESSAGES, query.words)
        cur.execute("SELECT COALESCE(MAX(mid), 0) + 1 FROM chatcli_messages")
        high = int(cur.fetchone()[0])
        if high < BIG:
            return ranked_messages(cur, dialect, match, query, self.best)
        where, args = _likes("m.words", [mysql_word(w) for w in query.words])
        cur.execute(
            f"SELECT count(*), sum({' AND '.join(where)}) FROM (SELECT words FROM chatcli_messages "
            f"ORDER BY mid DESC LIMIT {SAMPLE}) m",
            args,
        )
        sampled, hits = cur.fetchone()
        share = int(hits or 0) / max(1, int(sampled))
        if share < FREQUENT:
            return ranked_messages(cur, dialect, match, query, self.best)
        low = 0 if query.session_id else max(0, high - int(query.window / share * 2))
        rows = self._newest(cur, where, args, query, low)
        if len(rows) < query.window and low > 0:
            older = query._replace(limit=query.window - len(rows))  # (ranked among the whole window)
            rows += [
                r for _, r in ranked_messages(cur, dialect, match, older, self.best, [("m.mid < %s", low)])
            ]
        scored = [(word_share(r[5], query.words), r) for r in rows]
        return sorted(scored, key=lambda sr: -sr[0])[: query.limit]

    @staticmethod
    def _newest(cur: Any, where: list[str], args: list[Any], query: Query, low: int) -> list[tuple[Any, ...]]:
        """Up to ``query.window`` messages from ``mid`` ``low`` on meeting ``where``, newest first."""
        filters = [
            (c, v) for c, v in (("m.role = %s", query.role), ("m.session_id = %s", query.session_id)) if v
        ]
        cur.execute(
            f"SELECT m.session_id, s.title, m.turn, m.role, m.idx, m.content FROM chatcli_messages m "
            f"JOIN chatcli_sessions s ON s.id = m.session_id WHERE m.mid >= %s AND s.deleted_at IS NULL "
            f"AND {' AND '.join([*where, *(c for c, _ in filters)])} ORDER BY m.mid DESC LIMIT %s",
            [low, *args, *(v for _, v in filters), query.window],
        )
        return [tuple(r) for r in cur.fetchall()]


def _likes(column: str, spelled: list[str]) -> tuple[list[str], list[Any]]:
    """Each (spelled) word at the start of a word of the words ``column``: every word there follows a space."""
    return [f"{column} LIKE %s" for _ in spelled], [f"% {w}%" for w in spelled]


def open_mysql(
    url: StoreURL, timeout: float = 10.0, ask_password: Callable[[str], str] | None = None
) -> SQLStore:
    """The store of ``mysql://`` URL ``url`` (see MySQL); ``ask_password(prompt)`` is called when the server
    wants a password and none was found (None: do not ask)."""
    return SQLStore(url, MySQL(url, timeout), timeout=timeout, ask_password=ask_password)
