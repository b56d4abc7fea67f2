"""The database drivers' errors as chatcli's (chatcli/stores/sql_errors.py): every row of every engine's error
table, shown an error of its kind, is the row that error lands on; every fault has its message; what
psycopg leaves without a code at connect time is found by asking the server; and the real drivers' errors,
where they are cheap to cause, land on their rows and say so to the user. (Deadlocks, lock waits, lost
connections and a full max_allowed_packet are caused on the real servers in test_stores_locks.py,
test_stores_faults.py and the torture suite.)"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import psycopg
import pymysql
import pytest
from psycopg.errors import FinishedPGconn

from chatcli.errors import StoreError, StoreUnavailable
from chatcli.stores import open_database, parse_store
from chatcli.stores.mysql import error_table as mysql_errors
from chatcli.stores.postgresql import PostgreSQL
from chatcli.stores.postgresql import error_table as pg_errors
from chatcli.stores.sql_errors import ErrorTable, Fault, Place, error_for
from chatcli.stores.sqlite import ERRORS as SQLITE_ERRORS
from chatcli.stores.url import StoreURL

from dbservers import free_port
from engines import DATABASES
from test_stores import put, snap

LIVE = SimpleNamespace(closed=False, broken=False)  # a psycopg connection as it is until it breaks
BROKEN = SimpleNamespace(closed=False, broken=True)


class Example(NamedTuple):
    """A driver error of one row's kind: raised on ``conn`` (None: no connection yet), ``connecting`` or not."""

    error: BaseException
    conn: Any = LIVE
    connecting: bool = False


