"""Where sessions are kept. A store is named by a folder path (the default, ``./sessions``: JSON snapshot
files) or a URL::

    sqlite:///abs/path/chats.db    sqlite://relative/chats.db    sqlite://~/chats.db
    postgresql://user[:password]@host[:port]/db[?libpq options]      (also postgres://)
    mysql://user[:password]@host[:port]/db[?unix_socket=PATH]        (also mariadb://)

``parse_store`` checks the name, ``open_store`` opens it; a database driver is imported only when its
engine is opened. A password in a URL is never shown: ``StoreSpec.display`` has ``***`` in its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from chatcli.errors import ConfigError

if TYPE_CHECKING:
    from chatcli.stores.base import Store

SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


@dataclass(frozen=True)
class StoreSpec:
    """A parsed store name: ``kind`` (folder, sqlite, postgresql, mysql), ``target`` (the folder or file
    path, or the URL to connect with: it may hold a password, so it is never shown or written), and
    ``display`` (what messages show)."""

    kind: str
    target: str = field(repr=False)
    display: str

    @property
    def is_database(self) -> bool:
        """Whether the store is a database (sqlite, postgresql, mysql) rather than the folder."""
        return self.kind != "folder"


def parse_store(name: str | Path) -> StoreSpec:
    """The StoreSpec for a folder path or a store URL. Raises ConfigError for an unknown scheme or a URL
    that names no database."""
    text = str(name).strip()
    if not text:
        raise ConfigError("the store is empty: give a folder path or a URL such as sqlite:///path/chats.db")
    if "://" not in text:
        folder = Path(text).expanduser()
        return StoreSpec("folder", str(folder), str(folder))
    scheme = text.split("://", 1)[0].lower()
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise ConfigError(
            f"unknown store {mask_url(text)!r}: use a folder path, sqlite:///FILE, "
            f"postgresql://user@host/db or mysql://user@host/db"
        )
    if kind == "sqlite":
        path = text.split("://", 1)[1]
        if not path or path.endswith("/"):
            raise ConfigError(f"{text!r} names no database file: use sqlite:///path/to/chats.db")
        file = Path(path).expanduser()
        return StoreSpec("sqlite", str(file), f"sqlite://{file}")
    parts = urlsplit(text)
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"{mask_url(text)!r} names no host: use {scheme}://user@host/database")
    if not parts.path.strip("/"):
        raise ConfigError(f"{mask_url(text)!r} names no database: use {scheme}://user@host/database")
    return StoreSpec(kind, text, mask_url(text))


def mask_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``: ``postgresql://ann:***@db/chats``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a store URL that cannot be read>"
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    user = quote(parts.username or "", safe="")
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def address(display: str) -> str:
    """A store's ``display`` (see ``mask_url``) with the masked password left out, for a command line to
    copy (``postgresql://ann@db/chats``: the password is found again where it was found) and for naming
    the store's local spool."""
    return display.replace(":***@", "@")


def open_store(
    spec: StoreSpec,
    *,
    timeout: float = 10.0,
    ask_password: Callable[[str], str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Store:
    """Open the store ``spec`` names (nothing is connected or created until it is used). ``timeout``:
    seconds a database statement or connection attempt may take; ``ask_password(prompt)``: how to ask for
    a password a database wants (None: never ask); ``on_progress``: the folder store's index progress."""
    if spec.kind == "folder":
        from chatcli.stores.folder import FolderStore

        return FolderStore(spec.target, on_progress=on_progress)
    if spec.kind == "sqlite":
        from chatcli.stores.sqlite import SQLiteStore

        return SQLiteStore(spec.target, timeout=timeout)
    if spec.kind == "postgresql":
        from chatcli.stores.postgresql import PostgreSQLStore

        return PostgreSQLStore(spec.target, spec.display, timeout=timeout, ask_password=ask_password)
    from chatcli.stores.mysql import MySQLStore

    return MySQLStore(spec.target, spec.display, timeout=timeout, ask_password=ask_password)
