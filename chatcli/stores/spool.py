"""The local spool: where a database store's turns go while the database does not answer.

``SpoolingStore`` wraps a database store. When a save fails, for whatever reason (the database is
unreachable, read-only, starting up, refuses the statement...), or because it can no longer be written
safely (StoreConflict: another writer changed the session; SessionLocked: another chatcli took the session
while the connection was lost), the whole snapshot is written atomically to
``<state dir>/spool/<kind>-<hash of the database's spool key>/<id>.json`` instead, and the REPL goes on. The
spool key names the database, not the URL's spelling (``StoreURL.identity``). The next
save that reaches the database writes everything the spool holds (message rows are upserted by index, so
nothing is written twice) and removes the file. A spool file left by a chatcli that was killed meanwhile is
written back by ``sync`` (``chatcli sync``, and at ``chatcli resume``), but only when the session in the
database is still the version the spool grew from, or was last written by that same chatcli; otherwise it is
reported and kept, never written over the database's newer turns.

A spool file: ``{"format": "chatcli.spool", "version": 1, "store", "session_id", "base_version", "writer",
"changed_from", "reason", "conflict", "spooled_at", "snapshot": <the snapshot>}``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from chatcli.clock import utc_now
from chatcli.errors import (
    SaveError,
    SessionLocked,
    SessionNotFound,
    SnapshotError,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from chatcli.model import Conversation
from chatcli.search import SearchHit
from chatcli.snapshot import dumps
from chatcli.stores.base import Page, SaveInfo, VersionedStore
from chatcli.stores.folder import ensure_folder, read_regular_file, remove_quietly, write_atomic
from chatcli.stores.url import StoreURL

SPOOL_FORMAT = "chatcli.spool"
SPOOL_VERSION = 1


def spool_folder(state_dir: Path, url: StoreURL) -> Path:
    """The spool folder of one database: named by its spool key (never holding the password)."""
    return state_dir / "spool" / f"{url.kind}-{_digest(url.identity)}"


def adopt_legacy_spool(state_dir: Path, url: StoreURL) -> None:
    """Move spool files that an older chatcli kept under the URL's spelling (``<scheme>-<hash of the
    URL>``) into the database's spool folder, so ``sync`` finds them whatever the URL looks like now.
    A file already in the new folder is left where it is. Never raises."""
    if url.legacy_spool is None:
        return
    old = state_dir / "spool" / url.legacy_spool
    new = spool_folder(state_dir, url)
    if old == new or not old.is_dir():
        return
    try:
        ensure_folder(new.parent)
        ensure_folder(new)
        for path in spooled(old):
            if not (new / path.name).exists():
                os.replace(path, new / path.name)
        old.rmdir()
    except (OSError, SaveError):
        pass


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class _Pending:
    changed_from: int
    base_version: int | None
    reason: str
    conflict: bool
    path: Path


class SpoolingStore:
    """``primary`` (a store with row versions: a database) with the spool in ``folder``.
    ``notify(message)`` is told, once per change, when turns start going to the spool and when they reach
    the database again. While the database does not answer it is tried again by the saves between turns
    (never by a checkpoint save of a streaming reply: a hung database must not hold up the reply), and
    when a failed attempt took long (half a second or more: a host that does not answer at all) only after
    ``retry_ratio`` times as long again, so retrying takes at most a tenth of the time."""

    retry_ratio = 10.0
    max_retry_wait = 60.0  # seconds

    def __init__(
        self, primary: VersionedStore, folder: Path, notify: Callable[[str], None] | None = None
    ) -> None:
        self.primary = primary
        self.kind = primary.kind
        self.display = primary.display
        self.folder = folder
        self.notify = notify
        self._pending: dict[str, _Pending] = {}
        self._retry_at = 0.0

    def pending(self, session_id: str) -> Path | None:
        """The spool file holding turns of ``session_id`` the database does not have yet (None: none)."""
        p = self._pending.get(session_id)
        return p.path if p is not None else None

    def save(self, conv: Conversation, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        sid = conv.id
        pending = self._pending.get(sid)
        if pending is not None:
            changed_from = min(changed_from, pending.changed_from)
            if pending.conflict or checkpoint or time.monotonic() < self._retry_at:
                return self._spool(conv, changed_from, pending.reason, pending.conflict)
        started = time.monotonic()
        try:
            info = self.primary.save(conv, changed_from=changed_from, checkpoint=checkpoint)
        except (StoreConflict, SessionLocked) as e:
            return self._spool(conv, changed_from, str(e), conflict=True)
        except (
            StoreError,
            SaveError,
        ) as e:  # unreachable, read-only, starting up, refused: kept, tried again
            now = time.monotonic()
            spent = now - started  # a refused connection costs nothing to try again; a silent host does
            self._retry_at = now + min(self.max_retry_wait, self.retry_ratio * spent) if spent >= 0.5 else 0.0
            return self._spool(conv, changed_from, str(e), conflict=False)
        if pending is not None:
            del self._pending[sid]
            remove_quietly(pending.path)
            self._say(
                f"{self.display} answers again: session {sid} is saved there, with the turns kept "
                f"on this machine meanwhile"
            )
        return info

    def _spool(self, conv: Conversation, changed_from: int, reason: str, conflict: bool) -> SaveInfo:
        sid = conv.id
        first = self._pending.get(sid)
        path = self.folder / f"{sid}.json"
        base = first.base_version if first is not None else self.primary.saved_version(sid)
        record = {
            "format": SPOOL_FORMAT,
            "version": SPOOL_VERSION,
            "store": self.display,
            "session_id": sid,
            "base_version": base,
            "writer": self.primary.writer,
            "changed_from": changed_from,
            "reason": reason,
            "conflict": conflict,
            "spooled_at": utc_now(),
            "snapshot": conv.to_json(),
        }
        data = dumps(record)
        try:
            ensure_folder(self.folder.parent)
            ensure_folder(self.folder)
            write_atomic(path, data)
        except SaveError as e:
            raise SaveError(f"{reason}; and keeping the turn on this machine failed too: {e}", path) from None
        self._pending[sid] = _Pending(changed_from, base, reason, conflict, path)
        if first is None or first.conflict != conflict:
            flag = f" --store {self.primary.address}"
            if conflict:
                self._say(
                    f"{reason} — this conversation goes on in {path} (nothing in the database is "
                    f"overwritten): bring it in as a new session with `chatcli import {path}{flag}`"
                )
            else:
                self._say(
                    f"{reason} — the turn is kept on this machine in {path} and goes to the database at the "
                    f"next save that reaches it, at `chatcli resume {sid}{flag}`, or with "
                    f"`chatcli sync{flag}`"
                )
        return SaveInfo(location=str(path), size=len(data), saved_at=utc_now(), spooled=True)

    def _say(self, message: str) -> None:
        if self.notify is not None:
            self.notify(message)

    # -- the rest of the Store protocol is the database's ----------------------------------------------------
    def lock(self, session_id: str) -> Any:
        return self.primary.lock(session_id)

    def load(self, session_id: str, *, trashed: bool = False) -> Conversation:
        return self.primary.load(session_id, trashed=trashed)

    def create(self, conv: Conversation, *, trashed: bool = False) -> SaveInfo:
        return self.primary.create(conv, trashed=trashed)

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        return self.primary.create_many(items)

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        return self.primary.exists(session_id, trashed=trashed)

    def location(self, session_id: str, *, trashed: bool = False) -> str:
        path = None if trashed else self.pending(session_id)
        return str(path) if path is not None else self.primary.location(session_id, trashed=trashed)

    def stored_size(self, session_id: str) -> int | None:
        path = self.pending(session_id)
        if path is not None:
            try:
                return path.stat().st_size
            except OSError:
                return None
        return self.primary.stored_size(session_id)

    def ids(self) -> list[str]:
        return self.primary.ids()

    def trashed_ids(self) -> list[str]:
        return self.primary.trashed_ids()

    def newest_id(self) -> str | None:
        return self.primary.newest_id()

    def ids_titled(self, title: str) -> list[str]:
        return self.primary.ids_titled(title)

    def trash(self, session_id: str) -> None:
        self.primary.trash(session_id)

    def restore(self, session_id: str) -> None:
        self.primary.restore(session_id)

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        self.primary.purge(session_id, trashed=trashed)

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
        return self.primary.page(limit, since=since, before=before, model=model, title=title, trashed=trashed)

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        return self.primary.search(text, role=role, session_id=session_id, limit=limit, reasoning=reasoning)

    def totals(self, active_since: str) -> dict[str, Any]:
        return self.primary.totals(active_since)

    def close(self) -> None:
        self.primary.close()


# -- writing spooled turns back --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyncOutcome:
    """What ``sync`` did with one spool file: ``status`` is ``synced`` (written to the database, file
    removed), ``open`` (the session is open in a running chatcli, which writes it itself), ``conflict``
    (the database has other turns: kept, ``message`` says what to do), ``failed`` (the database refused
    the write, e.g. it is read-only: kept, tried again next time) or ``damaged`` (unreadable: kept)."""

    session_id: str
    status: str
    message: str
    path: Path


def spooled(folder: Path) -> list[Path]:
    """The spool files in ``folder``, oldest session first."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_spool(path: Path) -> dict[str, Any]:
    """A spool record, its snapshot validated. Raises SnapshotError naming the file."""
    raw = read_regular_file(path, lambda: SnapshotError(f"{path} is gone", path))
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SnapshotError(f"{path} is not valid JSON (damaged)", path) from None
    if not isinstance(record, dict) or record.get("format") != SPOOL_FORMAT:
        raise SnapshotError(f"{path} is not a chatcli spool file", path)
    record["snapshot"] = Conversation.from_json(record.get("snapshot"), path)
    return record


