"""I/O faults: the k-th open, write, fsync, close, rename, folder open or folder fsync of the snapshot store
fails, once and then persistently, for every k until a whole scripted conversation runs without reaching
it (the way SQLite tests its I/O errors). Writes are also cut short at random, as os.write may do.

Every save attempt is checked as it happens:

* a failed save raises SaveError whose one-line message names the file and the cause; before the rename
  the previous snapshot is byte-identical and no temp file is left; after it (folder fsync) the new
  snapshot is whole and the message says it is not confirmed;
* a successful save went temp file -> write(s) -> fsync -> close -> rename -> fsync of the folder, in
  that order, before it returned; so a turn is only reported saved after the fsyncs;
* per turn, the user hears once about each failed save they rely on (the message's save, the reply's
  final save); the turn is in memory, and the first save that succeeds after the fault writes it.

Then a real full disk (a small tmpfs) and a real file-size limit (RLIMIT_FSIZE) through the REPL.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatcli.backends.base import StreamEvent
from chatcli.errors import SaveError
from chatcli.model import Conversation
from chatcli.session import ConversationSession, GenerationParams, Timeouts
from chatcli.stores.folder import FolderStore
from chatcli.turn import TurnPolicy

from fakellm import FakeLLMServer
from torturelib import SEED, Chat, Turns, chatcli_args, figure, load_checked, rng, temp_files

OPS = ("open", "write", "fsync", "close", "replace", "diropen", "dirfsync")
CODES = {
    "open": "o",
    "write": "w",
    "fsync": "f",
    "close": "c",
    "replace": "r",
    "diropen": "O",
    "dirfsync": "F",
    "dirclose": "C",
}
ERRNOS = {
    "open": errno.EACCES,
    "write": errno.ENOSPC,
    "fsync": errno.EIO,
    "close": errno.EIO,
    "replace": errno.EPERM,
    "diropen": errno.EMFILE,
    "dirfsync": errno.EIO,
    "dirclose": errno.EIO,
}
SAVE_SHAPE = re.compile(r"ow+fcrOFC")  # the one order a successful save may take
TURNS = 3
TOKENS = ["Four ", "small ", "tokens ", "here."]
CASE = "I/O faults: k-th call fails, once and persistently"


class Faults:
    """Wraps the os calls the store makes on files inside ``root`` (the lock file aside), keeps a trace of
    them, cuts writes short at random, and fails the k-th call of one kind once or from then on."""

    def __init__(self, root: Path, seed: object) -> None:
        self.root = os.fspath(root)
        self.kinds: dict[int, str] = {}
        self.calls: Counter[str] = Counter()
        self.trace: list[str] = []
        self.op: str | None = None
        self.k = 0
        self.persistent = False
        self.fired = 0
        self.rnd = rng("short-writes", seed)

    def arm(self, op: str, k: int, persistent: bool) -> None:
        self.op, self.k, self.persistent = op, k, persistent

    def disarm(self) -> None:
        self.op = None

    def _maybe_fail(self, op: str) -> None:
        self.calls[op] += 1
        n = self.calls[op]
        if self.op == op and (n == self.k or (self.persistent and n > self.k)):
            self.fired += 1
            self.trace.append("!" + CODES[op])
            raise OSError(ERRNOS[op], os.strerror(ERRNOS[op]))
        self.trace.append(CODES[op])

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_close, real_replace = os.close, os.replace

        def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
            p = os.fspath(path)
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            kind = (
                "dir"
                if p == self.root
                else "file"
                if os.path.dirname(p) == self.root and not p.endswith(".lock") and writing
                else None
            )
            if kind:
                self._maybe_fail("diropen" if kind == "dir" else "open")
            fd = real_open(path, flags, mode, dir_fd=dir_fd)
            if kind:
                self.kinds[fd] = kind
            return fd

        def fake_write(fd: int, data: Any) -> int:
            if fd in self.kinds:
                self._maybe_fail("write")
                if len(data) > 1 and self.rnd.random() < 0.5:
                    data = memoryview(data)[: self.rnd.randint(1, len(data) - 1)]
            return real_write(fd, data)

        def fake_fsync(fd: Any) -> None:
            if isinstance(fd, int) and fd in self.kinds:
                # recorded, not performed: the order is under test here, and thousands of real fsyncs
                # would only make the run slow (the crash and full-disk tests do real ones)
                self._maybe_fail("dirfsync" if self.kinds[fd] == "dir" else "fsync")
                return
            real_fsync(fd)

        def fake_close(fd: int) -> None:
            kind = self.kinds.pop(fd, None)
            real_close(fd)  # a failing close still closes (as on Linux)
            if kind:
                self._maybe_fail("dirclose" if kind == "dir" else "close")

        def fake_replace(src: Any, dst: Any, **kw: Any) -> None:
            if os.path.dirname(os.fspath(src)) == self.root:
                self._maybe_fail("replace")
            real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "fsync", fake_fsync)
        monkeypatch.setattr(os, "close", fake_close)
        monkeypatch.setattr(os, "replace", fake_replace)


class CheckedStore(FolderStore):
    """A FolderStore that checks every save attempt against the trace of the calls it made."""

    def __init__(self, root: Path, faults: Faults) -> None:
        super().__init__(root)
        self.faults = faults
        self.attempts: list[tuple[str, str, SaveError | None]] = []  # (phase, outcome, error)

    def save(self, conv: Conversation, **kw: Any) -> Any:
        path = self.path_for(conv.id)
        before = path.read_bytes() if path.exists() else None
        start, fired = len(self.faults.trace), self.faults.fired
        msgs = conv.messages
        phase = (
            "create"
            if not msgs
            else "message"
            if msgs[-1].role == "user"
            else "checkpoint"
            if msgs[-1].status == "streaming"
            else "final"
        )
        new = orjson.dumps(conv.to_json(), option=orjson.OPT_INDENT_2)
        where = f"(seed {SEED}, fault {self.faults.op} k={self.faults.k} persistent={self.faults.persistent})"
        try:
            info = super().save(conv, **kw)
        except SaveError as e:
            trace = "".join(self.faults.trace[start:])
            after = path.read_bytes() if path.exists() else None
            assert self.faults.fired > fired, f"a save failed with no fault injected: {e} {where}"
            message = str(e)
            assert "\n" not in message and str(path) in message, message
            assert any(os.strerror(n) in message for n in ERRNOS.values()), message
            if "r" in self.faults.trace[start:]:  # the rename happened: only the folder fsync is unconfirmed
                assert after == new, f"the renamed snapshot is not the new one {where}"
                assert "confirm" in message, message
            else:
                assert after == before, f"a failed save changed the previous snapshot {where}"
                # a session's first save has no previous snapshot to keep: the message must not claim one
                assert ("intact" if before is not None else "nothing was written") in message, message
            assert temp_files(self.root) == [], f"a failed save left a temp file {where}"
            self.attempts.append((phase, "failed", e))
            raise
        trace = "".join(self.faults.trace[start:])
        assert SAVE_SHAPE.fullmatch(trace), f"save went {trace!r}, not write-fsync-rename-fsync {where}"
        assert path.read_bytes() == new
        assert temp_files(self.root) == []
        self.attempts.append((phase, "saved", None))
        return info


class ScriptedBackend:
    """A backend that streams TOKENS at once (the store is under test here, not HTTP)."""

    name = "openai"
    model = "scripted"
    base_url = "http://127.0.0.1:9/v1"

    def stream_chat(
        self, messages: Any, params: Any, timeouts: Any, deadline: float
    ) -> Iterator[StreamEvent]:
        for t in TOKENS:
            yield StreamEvent(text=t)
        yield StreamEvent(finish_reason="stop")

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        pass

    def recorded(self) -> dict[str, str]:
        return {"base_url": self.base_url}

    def context_window(self, timeouts: Any) -> int | None:
        return None  # unknown: every message is sent

    def count_tokens(self, messages: Any, timeouts: Any) -> int | None:
        return None


def run_script(root: Path, faults: Faults, op: str, k: int, persistent: bool) -> dict[str, int]:
    """One conversation under one fault plan; returns what happened."""
    store = CheckedStore(root, faults)
    faults.arm(op, k, persistent)
    where = f"(seed {SEED}, fault {op} k={k} persistent={persistent})"
    try:
        session = ConversationSession.create(
            store,
            ScriptedBackend(),
            model="scripted",  # type: ignore[arg-type]
            params=GenerationParams(),
        )
    except SaveError as e:
        # the very first save failed: `chatcli new` reports it and exits (closing retries the save once,
        # so a whole empty session may be left); nothing was typed yet
        faults.disarm()
        assert str(root) in str(e)
        for p in root.glob("*.json"):
            assert load_checked(root, p.stem)["messages"] == [], where
        assert temp_files(root) == [], where
        return {"fired": faults.fired, "messages": 1, "creation refused": 1}
    session.policy = TurnPolicy(checkpoint_seconds=0.0, checkpoint_cost_ratio=0.0)  # a save at every token
    session.timeouts = Timeouts(connect=1, idle=5, total=30)
    told = 0
    try:
        for turn in range(TURNS):
            text = f"turn {turn} of {op}-{k}-{'p' if persistent else 'o'}"
            notices: list[str] = []
            mark = len(store.attempts)
            raised: SaveError | None = None
            try:
                session.send(text, on_notice=notices.append)
            except SaveError as e:
                raised = e
            attempts = store.attempts[mark:]
            failed = Counter(phase for phase, outcome, _ in attempts if outcome == "failed")
            # one clear message per failed save the user relies on, none for a failed checkpoint
            assert len(notices) == failed["message"], f"notices {notices} for {attempts} {where}"
            assert (raised is not None) == bool(failed["final"]), f"{raised!r} for {attempts} {where}"
            for n in notices:
                assert "kept in memory" in n and str(store.path_for(session.id)) in n, n
            told += len(notices) + (raised is not None)
            # the turn is in memory whatever happened on disk
            user, reply_msg = session.messages[-2], session.messages[-1]
            assert user.role == "user" and user.content == text
            assert reply_msg.role == "assistant" and reply_msg.content == "".join(TOKENS)
            assert reply_msg.status == "ok"
            if raised is None:  # reported saved: the last save was the final one and it succeeded
                assert attempts[-1][:2] == ("final", "saved"), f"{attempts} {where}"
                assert load_checked(root, session.id)["messages"][-1]["status"] == "ok"
            else:
                assert session.unsaved
        faults.disarm()
        # the next attempt after the fault (here: the next turn) saves everything held in memory
        mark = len(store.attempts)
        session.send("after the fault")
        assert not session.unsaved
        # with no fault the reply was saved at every token: the checkpoint settings above took effect
        phases = [phase for phase, _, _ in store.attempts[mark:]]
        assert phases == ["message", *["checkpoint"] * len(TOKENS), "final"], f"{phases} {where}"
        on_disk = load_checked(root, session.id)
        assert on_disk == session.to_snapshot(), f"memory and disk differ after recovery {where}"
        assert [m["content"] for m in on_disk["messages"] if m["role"] == "user"] == [
            f"turn {t} of {op}-{k}-{'p' if persistent else 'o'}" for t in range(TURNS)
        ] + ["after the fault"]
    finally:
        faults.disarm()
        session.close()
    assert temp_files(root) == []
    return {"fired": faults.fired, "messages": told, "creation refused": 0}


def test_kth_call_fails_once_and_persistently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    totals: Counter[str] = Counter()
    runs = 0
    max_k: dict[str, int] = {}
    for op in OPS:
        for persistent in (False, True):
            k = 1
            while True:
                root = tmp_path / f"{op}-{k}-{int(persistent)}"
                faults = Faults(root, f"{op}{k}{persistent}")
                with monkeypatch.context() as m:
                    faults.install(m)
                    result = run_script(root, faults, op, k, persistent)
                shutil.rmtree(root)
                runs += 1
                totals.update(result)
                if result["fired"] == 0:  # the conversation never reached the k-th call: done with this op
                    max_k[op] = max(max_k.get(op, 0), k - 1)
                    break
                k += 1
    figure(CASE, "fault plans run", runs)
    figure(CASE, "faults injected", totals["fired"])
    figure(CASE, "messages shown (one per failed save of a message or a reply)", totals["messages"])
    figure(CASE, "session creations refused with a message", totals["creation refused"])
    figure(CASE, "k up to", ", ".join(f"{op} {n}" for op, n in max_k.items()))
    figure(CASE, "seconds", round(time.monotonic() - started, 1))
    assert all(n > 0 for n in max_k.values())


def test_close_does_not_hide_an_unsaved_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quitting while the last turn could not be saved: the session says it is unsaved (the REPL then
    tells the user and does not claim it is saved)."""
    root = tmp_path / "sessions"
    faults = Faults(root, "close")
    store = CheckedStore(root, faults)
    with monkeypatch.context() as m:
        faults.install(m)
        session = ConversationSession.create(store, ScriptedBackend(), model="scripted")  # type: ignore[arg-type]
        faults.arm("write", 1, persistent=True)
        faults.calls.clear()
        with pytest.raises(SaveError):
            session.send("this turn cannot be written")
        session.close()
        assert session.unsaved  # close tried once more and could not: it does not pretend otherwise
        faults.disarm()
    assert [m["role"] for m in load_checked(root, session.id)["messages"]] == []