def sqlite_error(cls: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
    e = cls(message)
    e.sqlite_errorcode = code  # type: ignore[attr-defined]  # (as sqlite3 sets it on the errors it raises)
    return e


def mysql_error(code: int, message: str, cause: BaseException | None = None) -> pymysql.err.Error:
    e = pymysql.err.OperationalError(code, message)
    e.__context__ = cause  # PyMySQL raises its error while it handles the socket's
    return e


def pg_connect_error(**flags: bool) -> psycopg.OperationalError:
    """psycopg's error of a failed connection attempt: no SQLSTATE, the attempt's ``pgconn`` flags."""
    return psycopg.OperationalError("connection failed", pgconn=FinishedPGconn(**flags))


TABLES: dict[str, ErrorTable] = {"sqlite": SQLITE_ERRORS, "postgresql": pg_errors(), "mysql": mysql_errors()}
EXAMPLES: dict[str, dict[str, Example]] = {
    "sqlite": {
        "SQLITE_BUSY, SQLITE_LOCKED": Example(
            sqlite_error(sqlite3.OperationalError, "database is locked", sqlite3.SQLITE_BUSY)
        ),
        "SQLITE_NOTADB, SQLITE_CORRUPT": Example(
            sqlite_error(sqlite3.DatabaseError, "file is not a database", sqlite3.SQLITE_NOTADB), None, True
        ),
    },
    "postgresql": {
        "40P01 deadlock_detected, 40001 serialization_failure": Example(
            psycopg.errors.DeadlockDetected("deadlock detected")
        ),
        "57014 query_canceled, 55P03 lock_not_available": Example(
            psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
        ),
        "42501 insufficient_privilege": Example(psycopg.errors.InsufficientPrivilege("permission denied")),
        "connection timeout": Example(
            psycopg.errors.ConnectionTimeout("connection timeout expired"), None, True
        ),
        "no password": Example(pg_connect_error(needs_password=True), None, True),
        "a broken connection": Example(psycopg.OperationalError("server closed the connection"), BROKEN),
    },
    "mysql": {
        "ER_LOCK_DEADLOCK": Example(mysql_error(1213, "Deadlock found when trying to get lock")),
        "ER_LOCK_WAIT_TIMEOUT, ER_STATEMENT_TIMEOUT, ER_QUERY_TIMEOUT": Example(
            mysql_error(1205, "Lock wait timeout exceeded")
        ),
        "a socket timeout while connecting": Example(
            mysql_error(2003, "Can't connect to MySQL server on 'h' (timed out)", TimeoutError()), None, True
        ),
        "a socket timeout": Example(mysql_error(2013, "Lost connection (timed out)", TimeoutError())),
        "CR_CONN_HOST_ERROR, CR_CONNECTION_ERROR, CR_UNKNOWN_HOST, a lost connection, while connecting": Example(
            mysql_error(2003, "Can't connect to MySQL server on 'h'", ConnectionRefusedError()), None, True
        ),
        "InterfaceError": Example(pymysql.err.InterfaceError(0, "")),
        "CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_COMMANDS_OUT_OF_SYNC, CR_SERVER_LOST_EXTENDED, "
        "ER_CLIENT_INTERACTION_TIMEOUT": Example(mysql_error(2013, "Lost connection to MySQL server")),
        "ER_ACCESS_DENIED_ERROR": Example(mysql_error(1045, "Access denied for user 'u'"), None, True),
        "ER_BAD_DB_ERROR": Example(mysql_error(1049, "Unknown database 'db'"), None, True),
        "ER_DBACCESS_DENIED_ERROR while connecting": Example(mysql_error(1044, "Access denied"), None, True),
        "ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR": Example(
            mysql_error(1142, "CREATE command denied")
        ),
    },
}


@pytest.mark.parametrize(
    ("engine", "row"), [(engine, rule.name) for engine, table in TABLES.items() for rule in table.rules]
)
def test_each_row_of_an_engines_error_table_takes_its_errors(engine: str, row: str) -> None:
    table, example = TABLES[engine], EXAMPLES[engine][row]  # (a row without an example fails here)
    assert table.rule_for(example.error, example.conn, connecting=example.connecting) is table.rule(row)


def test_every_database_engine_has_its_error_table_here() -> None:
    assert sorted(TABLES) == sorted(
        DATABASES
    )  # (a new engine: its table in TABLES, its rows' errors in EXAMPLES)


def test_an_error_no_row_takes_is_refused_in_the_drivers_words() -> None:
    assert SQLITE_ERRORS.fault(sqlite_error(sqlite3.OperationalError, "no such table: x", 1)) is Fault.REFUSED
    assert mysql_errors().fault(mysql_error(1064, "You have an error in your SQL syntax")) is Fault.REFUSED
    lost = psycopg.OperationalError("server closed the connection")
    assert pg_errors().fault(lost, LIVE) is Fault.REFUSED and pg_errors().fault(lost, None) is Fault.LOST


PLACE = Place(
    "postgresql://u:***@h/db",
    2.0,
    database="db",
    user="u",
    password_from="the URL, PGPASSWORD or ~/.pgpass",
    create_database="e.g. `createdb`",
)
S = "postgresql://u:***@h/db"
MESSAGES: dict[Fault, tuple[type[StoreError], str]] = {
    Fault.LOST: (StoreUnavailable, f"the database {S} stopped answering (it said so)"),
    Fault.DEADLOCK: (StoreUnavailable, f"{S} is too busy: its writers keep deadlocking (it said so)"),
    Fault.TIMEOUT: (StoreUnavailable, f"{S} did not answer within 2 s"),
    Fault.CONNECT_TIMEOUT: (
        StoreUnavailable,
        f"{S} did not answer within 2 s; is the server up and the address right?",
    ),
    Fault.UNREACHABLE: (StoreUnavailable, f"cannot connect to {S} (it said so); is the server running?"),
    Fault.BUSY: (StoreUnavailable, f"{S} is busy (locked by another program) for more than 2 s"),
    Fault.NO_PASSWORD: (
        StoreError,
        f"{S} refused the login (no password given): give it in the URL, PGPASSWORD or ~/.pgpass",
    ),
    Fault.LOGIN: (
        StoreError,
        f"{S} refused the login (it said so): give the password in the URL, PGPASSWORD or ~/.pgpass",
    ),
    Fault.NO_DATABASE: (
        StoreError,
        f"{S}: the database 'db' does not exist; create it (e.g. `createdb`) or fix the URL",
    ),
    Fault.DATABASE_DENIED: (
        StoreError,
        f"{S}: the database 'db' does not exist or user 'u' may not use it; create it or grant access",
    ),
    Fault.NOT_ALLOWED: (
        StoreError,
        f"{S}: the user may not do this (it said so); chatcli needs to create and write its tables (chatcli_*)",
    ),
    Fault.NOT_A_DATABASE: (
        StoreError,
        f"{S} is not a database chatcli can use (it said so); move the file away or choose another one",
    ),
    Fault.REFUSED: (StoreError, f"{S}: it said so"),
}


@pytest.mark.parametrize("fault", list(Fault))
def test_each_fault_says_what_happened_and_what_to_do(fault: Fault) -> None:
    cls, text = MESSAGES[fault]
    e = error_for(fault, PLACE, "it said so")
    assert type(e) is cls and str(e) == text


def test_a_refusal_while_connecting_says_the_store_cannot_be_used() -> None:
    assert (
        str(error_for(Fault.REFUSED, PLACE, "it said so", connecting=True)) == f"cannot use {S}: it said so"
    )


# -- PostgreSQL at connect time: no SQLSTATE, so the server is asked ----------------------------------------
@pytest.mark.parametrize(
    ("answers", "exists", "refused_password", "used_password", "fault"),
    [
        (False, None, False, False, Fault.UNREACHABLE),  # no server answers PQping at the address
        (True, False, False, True, Fault.NO_DATABASE),  # logged in to postgres: no such database
        (True, True, False, True, Fault.DATABASE_DENIED),  # ... it exists: this user may not open it
        (True, None, True, True, Fault.LOGIN),  # refused there too, a password used both times
        (True, None, False, True, Fault.REFUSED),  # refused there for another reason: its own words
        (True, None, True, False, Fault.REFUSED),  # no password was used: not a wrong one
    ],
)
def test_postgresql_asks_the_server_what_a_refused_connection_was(
    answers: bool, exists: bool | None, refused_password: bool, used_password: bool, fault: Fault
) -> None:
    engine = PostgreSQL(parse_store("postgresql://u@127.0.0.1:1/db"))
    engine._answers = lambda: answers  # type: ignore[method-assign]
    engine._database_exists = lambda: (exists, refused_password)  # type: ignore[method-assign]
    assert engine.connect_fault(pg_connect_error(used_password=used_password)) is fault


# -- the real drivers' errors ------------------------------------------------------------------------------
def refused(spec: str) -> tuple[Fault, str]:
    """(the fault, chatcli's message) of opening the database ``spec``, which fails."""
    st = open_database(parse_store(spec), timeout=5)
    try:
        with pytest.raises(StoreError) as info:
            st.ids()
        engine: Any = st.engine  # type: ignore[attr-defined]
        try:
            engine.connect(None).close()
        except engine.errors.driver as e:
            return engine.connect_fault(e), str(info.value)
        raise AssertionError("the connection did not fail again")
    finally:
        st.close()


def test_sqlite_stores_making_one_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    # Each new connection switches the file to WAL; two that do so at once both hold a read lock and want the
    # write lock, and SQLite refuses one of them at once (SQLITE_BUSY, its busy timeout not used): two
    # migrates into one new file failed so about one time in thirty. Four stores save into a new file at
    # once, over and over: every save lands.
    failed: list[str] = []

    def save(url: StoreURL, k: int, start: threading.Barrier) -> None:
        st = open_database(url, timeout=5)
        try:
            start.wait()
            put(st, snap(f"20260101-0000{k:02d}-abcd"))
        except Exception as e:
            failed.append(f"{url.display}: {e}")
        finally:
            st.close()

    for n in range(60):
        url, start = parse_store(f"sqlite:///{tmp_path}/new{n}.db"), threading.Barrier(4)
        threads = [threading.Thread(target=save, args=(url, k, start)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failed == []


def test_sqlite_errors_by_result_code(tmp_path: Path) -> None:
    db = tmp_path / "chats.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # another program writing
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            sqlite3.connect(db, timeout=0.1, isolation_level=None).execute("BEGIN IMMEDIATE")
        assert SQLITE_ERRORS.fault(busy.value) is Fault.BUSY
        st = open_database(parse_store(f"sqlite:///{db}"), timeout=0.2)
        with pytest.raises(
            StoreUnavailable, match=r"chats.db is busy \(locked by another program\) for more than 0.2 s"
        ):
            st.ids()
        st.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, " * 512)
    assert refused(f"sqlite:///{junk}") == (
        Fault.NOT_A_DATABASE,
        f"sqlite:///{junk} is not a database chatcli can use (file is not a database); move the file away or "
        "choose another one",
    )


def test_no_server_at_the_address_is_unavailable() -> None:
    for spec in (f"postgresql://u@127.0.0.1:{free_port()}/db", f"mysql://u@127.0.0.1:{free_port()}/db"):
        fault, message = refused(spec)
        assert fault is Fault.UNREACHABLE, spec
        assert message.startswith(f"cannot connect to {spec} (") and message.endswith(
            "; is the server running?"
        )
        assert "refused" in message.lower()


def test_a_password_the_server_wants_and_nobody_gave(pg_server: Any, mariadb_server: Any) -> None:
    for srv, where in (
        (pg_server, "the URL, PGPASSWORD or ~/.pgpass"),
        (mariadb_server, "the URL or MYSQL_PWD"),
    ):
        spec = srv.new_database().replace(":chatcli-secret@", "@")
        assert refused(spec) == (
            Fault.NO_PASSWORD,
            f"{spec} refused the login (no password given): give it in {where}",
        )


def test_a_postgresql_database_the_user_may_not_open(pg_server: Any) -> None:
    owned = pg_server.new_database(user="owner1", password="owner-pw")
    other = pg_server.new_database(user="other1", password="other-pw")
    name = owned.rsplit("/", 1)[1]
    pg_server._sql((f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC", ()))
    spec = other.rsplit("/", 1)[0] + "/" + name
    fault, message = refused(spec)
    assert fault is Fault.DATABASE_DENIED
    shown = spec.replace(":other-pw@", ":***@")
    assert (
        message
        == f"{shown}: the database '{name}' does not exist or user 'other1' may not use it; create it or grant access"
    )