def sync(primary: VersionedStore, folder: Path, only: str | None = None) -> list[SyncOutcome]:
    """Write the spool files of ``folder`` (only the one of session ``only``, when given) to ``primary``.
    Raises StoreUnavailable when the database does not answer (the files stay)."""
    outcomes: list[SyncOutcome] = []
    paths = [folder / f"{only}.json"] if only is not None else spooled(folder)
    for path in paths:
        if not path.exists():
            continue
        try:
            record = read_spool(path)
        except SnapshotError as e:
            outcomes.append(SyncOutcome(path.stem, "damaged", str(e), path))
            continue
        outcomes.append(_sync_one(primary, record, path))
    return outcomes


def _sync_one(primary: VersionedStore, record: dict[str, Any], path: Path) -> SyncOutcome:
    snap: Conversation = record["snapshot"]
    sid = snap.id
    try:
        lock = primary.lock(sid)
    except SessionLocked:
        return SyncOutcome(
            sid,
            "open",
            f"session {sid} is open in a running chatcli, which saves these turns itself; kept in {path}",
            path,
        )
    try:
        row = primary.row_version(sid)
        ours = row is not None and (row[0] == record.get("base_version") or row[1] == record.get("writer"))
        if not ours or record.get("conflict"):
            why = "it is no longer in the database" if row is None else "it has other turns there now"
            return SyncOutcome(
                sid,
                "conflict",
                f"session {sid} was not written back from {path}: {why}; nothing "
                f"was overwritten. Bring it in as a new session with "
                f"`chatcli import {path}`",
                path,
            )
        try:
            primary.load(sid)
        except SessionNotFound:
            return SyncOutcome(
                sid,
                "conflict",
                f"session {sid} is in the trash of {primary.display}; restore it "
                f"and sync again, or `chatcli import {path}`",
                path,
            )
        changed = record.get("changed_from")
        primary.save(snap, changed_from=changed if isinstance(changed, int) else 0)
    except StoreConflict as e:
        return SyncOutcome(sid, "conflict", f"{e}; kept in {path}", path)
    except StoreUnavailable:
        raise
    except (StoreError, SaveError) as e:
        return SyncOutcome(
            sid,
            "failed",
            f"{e}; its turns stay in {path} and are tried again at the next `chatcli sync` or `chatcli resume`",
            path,
        )
    finally:
        lock.release()
    remove_quietly(path)
    return SyncOutcome(
        sid, "synced", f"session {sid}: the turns kept on this machine are in {primary.display}", path
    )


__all__ = [
    "SpoolingStore",
    "SyncOutcome",
    "adopt_legacy_spool",
    "read_spool",
    "spool_folder",
    "spooled",
    "sync",
]
