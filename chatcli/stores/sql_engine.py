"""What one SQL engine gives the SQL store (``sql.SQLStore``): an ``Engine``. A new engine writes one (see
README, "Adding a database engine"); everything else, the tables' mapping, the incremental save, the
version check, the trash, the catalog, the search skeleton, the retries and the spool, is shared.

An engine is made of:

- its ``Dialect`` (``sql_dialect.py``): how its SQL spells what the shared statements need;
- its driver: ``connect`` (a connection in autocommit mode, its timeouts set) and its ``ErrorTable``
  (``sql_errors.py``): the driver's errors, by class and code, as chatcli's faults;
- its ``SessionLocks``: the one-writer-per-session lock, and the lock that serialises migrations;
- its ``FullText`` strategy (``sql_search.py``): what its index is given and how it finds words;
- its migrations, named as ``sql_schema.MIGRATION_NAMES`` (``sql_schema.named``);
- ``write_messages``, a save's message rows (by default ``sql_write.upsert_messages``), ``load_messages``,
  the bulk path of new sessions (COPY, say, with ``streams_load``), and ``disk_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from chatcli.stores.sql_dialect import Dialect
from chatcli.stores.sql_errors import ErrorTable, Fault, Place
from chatcli.stores.sql_rows import Searched
from chatcli.stores.sql_schema import Step
from chatcli.stores.sql_search import FullText


class SessionLocks(Protocol):
    """An engine's locks. A session's writer lock is taken at once or not at all; it must be freed when
    its holder dies, however it dies (a lock on the connection, which the server frees with it; an OS
    file lock). ``cur`` is a cursor of the store's connection."""

    #: whether the locks live on the connection: the server frees them when the connection ends, and the
    #: store takes them back after it reconnects (False: they do not, e.g. lock files)
    on_connection: bool

    def take(self, cur: Any, session_id: str) -> bool:
        """Take the session's writer lock now; False when another holder has it. Raises SessionLocked
        when it cannot be tried at all."""
        ...

    def release(self, cur: Any, session_id: str) -> None:
        """Let the session's lock go (``cur`` is None when the locks are not on the connection)."""
        ...

    def take_schema(self, cur: Any) -> Any:
        """Take the lock that keeps two chatclis from migrating at once, waiting up to the store's timeout;
        returns what ``release_schema`` needs. Raises StoreUnavailable when it is not had in time."""
        ...

    def release_schema(self, cur: Any, token: Any) -> None:
        """Let the migration lock go."""
        ...


class Engine(Protocol):
    """One SQL engine (sqlite, postgresql, mysql), as SQLStore composes it."""

    @property
    def kind(self) -> str:
        """The engine's name: the kind of its URLs (``StoreURL.kind``)."""
        ...

    @property
    def dialect(self) -> Dialect: ...

    @property
    def fulltext(self) -> FullText: ...

    @property
    def locks(self) -> SessionLocks: ...

    @property
    def streams_load(self) -> bool:
        """Whether ``load_messages`` sends each row as it takes it (COPY): ``create_many`` then makes the rows
        inside its transaction, while the server stores the ones before; otherwise it makes them all before
        the transaction, which then holds its locks only while the database writes."""
        ...

    @property
    def migrations(self) -> Sequence[tuple[str, Step]]:
        """migrations[n] = (name, step) brings the schema from version n to n + 1: ``sql_schema.named``."""
        ...

    @property
    def place(self) -> Place:
        """What the messages of its errors name."""
        ...

    @property
    def errors(self) -> ErrorTable:
        """The driver's error table (imports the driver)."""
        ...

    @property
    def secrets(self) -> frozenset[str]:
        """Passwords it found outside the URL (the environment): blanked out of every message."""
        ...

    def connect(self, password: str | None) -> Any:
        """A new connection in autocommit mode with the store's timeouts set (``password``: one asked
        for; None: the engine's own way of finding one). Raises the driver's errors, and StoreError for
        what is wrong before it (a missing driver, a server too old)."""
        ...

    def connect_fault(self, e: BaseException) -> Fault:
        """The fault of error ``e`` raised by ``connect`` (the error table's, or more where the driver
        gives no code at connect time)."""
        ...

    def said(self, e: BaseException, fault: Fault) -> str:
        """The driver's own words for ``e`` (a ``fault``), on one line (not yet redacted)."""
        ...

    def writing(self) -> bool:
        """A write is coming: True when the open connection cannot take it and must be opened again (an
        SQLite store whose file does not exist yet reads from an empty database in memory)."""
        ...

    def write_messages(self, cur: Any, rows: list[tuple[Any, ...]], searched: list[Searched]) -> None:
        """Insert or replace message ``rows`` (session_id, then MESSAGE_COLUMNS), each with what its full-text
        index is given for its text and reasoning (None: it has none): the bulk path of a save and of
        ``create_many`` (one statement batch)."""
        ...

    def load_messages(self, cur: Any, messages: Iterable[tuple[tuple[Any, ...], Searched]]) -> None:
        """Insert ``messages``, each a row (as ``write_messages``) with what its full-text index is given, of
        sessions created in the caller's transaction, so that none of them is in the table yet: the bulk path
        of ``create_many`` (``migrate``, ``import``), the fastest way the engine has (``write_messages`` when
        it has none faster). The rows are made as they are taken from ``messages``: an engine that streams
        them (COPY) has the server store some while the next are made."""
        ...

    def disk_bytes(self, cur: Any) -> int:
        """Space the store's tables take, in bytes."""
        ...


__all__ = ["Engine", "SessionLocks"]
