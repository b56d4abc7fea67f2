"""The snapshot store: one JSON file per session, written atomically, read with validation.

Layout of a sessions folder (mode 0700)::

    <id>.json            the session's snapshot (mode 0600), see SNAPSHOT FORMAT in README.md
    .<id>.lock           the OS lock a running chatcli holds on the session
    .<id>.<random>.tmp   a snapshot being written; left behind only by a crash, removed on the next open

A save is: temp file in the same folder (0600) -> write -> flush -> fsync -> os.replace -> fsync of the
folder. Only after all of that does ``save`` return; until then the previous snapshot is intact.

This module knows the file format (``FORMAT``, ``VERSION``) and nothing of backends or the UI.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from chatcli.errors import (
    AmbiguousSessionId,
    InvalidSessionId,
    SaveError,
    SessionLocked,
    SessionNotFound,
    SnapshotError,
)

FORMAT = "chatcli.session"
VERSION = 1

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")  # \Z: "$" would let a trailing "\n" through
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
SUFFIX = ".json"
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024  # a larger file is refused unread: no conversation is that long


def utc_now() -> str:
    """The current time as UTC ISO 8601 with milliseconds, e.g. ``2026-11-25T09:19:10.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_session_id(now: float | None = None) -> str:
    """A new id: ``YYYYMMDD-HHMMSS-xxxx`` (UTC time + 4 random base32 characters).

    Ids sort by creation time and are safe as file names on every platform."""
    t = time.gmtime(time.time() if now is None else now)
    rand = "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
    return time.strftime("%Y%m%d-%H%M%S", t) + "-" + rand


def validate_id(text: str) -> str:
    """Return ``text`` if it can name a session file, else raise InvalidSessionId.

    Accepted: 1-64 characters of ``A-Z a-z 0-9 _ -``, starting with a letter or digit. That rules out
    ``/``, ``..``, NUL, spaces and every other character before the file system is touched."""
    if not isinstance(text, str) or not _ID_RE.match(text):
        raise InvalidSessionId(
            f"{_shown(text)} is not a session id: ids are letters, digits, '-' and '_' (see `chatcli list`)"
        )
    return text


def _shown(text: Any) -> str:
    """What a user typed, quoted and cut to 40 characters for an error message."""
    return repr(text[:40] + ("..." if len(text) > 40 else "")) if isinstance(text, str) else repr(text)


@dataclass(frozen=True)
class SaveInfo:
    """What a successful save wrote: ``path``, ``size`` in bytes, ``saved_at`` (UTC ISO 8601)."""

    path: Path
    size: int
    saved_at: str


@dataclass(frozen=True)
class SessionSummary:
    """One row of ``chatcli list``: fields from the snapshot, ``turns`` = user messages."""

    id: str
    title: str
    backend: str
    model: str
    turns: int
    messages: int
    created_at: str
    updated_at: str
    path: Path
    tokens: int = 0  # prompt + completion tokens over all replies


@dataclass(frozen=True)
class DamagedFile:
    """A file in the sessions folder that could not be read as a session; ``reason`` says why."""

    path: Path
    reason: str


