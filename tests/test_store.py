"""The snapshot store: atomic saves, the session lock, validation of what is read, id resolution."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatcli.errors import (
    AmbiguousSessionId,
    InvalidSessionId,
    SaveError,
    SessionLocked,
    SessionNotFound,
    SnapshotError,
    StoreError,
)
from chatcli.model import FORMAT, VERSION, Conversation
from chatcli.snapshot import DamagedFile, new_session_id, resolve, validate_id
from chatcli.stores import folder as store_mod
from chatcli.stores.base import SaveInfo
from chatcli.stores.folder import FolderStore

ID_A = "20260101-090000-aaaa"
ID_B = "20260101-090000-aaab"
ID_C = "20260202-100000-cccc"


def snapshot(sid: str, **kw: Any) -> Conversation:
    """A session as ``snapshot_json`` spells it."""
    return Conversation.from_json(snapshot_json(sid, **kw))


def snapshot_json(
    sid: str,
    *,
    title: str = "",
    updated_at: str = "2026-01-01T09:00:00.000Z",
    messages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "id": sid,
        "title": title,
        "created_at": "2026-01-01T09:00:00.000Z",
        "updated_at": updated_at,
        "backend": "openai",
        "model": "fake-model",
        "base_url": "http://127.0.0.1:1/v1",
        "params": {},
        "system": "Be brief.",
        "context_start": 0,
        "messages": messages
        if messages is not None
        else [
            {"role": "user", "content": "hello", "created_at": "2026-01-01T09:00:00.000Z", "status": "ok"},
            {"role": "assistant", "content": "Hi!", "created_at": "2026-01-01T09:00:01.000Z", "status": "ok"},
        ],
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
def store(root: Path) -> FolderStore:
    return FolderStore(root)


def tmp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.tmp"))


# ------------------------------------------------------------------------------------------- saving


def test_save_is_atomic_with_private_modes_under_umask_022(store: FolderStore, root: Path) -> None:
    old = os.umask(0o022)
    try:
        info = store.save(snapshot(ID_A))
    finally:
        os.umask(old)
    path = root / f"{ID_A}.json"
    assert isinstance(info, SaveInfo)
    assert info.location == str(path)
    assert info.size == path.stat().st_size > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", info.saved_at)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert tmp_files(root) == []
    assert orjson.loads(path.read_bytes()) == snapshot_json(ID_A)
    assert store.load(ID_A) == snapshot(ID_A)


def test_save_tightens_an_existing_open_folder(store: FolderStore, root: Path) -> None:
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    store.save(snapshot(ID_A))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_save_overwrites_and_reports_the_new_size(store: FolderStore, root: Path) -> None:
    store.save(snapshot(ID_A))
    bigger = snapshot(ID_A, title="x" * 1000)
    info = store.save(bigger)
    assert info.size == len(orjson.dumps(bigger.to_json(), option=orjson.OPT_INDENT_2))
    assert info.size == (root / f"{ID_A}.json").stat().st_size
    assert store.load(ID_A).header.title == "x" * 1000
    assert tmp_files(root) == []


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_save_keeps_previous_snapshot_byte_identical(
    store: FolderStore, root: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store.save(snapshot(ID_A))
    path = root / f"{ID_A}.json"
    before = path.read_bytes()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.os, failing, disk_full)
    with pytest.raises(SaveError) as info:
        store.save(snapshot(ID_A, title="new title that must not land"))
    monkeypatch.undo()

    message = str(info.value)
    assert str(path) in message
    assert os.strerror(errno.ENOSPC) in message
    assert "intact" in message
    assert info.value.path == path
    assert path.read_bytes() == before
    assert tmp_files(root) == []
    assert store.load(ID_A).header.title == ""


def test_failed_first_save_says_nothing_was_written(
    store: FolderStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.os, "fsync", disk_full)
    with pytest.raises(SaveError) as info:
        store.save(snapshot(ID_A))
    monkeypatch.undo()
    assert str(info.value).endswith("; nothing was written")  # no "previous snapshot" to speak of
    assert not (root / f"{ID_A}.json").exists() and tmp_files(root) == []


def test_an_impossible_folder_is_refused_when_the_store_is_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as info:  # before anything is read or written
        FolderStore(blocker / "sessions")
    assert str(info.value) == f"cannot use the sessions folder {blocker / 'sessions'}: Not a directory"
    with pytest.raises(StoreError, match="it is a file, not a folder"):
        FolderStore(blocker)
    store = FolderStore(tmp_path / "ok")
    (tmp_path / "ok").write_text("made a file after the store was opened")
    with pytest.raises(SaveError) as saving:
        store.save(snapshot(ID_A))
    assert str(tmp_path / "ok") in str(saving.value)


def test_save_refuses_a_hostile_id_in_the_snapshot(store: FolderStore, root: Path) -> None:
    with pytest.raises(InvalidSessionId):
        store.save(snapshot("../escape"))
    assert not (root.parent / "escape.json").exists()


# ------------------------------------------------------------------------------------------ locking


def test_stale_temp_files_are_removed_when_the_lock_is_taken(store: FolderStore, root: Path) -> None:
    store.save(snapshot(ID_A))
    (root / f".{ID_A}.k3j4h5.tmp").write_bytes(b'{"half": ')
    (root / f".{ID_A}.zz9.tmp").write_bytes(b"")
    (root / f".{ID_B}.other.tmp").write_bytes(b"another session's write")
    lock = store.lock(ID_A)
    try:
        assert tmp_files(root) == [f".{ID_B}.other.tmp"]
        assert store.load(ID_A) == snapshot(ID_A)
    finally:
        lock.release()


def test_remove_temp_files_counts(store: FolderStore, root: Path) -> None:
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / f".{ID_A}.{name}.tmp").write_bytes(b"x")
    assert store.remove_temp_files(ID_A) == 3
    assert store.remove_temp_files(ID_A) == 0


def test_second_lock_is_refused_until_the_first_is_released(store: FolderStore) -> None:
    first = store.lock(ID_A)
    try:
        with pytest.raises(SessionLocked) as info:
            store.lock(ID_A)
        assert ID_A in str(info.value)
        other = store.lock(ID_B)  # a different session is not affected
        other.release()
    finally:
        first.release()
    again = store.lock(ID_A)
    again.release()


def test_lock_file_is_private_in_a_lock_folder_out_of_sight(store: FolderStore, root: Path) -> None:
    store.save(snapshot(ID_A))
    old = os.umask(0o022)
    try:
        lock = store.lock(ID_A)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE((root / ".locks").stat().st_mode) == 0o700
        assert stat.S_IMODE((root / ".locks" / f"{ID_A}.lock").stat().st_mode) == 0o600
    finally:
        lock.release()
    store.trash(ID_A)
    store.restore(ID_A)
    store.lock(ID_A).release()
    # nothing beside the snapshots: the lock files are in .locks/ (kept: removing one is not safe)
    assert sorted(p.name for p in root.iterdir()) == [".gitignore", ".locks", ".trash", f"{ID_A}.json"]
    assert [p.name for p in (root / ".locks").iterdir()] == [f"{ID_A}.lock"]
    rows, damaged = store.scan()
    assert [r.id for r in rows] == [ID_A] and damaged == []


#: how chatcli 0.1 takes a session's lock: ``.ID.lock`` beside the snapshot, taken at once or refused
OLD_RELEASE = """
import sys
from filelock import FileLock, Timeout
lock = FileLock(sys.argv[1], timeout=0, mode=0o600)
try:
    lock.acquire(timeout=0)
