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
from collections.abc import Callable
from typing import Any

from chatcli.errors import ChatcliError, StoreError, StoreUnavailable
from chatcli.search import mysql_text, mysql_word, tie_break, word_share
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_rows import MESSAGE_COLUMNS, Searched
from chatcli.stores.sql_schema import migration_names_step, named, refill
from chatcli.stores.url import StoreURL

BIG = 100_000  # messages (by ``mid``) from which a search first checks how frequent its words are
SAMPLE = 1_000  # newest messages it samples for that
FREQUENT = 0.05  # a share of messages from which a word is looked for newest first instead of by FULLTEXT
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


class MySQLStore(SQLStore):
    """Sessions in a MySQL or MariaDB database. ``url``: the parsed ``mysql://user[:password]@host[:port]/db``
    (``?unix_socket=PATH`` to connect through a socket; see ``StoreURL.pymysql_params``);
    ``ask_password(prompt)`` is called when the server wants a password and none was found. The password
    is sent as UTF-8 bytes, as the ``mariadb`` client sends it (PyMySQL would encode a str as latin-1)."""

    kind = "mysql"
    migrations = named(
        _TABLES,
        _add_search,
        _search_words,
        migration_names_step("VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin"),
        _message_parts,
    )
    begin_write = "START TRANSACTION"
    begin_read = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
    _for_update = " FOR UPDATE"
    _if_absent = " ON DUPLICATE KEY UPDATE id = id"  # (0 rows affected: the row was there)
    _title_is = "title = %s COLLATE utf8mb4_bin"

    def __init__(
        self, url: StoreURL, timeout: float = 10.0, ask_password: Callable[[str], str] | None = None
    ) -> None:
        super().__init__(url, timeout)
        self._params: dict[str, Any] = url.pymysql_params()
        self.database: str = self._params["database"]
        self._password: str | None = url.password if url.password is not None else os.environ.get("MYSQL_PWD")
        if self._password is not None:
            self._keep_secret(self._password)
        self.ask_password = ask_password
        self.mariadb = False
        self.min_token = 3
        self.max_packet = 16 * 2**20  # the server's max_allowed_packet, bytes (read at connect)

    def _open(self) -> Any:
        try:
            import pymysql
        except ImportError:
            raise StoreError("the MySQL store needs PyMySQL: pip install 'chatcli[mysql]'") from None
        try:
            conn = pymysql.connect(
                **self._params,
                password=(self._password or "").encode("utf-8", "surrogateescape"),
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=max(1, round(self.timeout)),
                read_timeout=self.timeout,
                write_timeout=self.timeout,
            )
        except pymysql.err.OperationalError as e:
            code = e.args[0] if e.args else 0
            if code == 1045 and self._password is None and self.ask_password is not None:
                self._password = self.ask_password(f"Password for {self.display}: ")
                self._keep_secret(self._password)
                return self._open()
            raise self._failure(e) from None
        except pymysql.err.Error as e:
            raise self._failure(e) from None
        try:
            cur = conn.cursor()
            cur.execute("SELECT VERSION(), @@innodb_ft_min_token_size, @@max_allowed_packet")
            version, self.min_token, self.max_packet = cur.fetchone()
            self._check_version(str(version))
            seconds = max(1, round(self.timeout))
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}")  # row locks
            cur.execute(f"SET SESSION lock_wait_timeout = {seconds}")  # table and metadata locks
            if self.mariadb:
                cur.execute(f"SET SESSION max_statement_time = {self.timeout:g}")
            else:
                cur.execute(f"SET SESSION max_execution_time = {int(self.timeout * 1000)}")
        except pymysql.err.Error as e:
            conn.close()
            raise self._failure(e) from None
        except StoreError:
            conn.close()
            raise
        return conn

    def _check_version(self, version: str) -> None:
        self.mariadb = "mariadb" in version.lower()
        numbers = [int(p) for p in version.split("-")[0].split(".")[:2] if p.isdigit()]
        have = tuple(numbers) if len(numbers) == 2 else (0, 0)
        need = (10, 6) if self.mariadb else (8, 0)
        if have < need:
            product = "MariaDB" if self.mariadb else "MySQL"
            raise StoreError(
                f"{self.display} runs {product} {version}; chatcli needs {product} "
                f"{need[0]}.{need[1]} or newer"
            )

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.err.Error,)

    def _is_deadlock(self, e: BaseException) -> bool:
        from pymysql.constants import ER

        return bool(e.args) and e.args[0] in (ER.LOCK_DEADLOCK,)  # 1213: InnoDB rolled the transaction back

    def _is_lost(self, e: BaseException) -> bool:
        import pymysql

        if isinstance(e, pymysql.err.InterfaceError):
            return True
        code = e.args[0] if isinstance(e, pymysql.err.OperationalError) and e.args else 0
        return code in (2006, 2013, 2014, 2055, 4031) and "timed out" not in str(e)

    def _failure(self, e: BaseException) -> ChatcliError:
        code = e.args[0] if getattr(e, "args", None) else 0
        words = self._said(e)
        if code == 1045:
            return StoreError(
                f"{self.display} refused the login (wrong or missing password): give it in the URL "
                f"or MYSQL_PWD"
            )
        if code == 1049:
            return StoreError(
                f"{self.display}: the database {self.database!r} does not exist; create it "
                f"(CREATE DATABASE) or fix the URL"
            )
        if code == 1044 and not self._conn:  # at connect time: a database this user may not open
            return StoreError(
                f"{self.display}: the database {self.database!r} does not exist or user "
                f"{self._params['user']!r} may not use it; create it or grant access"
            )
        if code in (1044, 1142, 1227):
            return StoreError(
                f"{self.display}: the user may not do this ({words}); chatcli needs to create and "
                f"write its tables (chatcli_*)"
            )
        if code in (1205, 1969, 3024) or "timed out" in words:
            return StoreUnavailable(f"{self.display} did not answer within {self.timeout:g} s")
        if code == 1213:  # a deadlock every retry ran into
            return StoreUnavailable(f"{self.display} is too busy: its writers keep deadlocking ({words})")
        if code in (2003, 2002, 2005, 2006, 2013):
            return StoreUnavailable(f"cannot connect to {self.display} ({words}); is the server running?")
        return StoreError(f"{self.display}: {words}")

    # -- locks ----------------------------------------------------------------------------------------------
    def lock_name(self, name: str) -> str:
        """A GET_LOCK name (at most 64 characters; names are server-wide, so the database is part of it)."""
        return "chatcli:" + hashlib.blake2b(f"{self.database}:{name}".encode(), digest_size=16).hexdigest()

    def _try_lock(self, cur: Any, session_id: str) -> bool:
        cur.execute("SELECT GET_LOCK(%s, 0)", (self.lock_name(session_id),))
        return bool(cur.fetchone()[0] == 1)

    def _unlock(self, cur: Any, session_id: str) -> None:
        cur.execute("SELECT RELEASE_LOCK(%s)", (self.lock_name(session_id),))

    def _lock_schema(self, cur: Any) -> Any:
        cur.execute("SELECT GET_LOCK(%s, %s)", (self.lock_name("#schema"), max(1, round(self.timeout))))
        if cur.fetchone()[0] != 1:
            raise StoreUnavailable(f"{self.display}: another chatcli is setting up the tables; try again")
        return None

    def _unlock_schema(self, cur: Any, token: Any) -> None:
        cur.execute("SELECT RELEASE_LOCK(%s)", (self.lock_name("#schema"),))

    # -- rows ----------------------------------------------------------------------------------------------
    def _upsert_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        for row, (words, thought) in zip(rows, searched, strict=True):  # the server would drop the connection
            size = sum(len(str(v).encode("utf-8", "surrogatepass")) for v in row)
            need = 2 * size + len(words) + len(thought or "") + 4096
            if need > self.max_packet:
                raise StoreError(
                    f"the server takes statements of at most {self.max_packet:,} bytes (its "
                    f"max_allowed_packet) and this message needs up to {need:,}: have it raised to 16M, "
                    f"MySQL's and MariaDB's default"
                )
        cols = ["session_id", *MESSAGE_COLUMNS, "words", "reasoning_words"]
        quoted = [f"`{c}`" for c in cols]
        updates = ", ".join(f"{q} = VALUES({q})" for q in quoted[2:])
        cur.executemany(
            f"INSERT INTO chatcli_messages ({', '.join(quoted)}) VALUES ({', '.join(['%s'] * len(cols))}) "
            f"ON DUPLICATE KEY UPDATE {updates}",
            [(*r, *w) for r, w in zip(rows, searched, strict=True)],
        )

    def _searched(self, text: str) -> str:
        return mysql_text(text)

    def _q(self, column: str) -> str:
        return f"`{column}`"

    def _holds(self, column: str) -> str:
        return f"LOCATE(%s, LOWER({column})) > 0"

    def _search_rows(
        self,
        cur: Any,
        words: list[str],
        role: str | None,
        session_id: str | None,
        limit: int,
        reasoning: bool,
    ) -> list[tuple[Any, ...]]:
        found: list[tuple[float, tuple[Any, ...]]] = []
        if role != "title":
            found += self._messages(cur, words, role, session_id, limit)
        if role in (None, "title"):
            found += self._titles(cur, words, session_id, limit)
        if reasoning:
            found += self._reasoning(cur, words, session_id, limit)
        found.sort(key=lambda sr: (-sr[0], tie_break(sr[1][0], sr[1][4])))
        return [r for _, r in found[:limit]]

    def _match(self, column: str, words: list[str]) -> tuple[list[str], list[Any], str, list[Any]]:
        """WHERE conditions and their parameters for ``words`` in the words ``column``, and the score
        expression with its parameters: FULLTEXT for the words long enough for the server's index, LIKE at
        the start of a word for the others."""
        spelled = [mysql_word(w) for w in words]
        long = [w for w in spelled if len(w) >= self.min_token]
        conditions, args = self._likes(column, [w for w in spelled if len(w) < self.min_token])
        if not long:
            return conditions, args, "0", []
        against = " ".join(f"+{w}*" for w in long)
        return (
            [f"MATCH({column}) AGAINST (%s IN BOOLEAN MODE)", *conditions],
            [against, *args],
            f"MATCH({column}) AGAINST (%s IN BOOLEAN MODE)",
            [against],
        )

    @staticmethod
    def _likes(column: str, spelled: list[str]) -> tuple[list[str], list[Any]]:
        """Each (spelled) word at the start of a word of the words ``column``: every word there follows a
        space."""
        return [f"{column} LIKE %s" for _ in spelled], [f"% {w}%" for w in spelled]

    def _messages(
        self, cur: Any, words: list[str], role: str | None, session_id: str | None, limit: int
    ) -> list[tuple[float, tuple[Any, ...]]]:
        """Matching messages, best first. InnoDB reads every match of a FULLTEXT query, which takes seconds
        for a word in most of a million messages: so the newest messages are sampled first, and a word found
        in a large share of them (FREQUENT) is looked for newest first with LIKE instead, until ``window``
        matches; the older rest, if needed, by FULLTEXT."""
        filters = [(c, v) for c, v in (("m.role = %s", role), ("m.session_id = %s", session_id)) if v]
        where, args = self._likes("m.words", [mysql_word(w) for w in words])
        cur.execute("SELECT COALESCE(MAX(mid), 0) + 1 FROM chatcli_messages")
        high = int(cur.fetchone()[0])
        if high < BIG:
            return self._indexed(cur, words, filters, None, limit)
        cur.execute(
            f"SELECT count(*), sum({' AND '.join(where)}) FROM (SELECT words FROM chatcli_messages "
            f"ORDER BY mid DESC LIMIT {SAMPLE}) m",
            args,
        )
        sampled, hits = cur.fetchone()
        share = int(hits or 0) / max(1, int(sampled))
        if share < FREQUENT:
            return self._indexed(cur, words, filters, None, limit)
        low = 0 if session_id else max(0, high - int(self.window / share * 2))
        where += [c for c, _ in filters]
        args += [v for _, v in filters]
        cur.execute(
            f"SELECT m.session_id, s.title, m.turn, m.role, m.idx, m.content FROM chatcli_messages m "
            f"JOIN chatcli_sessions s ON s.id = m.session_id WHERE m.mid >= %s AND s.deleted_at IS NULL "
            f"AND {' AND '.join(where)} ORDER BY m.mid DESC LIMIT %s",
            [low, *args, self.window],
        )
        rows = [tuple(r) for r in cur.fetchall()]
        if len(rows) < self.window and low > 0:
            rows += [r for _, r in self._indexed(cur, words, filters, low, self.window - len(rows))]
        return sorted(((word_share(r[5], words), r) for r in rows), key=lambda sr: -sr[0])[:limit]

    def _indexed(
        self, cur: Any, words: list[str], filters: list[tuple[str, Any]], below: int | None, limit: int
    ) -> list[tuple[float, tuple[Any, ...]]]:
        """The FULLTEXT query: the ``window`` most recent matches (older than ``below``, when given), best
        first."""
        where, args, score, score_args = self._match("m.words", words)
        where += [c for c, _ in filters] + (["m.mid < %s"] if below is not None else [])
        args += [v for _, v in filters] + ([below] if below is not None else [])
        cur.execute(
            f"SELECT h.score, h.session_id, s.title, h.turn, h.role, h.idx, h.content FROM ("
            f"SELECT m.session_id, m.turn, m.role, m.idx, m.content, {score} AS score FROM chatcli_messages m "
            f"WHERE {' AND '.join(where)} ORDER BY m.mid DESC LIMIT %s) h JOIN chatcli_sessions s "
            f"ON s.id = h.session_id WHERE s.deleted_at IS NULL ORDER BY h.score DESC, h.session_id DESC, h.idx "
            f"LIMIT %s",
            [*score_args, *args, self.window, limit],
        )
        return [(float(r[0]), tuple(r[1:])) for r in cur.fetchall()]

    def _titles(
        self, cur: Any, words: list[str], session_id: str | None, limit: int
    ) -> list[tuple[float, tuple[Any, ...]]]:
        where, args, score, score_args = self._match("s.title_words", words)
        where.append("s.deleted_at IS NULL")
        if session_id:
            where.append("s.id = %s")
            args.append(session_id)
        cur.execute(
            f"SELECT {score}, s.id, s.title, 0, 'title', -1, s.title FROM chatcli_sessions s "
            f"WHERE {' AND '.join(where)} ORDER BY 1 DESC, s.id DESC LIMIT %s",
            [*score_args, *args, limit],
        )
        return [(float(r[0]), r[1:]) for r in cur.fetchall()]

    def _reasoning(
        self, cur: Any, words: list[str], session_id: str | None, limit: int
    ) -> list[tuple[float, tuple[Any, ...]]]:
        """Matching reasoning, best first, among the ``window`` most recent matches (FULLTEXT only: reasoning
        is searched on request, so the sampling of ``_messages`` is not needed)."""
        where, args, score, score_args = self._match("m.reasoning_words", words)
        if session_id:
            where.append("m.session_id = %s")
            args.append(session_id)
        inner = f"SELECT m.mid, {score} AS score FROM chatcli_messages m WHERE {' AND '.join(where)}"
        return self._reasoning_hits(cur, inner, [*score_args, *args], limit)

    def disk_bytes(self) -> int:
        """Bytes chatcli's tables take, data and indexes (``information_schema.tables``)."""

        def ask(cur: Any) -> int:
            cur.execute(
                "SELECT coalesce(sum(data_length + index_length), 0) FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name LIKE %s",
                ("chatcli%",),
            )
            return int(cur.fetchone()[0])

        return int(self._run("measured its size", ask))


def open_mysql(
    url: StoreURL, timeout: float = 10.0, ask_password: Callable[[str], str] | None = None
) -> MySQLStore:
    """The store of ``mysql://`` URL ``url`` (see MySQLStore)."""
    return MySQLStore(url, timeout, ask_password)
