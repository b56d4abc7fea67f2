"""Where sessions are kept. A store is named by a folder path (the default, ``./sessions``: JSON snapshot
files) or a URL (``sqlite://``, ``postgresql://``, ``mysql://``): ``parse_store`` turns the name into a
``StoreURL`` (``chatcli.stores.url``), ``open_store`` opens it; a database driver is imported only when its
engine is opened. A password in a URL is never shown: ``StoreURL.display`` has ``***`` in its place.

The database engines are the entries of DATABASES: an engine is added there (and its URL scheme in
``url.SCHEMES``); see README, "Adding a database engine".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chatcli.errors import ConfigError
from chatcli.stores.url import SCHEMES, StoreURL, parse_store

if TYPE_CHECKING:
    from chatcli.stores.base import Store, VersionedStore

#: how a password is asked for (a prompt, e.g. ``Password for postgresql://...: ``), or None: never ask
AskPassword = Callable[[str], str] | None
#: what opens a database engine's store: (its URL, the timeout in seconds, how to ask for a password)
Opener = Callable[[StoreURL, float, AskPassword], "VersionedStore"]


def _sqlite(url: StoreURL, timeout: float, ask_password: AskPassword) -> VersionedStore:
    from chatcli.stores.sqlite import open_sqlite

    return open_sqlite(url, timeout)


def _postgresql(url: StoreURL, timeout: float, ask_password: AskPassword) -> VersionedStore:
    from chatcli.stores.postgresql import open_postgresql

    return open_postgresql(url, timeout, ask_password)


def _mysql(url: StoreURL, timeout: float, ask_password: AskPassword) -> VersionedStore:
    from chatcli.stores.mysql import open_mysql

    return open_mysql(url, timeout, ask_password)


#: the database engines, by the ``StoreURL.kind`` that names them; each entry imports its engine (and so
#: its driver) only when a store of it is opened
DATABASES: dict[str, Opener] = {"sqlite": _sqlite, "postgresql": _postgresql, "mysql": _mysql}
#: every engine: the folder store and the databases
ENGINES = ("folder", *DATABASES)


def open_store(
    url: StoreURL,
    *,
    timeout: float = 10.0,
    ask_password: AskPassword = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Store:
    """Open the store ``url`` names (nothing is connected or created until it is used). ``timeout``:
    seconds a database statement or connection attempt may take; ``ask_password(prompt)``: how to ask for
    a password a database wants (None: never ask); ``on_progress``: the folder store's index progress.
    Raises ConfigError for options the engine refuses."""
    if url.kind in DATABASES:
        return open_database(url, timeout=timeout, ask_password=ask_password)
    from chatcli.stores.folder import FolderStore

    assert url.path is not None
    return FolderStore(url.path, on_progress=on_progress)


def open_database(
    url: StoreURL, *, timeout: float = 10.0, ask_password: AskPassword = None
) -> VersionedStore:
    """``open_store`` for a URL that names a database (``url.is_database``): its store has row versions
    (what the spool needs). Raises ConfigError for a folder."""
    opener = DATABASES.get(url.kind)
    if opener is None:
        raise ConfigError(f"{url.display} is a folder, not a database")
    return opener(url, timeout, ask_password)


__all__ = ["DATABASES", "ENGINES", "SCHEMES", "StoreURL", "open_database", "open_store", "parse_store"]
