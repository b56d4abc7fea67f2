"""The store contract: what every engine (folder, sqlite, postgresql, mysql) does, with the same
guarantees and the same errors, split by what callers need:

- ``SessionStore``: one session at a time (``lock``, ``load``, ``save``, ``create``, ``create_many``,
  ``exists``, ``location``, ``stored_size``): what a conversation, ``import`` and ``migrate`` need;
- ``Catalog``: many sessions (``ids``, ``trashed_ids``, ``newest_id``, ``ids_titled``, ``page``, ``search``,
  ``totals``): ``list``, ``search``, ``stats`` and looking an id up;
- ``Trash``: ``trash``, ``restore``, ``purge``;
- ``Store``: all three, what every engine implements;
- ``Versions``: the row versions of a store whose sessions have them (a database): what the spool needs
  to write turns kept while the database did not answer back over nobody else's (``VersionedStore``: a
  Store with Versions).

A store holds sessions by id (``chatcli.model.Conversation``; on disk, their snapshots). ``save``
returns only once the write is durable (the folder: an atomic file replace and fsyncs; a database: a
committed transaction). ``lock`` makes one writer per session across every process, and every machine,
that shares the store; the lock goes when its holder does, however it ends. The trash holds deleted
sessions until ``restore`` or ``purge``. The catalog (``page``, ``search``, ``totals``) answers ``list``,
``search`` and ``stats``.

Errors: SessionNotFound, SessionExists, SessionLocked, SnapshotError, SaveError, InvalidSessionId (an id
is checked before anything is touched), StoreUnavailable (a database that does not answer), StoreConflict
(another writer saved the session meanwhile), StoreError (anything else that stops the store being used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatcli.model import Conversation
from chatcli.search import SearchHit
from chatcli.snapshot import DamagedFile, SessionSummary

#: the most rows a store is asked for at once: a larger limit is this (every engine's LIMIT takes it)
MAX_ROWS = 2**31 - 1


def rows_limit(limit: int | None) -> int | None:
    """``limit`` as a store queries it: None (all), or 0 to MAX_ROWS."""
    return None if limit is None else max(0, min(int(limit), MAX_ROWS))


@dataclass(frozen=True)
class SaveInfo:
    """What a save wrote: ``location`` (a file path, or the store's address and the session id), ``size``
    in bytes when the store knows it (the snapshot file; None for a database), ``saved_at`` (UTC ISO 8601),
    and ``spooled`` when the database did not answer and the turn went to the local spool instead
    (``location`` is then the spool file)."""

    location: str
    size: int | None
    saved_at: str
    spooled: bool = False


@dataclass(frozen=True)
class Page:
    """A page of ``chatcli list``: the ``rows`` shown, the ``damaged`` entries, and how many sessions match
    in all (``total``)."""

    rows: list[SessionSummary]
    damaged: list[DamagedFile] = field(default_factory=list)
    total: int = 0


class SessionLock(Protocol):
    """A held session lock (a lock file, or a database lock held by the store's connection)."""

    def release(self) -> None:
        """Let the lock go. Safe to call twice; never raises."""
        ...


class SessionStore(Protocol):
    """Sessions one at a time. ``kind`` is ``folder``, ``sqlite``, ``postgresql`` or ``mysql``; ``display``
    is how the store is shown (a folder path, or a URL with its password as ``***``). Besides the errors
    each method names, a database store raises StoreUnavailable when the server does not answer (within
    its connect and statement timeouts) and StoreError for what the server refuses."""

    kind: str
    display: str

    def lock(self, session_id: str) -> SessionLock:
        """Take the session's writer lock now, or raise SessionLocked (held by another chatcli)."""
        ...

    def load(self, session_id: str, *, trashed: bool = False) -> Conversation:
        """The session, validated (from the trash when ``trashed``). Raises SessionNotFound, SnapshotError."""
        ...

    def save(self, conv: Conversation, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        """Write ``conv`` durably over the session's last state (hold its lock). Messages before
        ``changed_from`` are as this store last saved or loaded them for this session, so a database writes
        only the rest. ``checkpoint``: a save of a reply still streaming (a store may take a cheaper path,
        e.g. not retry a database that stopped answering). Raises SaveError, StoreUnavailable,
        StoreConflict, SessionLocked (the lock was lost)."""
        ...

    def create(self, conv: Conversation, *, trashed: bool = False) -> SaveInfo:
        """Write a session that is not in the store yet (into the trash when ``trashed``). Raises
        SessionExists when its id is taken, live or in the trash; SaveError."""
        ...

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        """``create`` for many sessions at once (each with its ``trashed``), as fast as the store can (a
        database: one transaction); returns the ids written, in order: one whose id is taken is left out,
        never overwritten. All or none of them are written when the store has transactions. Raises
        SaveError (a session that cannot be stored: nothing of the batch is written), StoreUnavailable."""
        ...

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        """Whether the store holds that session (in the trash when ``trashed``). Raises InvalidSessionId."""
        ...

    def location(self, session_id: str, *, trashed: bool = False) -> str:
        """Where the session is kept (in the trash when ``trashed``), for messages: a file path, or the
        store's address and the id."""
        ...

    def stored_size(self, session_id: str) -> int | None:
        """The size of the session's snapshot in bytes, when the store keeps one (None otherwise)."""
        ...

    def close(self) -> None:
        """Release connections and locks still held. Safe to call twice."""
        ...


class Catalog(Protocol):
    """Many sessions at once: ids, ``list`` pages, ``search`` and ``stats`` figures."""

    def ids(self) -> list[str]:
        """Every live session's id, sorted (ids sort by creation time)."""
        ...

    def trashed_ids(self) -> list[str]:
        """Every trashed session's id, sorted."""
        ...

    def newest_id(self) -> str | None:
        """The id of the most recently updated live session (``resume last``), None when there is none."""
        ...

    def ids_titled(self, title: str) -> list[str]:
        """Ids of the live sessions whose title is exactly ``title`` (``resolve`` by title)."""
        ...

    def page(
        self,
        limit: int | None = None,
        *,
        since: str | None = None,
        before: str | None = None,
        model: str | None = None,
        title: str | None = None,
        trashed: bool = False,
    ) -> Page:
        """Live sessions (those in the trash when ``trashed``), most recently updated first: at most
        ``limit`` (all when None), updated at or after ``since`` and before ``before`` (UTC ISO 8601), whose
        model name holds ``model`` (case ignored), whose title is exactly ``title``."""
        ...

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        """Messages and titles of live sessions holding every word of ``text`` as a word prefix (case and
        accents ignored), best first, among the SEARCH_WINDOW most recent matches. With ``reasoning`` the
        assistant's reasoning too: such hits have the role ``reasoning`` (``role="assistant"`` keeps them,
        ``user`` and ``title`` do not)."""
        ...

    def totals(self, active_since: str) -> dict[str, Any]:
        """Figures over every live session: ``sessions``, ``active`` (updated at or after ``active_since``),
        ``messages``, ``user_messages``, ``assistant_messages``, ``characters``, ``prompt_tokens``,
        ``completion_tokens``, ``cached_tokens``, ``models`` ([(backend/model, sessions)], most used first),
        ``damaged`` (entries that cannot be read), ``bytes`` (space the store takes on disk)."""
        ...


class Trash(Protocol):
    """Deleted sessions, kept until restored or purged."""

    def trash(self, session_id: str) -> None:
        """Move a live session to the trash. Raises SessionNotFound, SessionLocked."""
        ...

    def restore(self, session_id: str) -> None:
        """Bring a session back from the trash. Raises SessionNotFound, SessionExists (a live session has
        that id: nothing is overwritten)."""
        ...

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        """Remove a session for good, live (its lock is taken first) or from the trash. Raises
        SessionNotFound, SessionLocked."""
        ...


class Store(SessionStore, Catalog, Trash, Protocol):
    """One store of sessions: what every engine implements (see the parts)."""


class Versions(Protocol):
    """The row versions of a store whose sessions have them (a database): each save of a session moves its
    row to the next version, marked with the saving process's ``writer``. The spool (``spool.py``) checks
    them before it writes turns kept while the database did not answer, so it never writes over another
    chatcli's turns."""

    #: this process's mark on the rows it saves
    writer: str
    #: the store as a command line may name it again: no password in it (chatcli finds that again)
    address: str

    def saved_version(self, session_id: str) -> int | None:
        """The row version this store last read or wrote for the session (None: neither happened here)."""
        ...

    def row_version(self, session_id: str) -> tuple[int, str | None] | None:
        """The session row's (version, writer) in the store now; None when there is no such session."""
        ...


class VersionedStore(Store, Versions, Protocol):
    """A Store whose sessions have row versions (every database engine)."""