def validate_snapshot(data: Any, path: Path | str = "<snapshot>") -> dict[str, Any]:
    """Check the shape of a decoded snapshot and return it (upgraded to ``VERSION`` if older).

    Raises SnapshotError naming ``path`` when the data is not a chatcli session, comes from a newer
    chatcli, or has fields of the wrong type."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f"{path} is not a chatcli session file", path)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SnapshotError(f"{path} has no valid format version", path)
    if version > VERSION:
        raise SnapshotError(
            f"{path} was written by a newer chatcli (format version {version}; "
            f"this one reads up to {VERSION}): upgrade chatcli to open it",
            path,
        )
    expect: dict[str, type | tuple[type, ...]] = {
        "id": str, "title": str, "created_at": str, "updated_at": str, "backend": str, "model": str,
        "params": dict, "system": str, "messages": list, "context_start": int,
    }
    for key, typ in expect.items():
        if not isinstance(data.get(key), typ):
            raise SnapshotError(f"{path} is damaged: field {key!r} is missing or of the wrong type", path)
    optional: dict[str, type | tuple[type, ...]] = {"base_url": str, "model_path": str, "clears": list,
                                                    "changes": list}
    for key, typ in optional.items():
        if key in data and not isinstance(data[key], typ):
            raise SnapshotError(f"{path} is damaged: field {key!r} is of the wrong type", path)
    for i, m in enumerate(data["messages"]):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("user", "assistant", "system")
            or not isinstance(m.get("content"), str)
        ):
            raise SnapshotError(f"{path} is damaged: message {i} is not a valid message", path)
    if not 0 <= data["context_start"] <= len(data["messages"]):
        raise SnapshotError(f"{path} is damaged: context_start is out of range", path)
    return data


class SessionLock:
    """The OS lock (``filelock``) that makes one chatcli at a time the writer of a session.

    Released when the process exits, however it exits, so a killed chatcli leaves no stale lock."""

    def __init__(self, path: Path) -> None:
        from filelock import FileLock  # imported here: it is slow to import and only a REPL needs it

        self.path = path
        self._lock = FileLock(str(path), timeout=0, mode=0o600)

    def acquire(self, session_id: str) -> None:
        """Take the lock now or raise SessionLocked."""
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

    def release(self) -> None:
        self._lock.release()


class SessionStore:
    """The sessions folder. ``root`` is created 0700 on first write."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    # -- paths -----------------------------------------------------------------------------------------
    def path_for(self, session_id: str) -> Path:
        """The snapshot path of a (validated) id."""
        return self.root / (validate_id(session_id) + SUFFIX)

    def ensure_root(self) -> None:
        """Create the folder (0700) if needed; raise SaveError if that is impossible."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.root.stat()
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(self.root, 0o700)
        except OSError as e:
            raise SaveError(f"cannot create the sessions folder {self.root}: {e.strerror}", self.root) from None

    def lock(self, session_id: str) -> SessionLock:
        """Take the session's OS lock (raise SessionLocked if held) and clear its stale temp files."""
        validate_id(session_id)  # before the folder is created: a hostile id touches nothing
        self.ensure_root()
        lock_path = self.root / f".{session_id}.lock"
        if lock_path.is_symlink() or (lock_path.exists() and not lock_path.is_file()):
            # the lock library opens its file with O_TRUNC: never let that follow a link to another file
            raise SessionLocked(f"{lock_path} is not a regular file (a symbolic link or a folder); "
                                f"remove it to open session {session_id}")
        lock = SessionLock(lock_path)
        lock.acquire(session_id)
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

    # -- writing ---------------------------------------------------------------------------------------
    def save(self, snapshot: dict[str, Any]) -> SaveInfo:
        """Write ``snapshot`` atomically as ``<id>.json`` and return what was written, once the file and the
        folder are fsynced.

        Raises SaveError (disk full, permissions, file-size limit, ...). When the failure comes before the
        rename, the previous snapshot is intact and no temp file is left; when only the final fsync of the
        folder fails, the new snapshot is in place but not known to be durable, and the message says so."""
        session_id = snapshot["id"]
        path = self.path_for(session_id)
        data = _dump(snapshot)
        self.ensure_root()
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{session_id}.", suffix=".tmp", dir=self.root)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            kept = "the previous snapshot is intact" if path.exists() else "nothing was written"
            raise SaveError(f"could not save {path}: {_why(e)}; {kept}", path) from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        try:
            _fsync_folder(self.root)
        except OSError as e:
            raise SaveError(
                f"could not confirm the save of {path} ({_why(e)} while syncing its folder): "
                f"it may not survive a power loss and will be written again", path
            ) from None
        return SaveInfo(path=path, size=len(data), saved_at=utc_now())

    # -- reading ---------------------------------------------------------------------------------------
    def load(self, session_id: str) -> dict[str, Any]:
        """Read and validate a snapshot by exact id. Raises SessionNotFound or SnapshotError."""
        path = self.path_for(session_id)
        return self.load_path(path, session_id)

    def load_path(self, path: Path, session_id: str | None = None) -> dict[str, Any]:
        """Read and validate the snapshot at ``path``. Only a regular file is read: a symbolic link, a
        folder, a FIFO or a device is refused (nothing is followed or blocked on), and so is a file larger
        than MAX_SNAPSHOT_BYTES. Raises SessionNotFound or SnapshotError naming the file."""
        raw = _read_snapshot_bytes(
            path, lambda: SessionNotFound(f"no session {session_id or path.stem} in {self.root}"))
        if not raw.strip():
            raise SnapshotError(f"{path} is empty (damaged)", path)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SnapshotError(f"{path} is not valid JSON (damaged or truncated)", path) from None
        data = validate_snapshot(data, path)
        if data["id"] != path.stem:
            raise SnapshotError(f"{path} holds session {data['id']!r}, not {path.stem!r}", path)
        return data

    def ids(self) -> list[str]:
        """Every id with a snapshot file in the folder, oldest first (ids sort by creation time)."""
        return sorted(self._iter_ids())

    def _iter_ids(self) -> Iterator[str]:
        try:
            entries = os.scandir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for e in entries:
                name = e.name
                if name.endswith(SUFFIX) and not name.startswith("."):
                    stem = name[: -len(SUFFIX)]
                    if _ID_RE.match(stem):
                        yield stem

    def list(self) -> tuple[list[SessionSummary], list[DamagedFile]]:
        """Summaries of every readable session, newest update first, and the files that are damaged."""
        rows: list[SessionSummary] = []
        damaged: list[DamagedFile] = []
        for sid in self._iter_ids():
            path = self.root / (sid + SUFFIX)
            try:
                d = self.load_path(path, sid)
            except (SnapshotError, SessionNotFound) as e:
                damaged.append(DamagedFile(path, str(e)))
                continue
            msgs = d["messages"]
            rows.append(SessionSummary(
                id=sid, title=d["title"], backend=d["backend"], model=d["model"],
                turns=sum(1 for m in msgs if m["role"] == "user" and m.get("dropped") is None),
                messages=sum(1 for m in msgs if m.get("dropped") is None),
                created_at=d["created_at"], updated_at=d["updated_at"], path=path,
            ))
        rows.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        return rows, damaged

    def resolve(self, ref: str, summaries: Callable[[], tuple[list[SessionSummary], list[DamagedFile]]]
                | None = None) -> str:
        """Turn what a user typed into an existing id: a full id, a unique prefix, a unique prefix of the
        id's last part (``0mj0`` for ``20261126-015053-0mj0``), ``last`` (the most recently updated session)
        or an exact title. ``summaries`` gives the sessions, newest first, for
        ``last`` and the title lookup (default ``self.list``, which reads every file; the CLI passes the
        index's). Raises
        InvalidSessionId, SessionNotFound or AmbiguousSessionId, each saying what exists."""
        ref = ref.strip() if isinstance(ref, str) else ref
        if ref == "last":
            rows, _ = summaries() if summaries is not None else self.list()
            if not rows:
                raise SessionNotFound(f"there are no sessions in {self.root} yet; start one with `chatcli new`")
            return rows[0].id
        ids = self.ids()
        if isinstance(ref, str) and _ID_RE.match(ref):
            if ref in ids:
                return ref
            matches = [i for i in ids if i.startswith(ref)]
            if not matches:  # the random last part, e.g. `0mj0` of 20261126-015053-0mj0, or its start
                matches = [i for i in ids if i.rpartition("-")[2].startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
                raise AmbiguousSessionId(f"{ref!r} matches {len(matches)} sessions: {shown}; type more of the id")
        # An exact title (titles may hold spaces, so this comes after the id checks).
        if isinstance(ref, str) and ref and "\x00" not in ref:
            rows, _ = summaries() if summaries is not None else self.list()
            titled = [r.id for r in rows if r.title == ref]
            if len(titled) == 1:
                return titled[0]
            if len(titled) > 1:
                raise AmbiguousSessionId(f"{len(titled)} sessions are titled {ref!r}: {', '.join(titled[:5])}")
        if not isinstance(ref, str) or not _ID_RE.match(ref):
            raise InvalidSessionId(f"{_shown(ref)} is not a session id (letters, digits, '-' and '_') nor the exact "
                                   "title of one (case counts); see `chatcli list`")
        if not ids:
            raise SessionNotFound(f"no session {ref!r}: there are no sessions in {self.root} yet")
        recent = ", ".join(ids[-3:][::-1])
        raise SessionNotFound(
            f"no session {ref!r} in {self.root} ({len(ids)} exist, newest: {recent}); see `chatcli list`"
        )


# -- file primitives -----------------------------------------------------------------------------------------
def _why(e: OSError) -> str:
    """An OSError in words, e.g. ``No space left on device``."""
    return e.strerror or str(e) or type(e).__name__


def _dump(snapshot: dict[str, Any]) -> bytes:
    """The snapshot as indented UTF-8 JSON. Text that is not valid Unicode (lone surrogates, e.g. from
    undecodable bytes on stdin) is written with U+FFFD in their place instead of failing the save."""
    try:
        return orjson.dumps(snapshot, option=orjson.OPT_INDENT_2)
    except TypeError:
        return orjson.dumps(_valid_unicode(snapshot), option=orjson.OPT_INDENT_2)


def _valid_unicode(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    return value


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[n:]


def _fsync_folder(folder: Path) -> None:
    """fsync a folder, so a rename inside it is durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_snapshot_bytes(path: Path, not_found: Callable[[], Exception]) -> bytes:
    """The bytes of the regular file at ``path``, read without following a symbolic link and without
    blocking on a FIFO; SnapshotError for anything else (``not_found()`` when there is no file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise not_found() from None
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):
            raise SnapshotError(f"{path} is a symbolic link, not a session file (chatcli does not follow "
                                f"links in its sessions folder)", path) from None
        raise SnapshotError(f"cannot read {path}: {_why(e)}", path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SnapshotError(f"{path} is a folder, not a session file", path)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"{path} is not a regular file (a FIFO, socket or device), not a session file",
                                path)
        if st.st_size > MAX_SNAPSHOT_BYTES:
            raise SnapshotError(f"{path} is too large to be a session file ({st.st_size:,} bytes; the limit is "
                                f"{MAX_SNAPSHOT_BYTES:,})", path)
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as e:
        raise SnapshotError(f"cannot read {path}: {_why(e)}", path) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"{path} is too large to be a session file (more than {MAX_SNAPSHOT_BYTES:,} "
                            f"bytes)", path)
    return raw