except Timeout:
    print("REFUSED", flush=True)
    raise SystemExit(0)
print("LOCKED", flush=True)
sys.stdin.read()
"""


def test_a_chatcli_of_the_release_before_and_this_one_never_hold_a_session_at_once(
    store: FolderStore, root: Path
) -> None:
    store.save(snapshot(ID_A))
    old_place = root / f".{ID_A}.lock"

    def old_release() -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", OLD_RELEASE, str(old_place)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        return child

    lock = store.lock(ID_A)
    child = old_release()
    assert child.communicate(timeout=30)[0] == "REFUSED\n"  # this chatcli holds the old place too
    lock.release()
    assert not old_place.exists()  # and leaves nothing there
    child = old_release()
    try:
        assert child.stdout is not None and child.stdout.readline() == "LOCKED\n"
        with pytest.raises(SessionLocked, match="open in another chatcli"):
            store.lock(ID_A)
        assert (root / ".locks" / f"{ID_A}.lock").exists()
    finally:
        child.communicate(timeout=30)
    store.lock(ID_A).release()  # the new lock was let go with the refusal
    assert not old_place.exists()
    victim = root.parent / "precious.txt"
    victim.write_text("untouched")
    old_place.symlink_to(victim)  # the old place is a link: refused, and nothing followed
    with pytest.raises(SessionLocked, match="not a regular file"):
        store.lock(ID_A)
    assert victim.read_text() == "untouched" and old_place.is_symlink()
    old_place.unlink()
    store.lock(ID_A).release()


def test_lock_of_a_killed_process_is_free_again(store: FolderStore, root: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, time
        from chatcli.stores.folder import FolderStore
        lock = FolderStore({str(root)!r}).lock({ID_A!r})
        print("LOCKED", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "LOCKED"
        with pytest.raises(SessionLocked):
            store.lock(ID_A)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    lock = store.lock(ID_A)
    lock.release()


def test_lock_with_a_hostile_id_touches_nothing(store: FolderStore, root: Path) -> None:
    with pytest.raises(InvalidSessionId):
        store.lock("../x")
    assert not root.exists()
    assert list(root.parent.glob("*.lock")) == []


# -------------------------------------------------------------------------------------- load errors


def _good_bytes(sid: str) -> bytes:
    return orjson.dumps(snapshot_json(sid), option=orjson.OPT_INDENT_2)


def _flipped(sid: str) -> bytes:
    data = bytearray(_good_bytes(sid))
    data[0] ^= 0xFF  # '{' becomes a byte that is not even UTF-8
    data[len(data) // 2] ^= 0x55
    return bytes(data)


def _with(sid: str, **changes: Any) -> bytes:
    snap = snapshot_json(sid)
    snap.update(changes)
    return orjson.dumps(snap)


DAMAGED: dict[str, tuple[Any, str]] = {
    # id: (file content, or a callable for the content, and a phrase the message must hold)
    "empty": (b"", "empty"),
    "blank": (b"  \n\t\n", "empty"),
    "truncated": (lambda sid: _good_bytes(sid)[: len(_good_bytes(sid)) // 2], "not valid JSON"),
    "flipped": (_flipped, "not valid JSON"),
    "badutf8": (lambda sid: _good_bytes(sid).replace(b'"Hi!"', b'"H\xff!"'), "not valid JSON"),
    "alist": (b"[1, 2, 3]", "not a chatcli session"),
    "foreign": (b'{"a": 1}', "not a chatcli session"),
    "newer": (lambda sid: _with(sid, version=999), "newer chatcli"),
    "noversion": (lambda sid: _with(sid, version="1"), "format version"),
    "boolversion": (lambda sid: _with(sid, version=True), "format version"),
    "msgsstr": (lambda sid: _with(sid, messages="hello"), "'messages'"),
    "titlenull": (lambda sid: _with(sid, title=None), "'title'"),
    "ctxstr": (lambda sid: _with(sid, context_start="0"), "'context_start'"),
    "ctxrange": (lambda sid: _with(sid, context_start=7), "context_start is out of range"),
    "badrole": (lambda sid: _with(sid, messages=[{"role": "bot", "content": "x"}]), "message 0"),
    "badcontent": (lambda sid: _with(sid, messages=[{"role": "user", "content": 5}]), "message 0"),
    "mismatch": (lambda sid: _with(sid, id="someone-else"), "someone-else"),
}


def _write_damaged(root: Path) -> dict[str, Path]:
    root.mkdir(exist_ok=True)
    paths = {}
    for sid, (content, _) in DAMAGED.items():
        path = root / f"{sid}.json"
        path.write_bytes(content(sid) if callable(content) else content)
        paths[sid] = path
    folder = root / "x.json"
    folder.mkdir()
    paths["x"] = folder
    return paths


@pytest.mark.parametrize("sid", [*DAMAGED, "x"])
def test_damaged_snapshot_raises_snapshot_error_naming_the_path(
    store: FolderStore, root: Path, sid: str
) -> None:
    paths = _write_damaged(root)
    with pytest.raises(SnapshotError) as info:
        store.load(sid)
    message = str(info.value)
    assert str(paths[sid]) in message
    assert info.value.path == paths[sid]
    phrase = "folder" if sid == "x" else DAMAGED[sid][1]
    assert phrase in message


def test_newer_format_message_says_to_upgrade(store: FolderStore, root: Path) -> None:
    _write_damaged(root)
    with pytest.raises(SnapshotError, match=r"format version 999.*upgrade chatcli"):
        store.load("newer")


def test_list_lists_good_sessions_and_damaged_files(store: FolderStore, root: Path) -> None:
    paths = _write_damaged(root)
    store.save(snapshot(ID_A, title="first", updated_at="2026-01-01T09:00:00.000Z"))
    store.save(snapshot(ID_C, title="second", updated_at="2026-03-01T09:00:00.000Z"))
    (root / "README.txt").write_text("not a session")  # ignored: not a .json
    (root / f".{ID_A}.abc.tmp").write_text("{")  # ignored: a temp file

    rows, damaged = store.scan()

    assert [r.id for r in rows] == [ID_C, ID_A]  # newest update first
    assert rows[0].title == "second"
    assert rows[1].turns == 1 and rows[1].messages == 2
    assert rows[1].backend == "openai" and rows[1].model == "fake-model"
    assert rows[1].location == str(root / f"{ID_A}.json")
    assert all(isinstance(d, DamagedFile) for d in damaged)
    assert sorted(d.location for d in damaged) == sorted(str(p) for p in paths.values())
    for d in damaged:
        assert d.location in d.reason


def test_list_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert FolderStore(tmp_path / "nope").scan() == ([], [])
    assert FolderStore(tmp_path / "nope").ids() == []


def test_load_unknown_id_raises_session_not_found(store: FolderStore) -> None:
    store.save(snapshot(ID_A))
    with pytest.raises(SessionNotFound, match=ID_B):
        store.load(ID_B)


# ------------------------------------------------------------------------------------------ resolve


@pytest.fixture
def three(store: FolderStore) -> FolderStore:
    store.save(snapshot(ID_A, title="groceries", updated_at="2026-01-05T00:00:00.000Z"))
    store.save(snapshot(ID_B, title="Rust lifetimes", updated_at="2026-01-03T00:00:00.000Z"))
    store.save(snapshot(ID_C, title="groceries plan", updated_at="2026-01-04T00:00:00.000Z"))
    return store


def test_resolve_full_id_prefix_last_and_title(three: FolderStore) -> None:
    assert resolve(three, ID_B) == ID_B
    assert resolve(three, "20260202") == ID_C
    assert resolve(three, f"  {ID_C[:10]}  ") == ID_C
    assert resolve(three, "last") == ID_A  # most recently updated, not the newest id
    assert resolve(three, "Rust lifetimes") == ID_B
    assert resolve(three, "groceries") == ID_A  # exact title, not a prefix of "groceries plan"


def test_resolve_full_id_wins_over_being_a_prefix(store: FolderStore) -> None:
    store.save(snapshot("abc"))
    store.save(snapshot("abcd"))
    assert resolve(store, "abc") == "abc"
    with pytest.raises(AmbiguousSessionId):
        resolve(store, "ab")


def test_resolve_ambiguous_prefix_lists_candidates(three: FolderStore) -> None:
    with pytest.raises(AmbiguousSessionId) as info:
        resolve(three, "20260101")
    message = str(info.value)
    assert ID_A in message and ID_B in message
    assert ID_C not in message
    assert "2 sessions" in message


def test_resolve_ambiguous_prefix_shortens_a_long_list(store: FolderStore) -> None:
    for i in range(8):
        store.save(snapshot(f"20260101-0900{i:02d}-aaaa"))
    with pytest.raises(AmbiguousSessionId, match=r"8 sessions: .* and 3 more"):
        resolve(store, "2026")


def test_resolve_duplicate_title_is_ambiguous(store: FolderStore) -> None:
    store.save(snapshot(ID_A, title="same"))
    store.save(snapshot(ID_C, title="same"))
    with pytest.raises(AmbiguousSessionId) as info:
        resolve(store, "same")
    assert ID_A in str(info.value) and ID_C in str(info.value)


def test_resolve_unknown_mentions_what_exists(three: FolderStore) -> None:
    with pytest.raises(SessionNotFound) as info:
        resolve(three, "zzz")
    message = str(info.value)
    assert "'zzz'" in message
    assert "3 exist" in message
    assert ID_C in message
    assert "chatcli list" in message


def test_resolve_in_an_empty_store(store: FolderStore) -> None:
    with pytest.raises(SessionNotFound, match="no sessions"):
        resolve(store, "last")
    with pytest.raises(SessionNotFound, match="no sessions"):
        resolve(store, "abc")


def test_resolve_last_skips_damaged_files(store: FolderStore, root: Path) -> None:
    store.save(snapshot(ID_A))
    (root / "zzzz.json").write_bytes(b"{")
    assert resolve(store, "last") == ID_A


HOSTILE = [
    "../x",
    "a/b",
    "x\x00y",
    "a" * 500,
    "..",
    ".",
    "é",
    "",
    "-x",
    "x y",
    "x.json",
    "C:\\x",
    "/etc/passwd",
    "x\ny",
]


@pytest.mark.parametrize("ref", HOSTILE)
def test_resolve_rejects_hostile_ids(three: FolderStore, root: Path, ref: str) -> None:
    # A valid-looking snapshot one level up must never be reached through "../x".
    (root.parent / "x.json").write_bytes(orjson.dumps(snapshot_json("x")))
    with pytest.raises(InvalidSessionId) as info:
        resolve(three, ref)
    assert len(str(info.value)) < 200  # a 500-character id is not echoed in full
    assert "session id" in str(info.value)


@pytest.mark.parametrize("ref", HOSTILE)
def test_hostile_ids_are_refused_before_any_path_is_built(store: FolderStore, root: Path, ref: str) -> None:
    for call in (store.path_for, store.load, store.lock, store.remove_temp_files):
        with pytest.raises(InvalidSessionId):
            call(ref)
    with pytest.raises(InvalidSessionId):
        store.save(snapshot(ref))
    assert not root.exists()


def test_resolve_with_no_folder_and_hostile_id(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "missing")
    with pytest.raises(InvalidSessionId):
        resolve(store, "../../etc/passwd")
    assert not (tmp_path / "missing").exists()


def test_validate_id() -> None:
    for good in ("a", "A", "0", ID_A, "a_b-c", "x" * 64):
        assert validate_id(good) == good
    for bad in (*HOSTILE, "x" * 65, "_x", "x\n", "x\r", " x"):
        with pytest.raises(InvalidSessionId):
            validate_id(bad)
    with pytest.raises(InvalidSessionId):
        validate_id(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidSessionId):
        validate_id(42)  # type: ignore[arg-type]


def test_new_session_id_format_and_order() -> None:
    sid = new_session_id(0)
    assert re.fullmatch(r"19700101-000000-[0-9a-hjkmnp-tv-z]{4}", sid)
    assert validate_id(sid) == sid
    assert new_session_id(1_800_000_000).startswith("20270115-080000-")
    times = [1_700_000_000 + k for k in (50, 3, 86_400, 0, 7, 3_600 * 24 * 400)]
    ids = [new_session_id(t) for t in times]
    assert [t for _, t in sorted(zip(ids, times, strict=False))] == sorted(times)
    # the random part differs between ids made in the same second (4 chars of base32: 1 in a million)
    assert len({new_session_id(5) for _ in range(20)}) > 1
    now = new_session_id()
    assert validate_id(now) == now
