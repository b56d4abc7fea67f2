"""The folder store (the default): one JSON snapshot file per session, written atomically.

Layout of a sessions folder (mode 0700)::

    <id>.json            the session's snapshot (mode 0600), see "The snapshot format" in README.md
    .locks/<id>.lock     the OS lock a running chatcli holds on the session (folder 0700, files 0600)
    .<id>.<random>.tmp   a snapshot being written; left behind only by a crash, removed on the next open
    .trash/<id>.json     a deleted session, until restored or purged
    .index.sqlite        the catalog's cache (folder_index.py); safe to delete

A save is: temp file in the same folder (0600) -> write -> flush -> fsync -> os.replace -> fsync of the
folder. Only after all of that does ``save`` return; until then the previous snapshot is intact. The JSON
files are the source of truth; everything else here can be rebuilt from them.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli.clock import utc_now
from chatcli.errors import SaveError, SessionExists, SessionLocked, SessionNotFound, SnapshotError
from chatcli.model import Conversation
from chatcli.paths import expanded, usable_folder
from chatcli.search import SearchHit
from chatcli.snapshot import (
    ID_RE,
    DamagedFile,
    SessionSummary,
    decode,
    dumps,
    validate_id,
)
from chatcli.stores.base import Page, SaveInfo
from chatcli.stores.url import StoreURL

if TYPE_CHECKING:
    from chatcli.stores.folder_index import SessionIndex

SUFFIX = ".json"
TRASH = ".trash"
LOCKS = ".locks"
#: ``totals`` of a folder that does not exist yet
_EMPTY_TOTALS: dict[str, Any] = dict.fromkeys(
    (
        *("sessions", "active", "messages", "user_messages", "assistant_messages", "characters"),
        *("prompt_tokens", "completion_tokens", "cached_tokens", "bytes", "damaged"),
    ),
    0,
)
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024  # a larger file is refused unread: no conversation is that long


class FileLock:
    """An OS lock on a file (the ``filelock`` package), taken at once or refused; released when the
    process exits, however it exits, so a killed chatcli leaves no stale lock."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock as _Lock  # imported here: only writers need it

        if path.is_symlink() or (path.exists() and not path.is_file()):
            # the lock library opens its file with O_TRUNC: never let that follow a link to another file
            raise SessionLocked(f"{path} is not a regular file (a symbolic link or a folder); remove it")
        self.path = path
        self._lock = _Lock(str(path), timeout=0, mode=0o600)

    def acquire(self, session_id: str) -> FileLock:
        """Take the lock now or raise SessionLocked naming ``session_id``."""
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise SessionLocked(
                f"session {session_id} is open in another chatcli; close that one first "
                f"(`chatcli show {session_id}` reads it meanwhile)"
            ) from None
        except OSError as e:
            raise SessionLocked(f"cannot lock session {session_id} ({self.path}): {e.strerror}") from None
        return self

    def release(self) -> None:
        self._lock.release()


class FolderLock:
    """A session's lock in the folder store: ``.locks/ID.lock``, and also ``.ID.lock`` beside the snapshot,
    where chatcli 0.1 locks it, so that a chatcli of that release and this one never both write the session.

    The old place is held only while the session is: ``release`` removes its file (before letting it go,
    and under the new lock, so no chatcli of this release can be taking it meanwhile); nothing is left
    beside the snapshots. A chatcli 0.1 that opened the file in that very instant finds it removed once it
    has its lock, and is refused, with filelock 3.20.4 or later (with an older one, as 0.1 allows, that
    instant is the same window 0.1's own ``delete`` and ``prune`` leave). Drop the old place (this class's
    second lock) once chatcli 0.1 need no longer run beside a newer chatcli on one sessions folder: at the
    earliest in the release after the one that brought ``.locks/``."""

    def __init__(self, path: Path, old_place: Path, session_id: str) -> None:
        """Take both locks now, or neither (SessionLocked)."""
        self._lock = FileLock(path).acquire(session_id)
        self._old: FileLock | None = None
        try:
            self._old = FileLock(old_place).acquire(session_id)
        except BaseException:
            self._lock.release()
            raise

    def release(self) -> None:
        """Let both go (the old place's file removed). Safe to call twice; never raises."""
        if self._old is not None:
            remove_quietly(self._old.path)
            self._old.release()
            self._old = None
        self._lock.release()