# ---------------------------------------------------------------------------------- a real full disk
def _mount_tmpfs(where: Path, size_kb: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if (
        os.environ.get("CHATCLI_TORTURE_NO_MOUNT")
        or not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or shutil.which("mount") is None
    ):
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _told(turns: Turns, text: str) -> int:
    """Run one turn; how many "could not save" messages it printed (stdout notices and stderr errors)."""
    out, err = turns.turn(text)
    assert f"Echo: {text}" in out, out[-300:]
    return (out + err).count("could not save")


def _run_until_the_disk_fills(
    chat: Chat, root: Path, sid: str, make_room: Any, case: str, ending: str = "make room, go on"
) -> None:
    """Send turns until saving fails; check what the user is told and what is on disk; keep going while
    the disk is full; make room; check the next turn saves everything that was held in memory."""
    turns = Turns(chat)
    path = root / f"{sid}.json"
    sent: list[str] = []
    for i in range(200):
        before = path.read_bytes()
        text = f"turn {i} " + "x" * 3000
        sent.append(text)
        told = _told(turns, text)
        if told:
            # the message's save and/or the reply's save failed: one message each, nothing torn
            assert told <= 2, chat.text("err")
            after = path.read_bytes()
            assert orjson.loads(after)["id"] == sid
            users = [m["content"] for m in orjson.loads(after)["messages"] if m["role"] == "user"]
            assert users in (sent, sent[:-1]), "the snapshot on disk is neither the last nor the one before"
            assert after == before or told == 1
            assert not temp_files(root), temp_files(root)
            break
    else:
        raise AssertionError("the disk never filled")
    full_at = len(sent)
    for j in range(2):  # the REPL goes on while the disk stays full
        held = f"held in memory while the disk is full {j}"
        sent.append(held)
        assert _told(turns, held) == 2, chat.text("err")
        assert not temp_files(root)
    if ending == "quit twice while full":
        # the first quit (here: end of input) tries to save, says it cannot and stays; the second leaves
        # and says plainly that the session is not saved
        good = path.read_bytes()
        chat.close_stdin()
        assert chat.wait() == 1, chat.text("err")
        err = chat.text("err")
        assert "only in memory" in err and f"session {sid} could not be saved" in err, err
        assert f"Session {sid} is saved" not in chat.text()
        assert path.read_bytes() == good and not temp_files(root)
        load_checked(root, sid)
        figure(case, "quit twice while full: told twice, exit 1, last snapshot whole", "yes")
        return
    if ending == "quit, make room, quit":
        chat.send("quit")  # refused once: the save is tried and fails, the REPL stays
        assert chat.wait_for(b"only in memory", 30, stream="err", start=turns.err_at) is not None
        make_room()
        chat.send("quit")
        assert chat.wait() == 1, chat.text("err")  # saves failed while full: exit 1
    else:
        make_room()
        after_text = "the first turn after making room"
        sent.append(after_text)
        assert _told(turns, after_text) == 0, chat.text("err")
        chat.close_stdin()
        assert chat.wait() == 1, chat.text("err")  # saves failed while full: exit 1
    assert f"Session {sid} is saved" in chat.text()
    snap = load_checked(root, sid)
    users = [m["content"] for m in snap["messages"] if m["role"] == "user"]
    assert users == sent, "a turn held in memory during the fault was not saved afterwards"
    assert all(m["status"] == "ok" for m in snap["messages"] if m["role"] == "assistant")
    assert not temp_files(root)
    figure(case, "turns saved before the disk filled", full_at - 1)
    figure(case, f"{ending}: turns held in memory while full, then saved", len(sent) - full_at)


@pytest.mark.parametrize("ending", ["make room, go on", "quit, make room, quit", "quit twice while full"])
def test_a_full_disk_loses_nothing(
    ending: str, child_env: dict[str, str], fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    mnt = Path(tempfile.mkdtemp(prefix="chatcli-tmpfs-"))
    case = "I/O faults: a full disk"
    mounted = _mount_tmpfs(mnt, 256)
    try:
        root = mnt / "sessions"
        filler = mnt / "filler"
        if mounted:
            figure(case, "how", "a real 256 KiB tmpfs")
            with open(filler, "wb") as f:  # fill it up to leave ~100 KiB for the session
                f.write(b"\0" * (150 * 1024))

            def make_room() -> None:
                filler.unlink()

            preexec = None
        else:  # no mount here (not root, or no CAP_SYS_ADMIN): the child's writes get ENOSPC past a size
            figure(case, "how", "ENOSPC injected into the child's writes (tmpfs mount not allowed here)")
            flag = tmp_path / "disk-full"
            flag.write_text("1")

            def make_room() -> None:
                flag.unlink()

            preexec = None
            child_env = dict(child_env, CHATCLI_TORTURE_ENOSPC_FLAG=str(flag))
        args = [
            "-c",
            ENOSPC_BOOT if not mounted else "from chatcli.cli import main; main()",
            "new",
            "--backend",
            "openai",
            "--base-url",
            f"{fake_llm.url}/v1",
            "--sessions-dir",
            str(root),
        ]
        chat = Chat(args, child_env, preexec_fn=preexec)
        m = chat.wait_for(re.compile(rb"New session ([0-9a-z-]+)"), 20)
        assert m is not None and not isinstance(m, int), chat.text("err")
        _run_until_the_disk_fills(chat, root, m.group(1).decode(), make_room, case, ending)
    finally:
        if mounted:
            _umount(mnt)
        shutil.rmtree(mnt, ignore_errors=True)


# a chatcli whose snapshot writes fail with ENOSPC once a file would pass 100 KiB, while a flag file exists
ENOSPC_BOOT = """
import errno, os, sys
from chatcli.stores import folder as store
_write = os.write
def write(fd, data):
    full = os.path.exists(os.environ["CHATCLI_TORTURE_ENOSPC_FLAG"])
    if full and os.lseek(fd, 0, os.SEEK_CUR) + len(data) > 100 * 1024:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _write(fd, data)
store.os = type(sys)("os_with_a_full_disk")
store.os.__dict__.update(os.__dict__)
store.os.write = write
sys.argv[0] = "chatcli"
from chatcli.cli import main
main()
"""


def test_a_file_size_limit_loses_nothing(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    """RLIMIT_FSIZE: a write past the limit fails with EFBIG (Python ignores SIGXFSZ), never a crash."""
    root = user_dirs["sessions"]
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60 * 1024, hard))

    chat = Chat(
        chatcli_args("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"),
        child_env,
        preexec_fn=limit,
    )
    m = chat.wait_for(re.compile(rb"New session ([0-9a-z-]+)"), 20)
    assert m is not None and not isinstance(m, int), chat.text("err")

    def make_room() -> None:
        resource.prlimit(chat.pid, resource.RLIMIT_FSIZE, (hard, hard))

    _run_until_the_disk_fills(chat, root, m.group(1).decode(), make_room, "I/O faults: a file-size limit")
    assert "File too large" in chat.text("err")
