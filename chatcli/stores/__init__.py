"""Where sessions are kept. A store is named by a folder path (the default, ``./sessions``: JSON snapshot
files) or a URL (``sqlite://``, ``postgresql://``, ``mysql://``): ``parse_store`` turns the name into a
``StoreURL`` (``chatcli.stores.url``), ``open_store`` opens it; a database driver is imported only when its
engine is opened. A password in a URL is never shown: ``StoreURL.display`` has ``***`` in its place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chatcli.stores.url import SCHEMES, StoreURL, parse_store

if TYPE_CHECKING:
    from chatcli.stores.base import Store


def open_store(
    url: StoreURL,
    *,
    timeout: float = 10.0,
    ask_password: Callable[[str], str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Store:
    """Open the store ``url`` names (nothing is connected or created until it is used). ``timeout``:
    seconds a database statement or connection attempt may take; ``ask_password(prompt)``: how to ask for
    a password a database wants (None: never ask); ``on_progress``: the folder store's index progress.
    Raises ConfigError for options the engine refuses."""
    if url.kind == "folder":
        from chatcli.stores.folder import FolderStore

        assert url.path is not None
        return FolderStore(url.path, on_progress=on_progress)
    if url.kind == "sqlite":
        from chatcli.stores.sqlite import SQLiteStore

        assert url.path is not None
        return SQLiteStore(url.path, timeout=timeout)
    if url.kind == "postgresql":
        from chatcli.stores.postgresql import PostgreSQLStore

        return PostgreSQLStore(url, timeout=timeout, ask_password=ask_password)
    from chatcli.stores.mysql import MySQLStore

    return MySQLStore(url, timeout=timeout, ask_password=ask_password)


__all__ = ["SCHEMES", "StoreURL", "open_store", "parse_store"]