def ensure_folder(folder: Path, *, tighten: bool = True) -> None:
    """Create ``folder`` (0700, parents too) if needed; with ``tighten`` (for a folder that is chatcli's
    own, such as the sessions folder) also make an existing one 0700 when it belongs to this user. Raise
    SaveError if that is impossible."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not tighten:
            return
        st = folder.stat()
        # a sticky folder (/tmp) is shared by design: never ours to close; the files in it are 0600 anyway
        if st.st_mode & 0o077 and st.st_uid == os.getuid() and not st.st_mode & stat.S_ISVTX:
            os.chmod(folder, 0o700)
    except OSError as e:
        raise SaveError(f"cannot create the folder {folder}: {e.strerror}", folder) from None


def write_atomic(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` as ``path`` atomically and durably (temp file, fsync, rename, fsync of the folder).
    With ``overwrite=False`` an existing file is never replaced (SessionExists). Raises SaveError, naming
    the file and saying whether a previous version is intact."""
    folder = path.parent
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=folder)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails when the name is taken: never overwrites
            os.unlink(tmp)
        tmp = None
    except FileExistsError:
        raise SessionExists(f"{path} already exists; nothing was written") from None
    except OSError as e:
        kept = "the previous snapshot is intact" if path.exists() else "nothing was written"
        raise SaveError(f"could not save {path}: {why(e)}; {kept}", path) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    try:
        fsync_folder(folder)
    except OSError as e:
        raise SaveError(
            f"could not confirm the save of {path} ({why(e)} while syncing its folder): "
            f"it may not survive a power loss and will be written again",
            path,
        ) from None


GITIGNORE = "# created by chatcli: conversations stay out of git\n*\n"


