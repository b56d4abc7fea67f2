"""The store engines the tests run on, in one registry. ``FRESH[engine](request, tmp_path)`` makes a fresh,
empty store of that engine for one test and returns it as a ``--store`` value; ``SERVERS`` are the engines
on a database server the test session starts (its session fixture, and how a test stops it hard).

Every test parametrized by ``engine`` (the store contract: tests/test_stores.py, test_stores_cli.py,
test_migrate.py, test_upgrade.py...) runs on ENGINES, DATABASES or SERVER_ENGINES, all derived from here.
A new engine (an entry of ``chatcli.stores.DATABASES``) is one entry in FRESH (and one in SERVERS if its
store is on a server the tests start); ``pytest tests --engine NAME`` then runs the contract suite on it
alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest


def _folder(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "sessions")


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    (tmp_path / "db").mkdir(exist_ok=True)  # chatcli makes the file, never its folder
    return f"sqlite:///{tmp_path / 'db' / 'chats.db'}"  # sqlite:////abs: the absolute reading


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("pg_server").new_database())


def _mysql(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("mariadb_server").new_database())


#: a fresh, empty store of each engine, as a ``--store`` value
FRESH: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "folder": _folder,
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "mysql": _mysql,
}


class Server(NamedTuple):
    """A database server the test session starts (tests/dbservers.py): its session ``fixture``, and the
    ``hard_stop`` mode of its ``stop`` that kills it as a crash would."""

    fixture: str
    hard_stop: str


SERVERS: dict[str, Server] = {
    "postgresql": Server("pg_server", "immediate"),  # pg_ctl stop -m immediate
    "mysql": Server("mariadb_server", "kill"),  # mysqld SIGKILLed
}

ENGINES = tuple(FRESH)
DATABASES = tuple(e for e in ENGINES if e != "folder")
SERVER_ENGINES = tuple(SERVERS)

__all__ = ["DATABASES", "ENGINES", "FRESH", "SERVERS", "SERVER_ENGINES", "Server"]
