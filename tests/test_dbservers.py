"""Quick tests of tests/dbservers.py against the real servers: URLs that work with psycopg and PyMySQL,
committed rows that survive an immediate shutdown and a SIGKILL, passwords that are really checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql  # type: ignore[import-untyped]
import pytest

import dbservers

ODD_PASSWORD = "p@ss:w/rd %"  # needs percent-encoding in a URL


def url_parts(url: str) -> dict[str, Any]:
    """The connection parameters in a ``scheme://user:password@host:port/db`` URL."""
    parts = urlsplit(url)
    return {
        "host": parts.hostname,
        "port": parts.port,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "db": parts.path.lstrip("/"),
    }


def pg_connect(url: str, **override: Any) -> psycopg.Connection[Any]:
    p = url_parts(url) | override
    return psycopg.connect(
        host=p["host"],
        port=p["port"],
        user=p["user"],
        password=p["password"],
        dbname=p["db"],
        connect_timeout=5,
    )


def my_connect(url: str, **override: Any) -> pymysql.Connection:
    p = url_parts(url) | override
    return pymysql.connect(
        host=p["host"],
        port=p["port"],
        user=p["user"],
        password=p["password"],
        database=p["db"],
        connect_timeout=5,
    )


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dbservers.PostgresServer]:
    with dbservers.PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(scope="module")
def maria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dbservers.MariaDBServer]:
    with dbservers.MariaDBServer(tmp_path_factory.mktemp("maria")) as server:
        yield server


def test_binaries_are_found_and_free_port_is_bindable() -> None:
    assert dbservers.missing_servers() == []
    port = dbservers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dbservers, "_pg_bindir", lambda: None)
    monkeypatch.setattr(dbservers, "_mariadb_binaries", lambda: None)
    assert dbservers.missing_servers() == ["postgresql-15", "mariadb-server"]
    for cls in (dbservers.PostgresServer, dbservers.MariaDBServer):
        server, package = cls(tmp_path / cls.kind), cls.package
        with pytest.raises(RuntimeError, match=f"apt-get install {package}$"):
            server.start()
        server.close()


def test_a_folder_with_files_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    server = dbservers.PostgresServer(tmp_path)
    with pytest.raises(RuntimeError, match="not empty"):
        server.start()
    server.close()
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_postgres_rows_survive_immediate_stop_and_kill(pg: dbservers.PostgresServer) -> None:
    assert pg.version.startswith("15."), pg.version
    url = pg.new_database(password=ODD_PASSWORD)
    assert url.startswith(f"postgresql://chatcli:p%40ss%3Aw%2Frd%20%25@127.0.0.1:{pg.port}/db_")
    with pg_connect(url) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
    port = pg.port
    for mode in ("immediate", "kill"):
        with pg_connect(url) as conn:  # commits on leaving the block
            conn.execute("INSERT INTO notes (body) VALUES (%s)", (f"before {mode} 👋",))
        pg.stop(mode)
        assert not pg.running
        pg.start()
        assert pg.port == port
    with pg_connect(url) as conn:
        rows = [body for (body,) in conn.execute("SELECT body FROM notes ORDER BY id")]
    assert rows == ["before immediate 👋", "before kill 👋"]


def test_postgres_checks_passwords(pg: dbservers.PostgresServer) -> None:
    url = pg.new_database(user="checker", password="right")
    pg_connect(url).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg_connect(url, password="wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg_connect(pg.admin_url, password="wrong")
    with pytest.raises(ValueError, match="another password"):
        pg.new_database(user="checker", password="other")


def test_mariadb_rows_survive_immediate_stop_and_kill(maria: dbservers.MariaDBServer) -> None:
    assert maria.version.startswith("10.11.") and "MariaDB" in maria.version, maria.version
    url = maria.new_database(password=ODD_PASSWORD)
    assert url.startswith(f"mysql://chatcli:p%40ss%3Aw%2Frd%20%25@127.0.0.1:{maria.port}/db_")
    with my_connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT @@innodb_ft_min_token_size, @@innodb_ft_enable_stopword, @@innodb_flush_log_at_trx_commit"
        )
        assert cur.fetchone() == (3, 1, 1)
        cur.execute(
            "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT NOT NULL) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
    port = maria.port
    for mode in ("immediate", "kill"):
        with my_connect(url) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO notes (body) VALUES (%s)", (f"before {mode} 👋",))
            conn.commit()
        maria.stop(mode)
        assert not maria.running
        maria.start()
        assert maria.port == port
    with my_connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT body FROM notes ORDER BY id")
        assert [body for (body,) in cur.fetchall()] == ["before immediate 👋", "before kill 👋"]


def test_mariadb_checks_passwords(maria: dbservers.MariaDBServer) -> None:
    url = maria.new_database(user="checker", password="right")
    my_connect(url).close()
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        my_connect(url, password="wrong")
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        my_connect(maria.admin_url, password="wrong")


def test_drop_database(pg: dbservers.PostgresServer, maria: dbservers.MariaDBServer) -> None:
    pg_url, my_url = pg.new_database("doomed", user="dropper"), maria.new_database("doomed", user="dropper")
    held = pg_connect(pg_url)  # an open connection does not block the drop
    pg.drop_database("doomed")
    maria.drop_database("doomed")
    held.close()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        pg_connect(pg_url)
    with pytest.raises(pymysql.err.OperationalError, match="Unknown database"):
        my_connect(my_url)


def test_close_stops_the_server_and_removes_its_folder(tmp_path: Path) -> None:
    server = dbservers.PostgresServer(tmp_path / "short-lived")
    server.start()
    server.stop("fast")
    server.start()
    assert server._proc is not None
    pid = server._proc.pid
    server.close()
    server.close()
    assert not server.base.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        server.start()


def test_main_prints_ready_and_cleans_up_on_sigterm() -> None:
    script = Path(dbservers.__file__)
    proc = subprocess.Popen(
        [sys.executable, str(script), "--only", "postgresql"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[:1] == ["READY"] and words[1].startswith("postgresql://"), words
        with pg_connect(words[1]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    with pytest.raises(psycopg.OperationalError):
        pg_connect(words[1])