class FolderStore:
    """The sessions folder ``root`` (created 0700 on first write). ``on_progress(done, total)`` is told how
    the catalog's cache is doing while it reads many files (see SessionIndex)."""

    kind = "folder"

    def __init__(self, root: Path | str, on_progress: Callable[[int, int], None] | None = None) -> None:
        self.root = expanded(root)
        self.display = StoreURL("folder", path=self.root).display  # (./sessions for a relative folder)
        self.on_progress = on_progress
        self._index: SessionIndex | None = None
        usable_folder(self.root, f"the sessions folder {self.display}")

    # -- paths -------------------------------------------------------------------------------------------
    def path_for(self, session_id: str, *, trashed: bool = False) -> Path:
        """The snapshot path of a (validated) id."""
        name = validate_id(session_id) + SUFFIX
        return self.root / TRASH / name if trashed else self.root / name

    def lock_path(self, session_id: str) -> Path:
        """The session's lock file, ``.locks/ID.lock`` (out of sight: a lock file is never deleted, since
        deleting one breaks mutual exclusion). Raises InvalidSessionId."""
        return self.root / LOCKS / f"{validate_id(session_id)}.lock"

    def old_lock_path(self, session_id: str) -> Path:
        """Where chatcli 0.1 locks the session: ``.ID.lock`` beside its snapshot. Raises InvalidSessionId."""
        return self.root / f".{validate_id(session_id)}.lock"

    def ensure_root(self) -> None:
        """Create the folder if needed. A folder chatcli creates gets a ``.gitignore`` holding ``*`` (as a
        venv does), so sessions kept in a git checkout's ``./sessions`` are never committed by accident; an
        existing folder's files are left alone."""
        if self.root.is_dir():
            ensure_folder(self.root)
            return
        ensure_folder(self.root)
        try:
            fd = os.open(self.root / ".gitignore", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(GITIGNORE)
        except OSError:
            pass  # a nicety: a folder that takes sessions but not this file still works

    def location(self, session_id: str, *, trashed: bool = False) -> str:
        return str(self.path_for(session_id, trashed=trashed))

    def stored_size(self, session_id: str) -> int | None:
        try:
            return self.path_for(session_id).stat().st_size
        except OSError:
            return None

    # -- one session -------------------------------------------------------------------------------------
    def lock(self, session_id: str) -> FolderLock:
        """Take the session's OS lock (raise SessionLocked if held) and clear its stale temp files."""
        lock_path = self.lock_path(session_id)  # validates first: a hostile id touches nothing
        self.ensure_root()
        ensure_folder(lock_path.parent)
        lock = FolderLock(lock_path, self.old_lock_path(session_id), session_id)
        self.remove_temp_files(session_id)
        return lock

    def remove_temp_files(self, session_id: str) -> int:
        """Remove temp files a crashed writer of this session left; return how many. Call with the lock."""
        n = 0
        for p in self.root.glob(f".{validate_id(session_id)}.*.tmp"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n

    def save(self, conv: Conversation, *, changed_from: int = 0, checkpoint: bool = False) -> SaveInfo:
        """Write the whole snapshot atomically as ``<id>.json``; returns once the file and the folder are
        fsynced. Raises SaveError (disk full, permissions, ...): when the failure comes before the rename,
        the previous snapshot is intact and no temp file is left; when only the final fsync of the folder
        fails, the new snapshot is in place but not known to be durable, and the message says so."""
        path = self.path_for(conv.id)
        data = dumps(conv.to_json())
        self.ensure_root()
        write_atomic(path, data)
        return SaveInfo(location=str(path), size=len(data), saved_at=utc_now())

    def create(self, conv: Conversation, *, trashed: bool = False) -> SaveInfo:
        sid = conv.id
        if self.exists(sid) or self.exists(sid, trashed=True):
            raise SessionExists(f"a session {sid} already exists in {self.display}; nothing was written")
        path = self.path_for(sid, trashed=trashed)
        data = dumps(conv.to_json())
        ensure_folder(path.parent)
        write_atomic(path, data, overwrite=False)
        return SaveInfo(location=str(path), size=len(data), saved_at=utc_now())

    def create_many(self, items: Sequence[tuple[Conversation, bool]]) -> list[str]:
        """``create`` of each (a file each: no transaction); ids taken are left out."""
        done = []
        for conv, trashed in items:
            try:
                self.create(conv, trashed=trashed)
            except SessionExists:
                continue
            done.append(conv.id)
        return done

    def load(self, session_id: str, *, trashed: bool = False) -> Conversation:
        """Read and validate a session by exact id. Raises SessionNotFound or SnapshotError."""
        return self.load_path(self.path_for(session_id, trashed=trashed), session_id)

    def load_path(self, path: Path, session_id: str | None = None) -> Conversation:
        """Read and validate the snapshot at ``path``. Only a regular file is read: a symbolic link, a
        folder, a FIFO or a device is refused (nothing is followed or blocked on), and so is a file larger
        than MAX_SNAPSHOT_BYTES. Raises SessionNotFound or SnapshotError naming the file."""
        where = "the trash of " if path.parent.name == TRASH else ""
        raw = read_regular_file(
            path, lambda: SessionNotFound(f"no session {session_id or path.stem} in {where}{self.root}")
        )
        conv = decode(raw, path)
        if conv.id != path.stem:
            raise SnapshotError(f"{path} holds session {conv.id!r}, not {path.stem!r}", path)
        return conv

    def exists(self, session_id: str, *, trashed: bool = False) -> bool:
        return self.path_for(session_id, trashed=trashed).exists()

    # -- ids -----------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(self.iter_ids())

    def trashed_ids(self) -> list[str]:
        return sorted(self.iter_ids(self.root / TRASH))

    def iter_ids(self, folder: Path | None = None) -> Iterator[str]:
        """Ids with a snapshot file in ``folder`` (default: the sessions folder), unsorted."""
        return (sid for sid, _ in self.snapshot_entries(folder))

    def snapshot_entries(self, folder: Path | None = None) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(id, directory entry) of every ``<id>.json`` in ``folder`` (default: the sessions folder)."""
        try:
            entries = os.scandir(self.root if folder is None else folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for e in entries:
                name = e.name
                if name.endswith(SUFFIX) and not name.startswith("."):
                    stem = name[: -len(SUFFIX)]
                    if ID_RE.match(stem):
                        yield stem, e

    def newest_id(self) -> str | None:
        rows = self.page(limit=1).rows
        return rows[0].id if rows else None

    def ids_titled(self, title: str) -> list[str]:
        from chatcli.stores.folder_index import INDEX_NAME

        if not (self.root / INDEX_NAME).exists():  # without an index: read the files, create nothing
            return [r.id for r in self.scan()[0] if r.title == title]
        return [r.id for r in self.page(title=title).rows]

    def scan(self, folder: Path | None = None) -> tuple[list[SessionSummary], list[DamagedFile]]:
        """Summaries of every readable session in ``folder`` (default: the sessions folder), newest update
        first, and the damaged files: every file is read (the catalog methods use the index instead)."""
        rows: list[SessionSummary] = []
        damaged: list[DamagedFile] = []
        folder = self.root if folder is None else folder
        for sid in self.iter_ids(folder):
            path = folder / (sid + SUFFIX)
            try:
                d = self.load_path(path, sid)
            except (SnapshotError, SessionNotFound) as e:
                damaged.append(DamagedFile(str(path), str(e)))
                continue
            rows.append(SessionSummary.of(d, str(path)))
        rows.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        return rows, damaged

    # -- the trash -------------------------------------------------------------------------------------------
    def trash(self, session_id: str) -> None:
        lock = self.lock(session_id)
        try:
            src = self.path_for(session_id)
            if not src.exists():
                raise SessionNotFound(f"no session {session_id} in {self.root}")
            ensure_folder(self.root / TRASH)
            try:
                os.replace(src, self.path_for(session_id, trashed=True))
            except OSError as e:
                raise SaveError(f"cannot move {src} to the trash: {why(e)}", src) from None
        finally:
            lock.release()

    def restore(self, session_id: str) -> None:
        src = self.path_for(session_id, trashed=True)
        dst = self.path_for(session_id)
        if not src.exists():
            raise SessionNotFound(f"no session {session_id} in the trash ({self.root / TRASH})")
        if dst.exists():
            raise SessionExists(f"a session {session_id} already exists in {self.root}; nothing was restored")
        try:
            os.link(src, dst)  # fails if dst appeared meanwhile: never overwrites
        except FileExistsError:
            raise SessionExists(
                f"a session {session_id} already exists in {self.root}; nothing was restored"
            ) from None
        except OSError as e:
            raise SaveError(f"cannot restore {src}: {why(e)}", src) from None
        src.unlink()

    def purge(self, session_id: str, *, trashed: bool = False) -> None:
        if trashed:
            try:
                self.path_for(session_id, trashed=True).unlink()
            except FileNotFoundError:
                raise SessionNotFound(f"no session {session_id} in the trash ({self.root / TRASH})") from None
            return
        src = self.path_for(session_id)
        if not src.exists():
            raise SessionNotFound(f"no session {session_id} in {self.root}")
        lock = self.lock(session_id)
        try:
            src.unlink()
        finally:
            lock.release()

    # -- the catalog (the SQLite cache beside the files) -------------------------------------------------
    def index(self) -> SessionIndex:
        """The folder's search and listing cache (opened on first use, closed by ``close``)."""
        if self._index is None:
            from chatcli.stores.folder_index import SessionIndex

            self._index = SessionIndex(self, self.on_progress)
        return self._index

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
        if not self.root.is_dir():  # nothing saved yet: reading creates nothing
            return Page([])
        if not trashed:
            return self.index().page(limit, since=since, before=before, model=model, title=title)
        rows, damaged = self.scan(self.root / TRASH)  # the trash is not indexed: its files are read
        rows = [
            r
            for r in rows
            if (since is None or r.updated_at >= since)
            and (before is None or r.updated_at < before)
            and (model is None or model.lower() in r.model.lower())
            and (title is None or r.title == title)
        ]
        return Page(rows if limit is None else rows[: max(0, limit)], damaged, len(rows))

    def search(
        self,
        text: str,
        *,
        role: str | None = None,
        session_id: str | None = None,
        limit: int = 20,
        reasoning: bool = False,
    ) -> list[SearchHit]:
        if not self.root.is_dir():
            return []
        return self.index().search(text, role=role, session_id=session_id, limit=limit, reasoning=reasoning)

    def totals(self, active_since: str) -> dict[str, Any]:
        if not self.root.is_dir():  # (the figures of an empty index: it is not made for them)
            return {**_EMPTY_TOTALS, "models": []}
        return self.index().totals(active_since)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None


def why(e: OSError) -> str:
    """An OSError in words, e.g. ``No space left on device``."""
    return e.strerror or str(e) or type(e).__name__


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[n:]


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so a rename inside it is durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    """Remove ``path``; a file already gone, or one that cannot be removed, is left as it is."""
    try:
        path.unlink()
    except OSError:
        pass


def read_regular_file(
    path: Path, not_found: Callable[[], Exception], limit: int = MAX_SNAPSHOT_BYTES
) -> bytes:
    """The bytes of the regular file at ``path``, read without following a symbolic link and without
    blocking on a FIFO; SnapshotError for anything else (``not_found()`` when there is no file)."""
    try:
        fd = os.open(
            path,
            os.O_RDONLY
            | getattr(os, "O_NOFOLLOW", 0)
            | getattr(os, "O_NONBLOCK", 0)
            | getattr(os, "O_CLOEXEC", 0),
        )
    except FileNotFoundError:
        raise not_found() from None
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):
            raise SnapshotError(
                f"{path} is a symbolic link, not a session file (chatcli does not follow "
                f"links in its sessions folder)",
                path,
            ) from None
        raise SnapshotError(f"cannot read {path}: {why(e)}", path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SnapshotError(f"{path} is a folder, not a session file", path)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(
                f"{path} is not a regular file (a FIFO, socket or device), not a session file", path
            )
        if st.st_size > limit:
            raise SnapshotError(
                f"{path} is too large to be a session file ({st.st_size:,} bytes; the limit is {limit:,})",
                path,
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise SnapshotError(f"cannot read {path}: {why(e)}", path) from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise SnapshotError(f"{path} is too large to be a session file (more than {limit:,} bytes)", path)
    return raw
