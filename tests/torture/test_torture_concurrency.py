"""Concurrency: two chatcli on one session, many writers side by side, readers during the writes, and
locks left behind.

* A second REPL (and every library command that writes) on an open session is refused with one clear
  line, changes nothing, and the first goes on; `show` reads it meanwhile.
* CHATCLI_TORTURE_WRITERS chatcli processes, each on its own session in one folder, save at every token
  while `list`, the index and FolderStore.list read the folder in a loop: no reader ever sees a damaged
  or half-written file, and every session ends with exactly its own turns.
* A lock held by a SIGKILLed process, a lock file with garbage in it, and a lock that is a symbolic link
  (refused: the lock library truncates its file, so a link could destroy the file it points to).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from chatcli.stores.folder import FolderStore
from chatcli.stores.folder_index import SessionIndex

from fakellm import FakeLLMServer, Reply, last_user_text
from torturelib import WRITERS, Chat, Turns, add, chatcli_args, figure, load_checked, temp_files

CASE = "concurrency"
BANNER = re.compile(rb"(?:New|Resumed) session ([0-9A-Za-z_-]+)")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcli", *args],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def start(env: dict[str, str], *args: str, checkpoint: float | None = None) -> tuple[Chat, str]:
    chat = Chat(chatcli_args(*args, checkpoint=checkpoint), env)
    m = chat.wait_for(BANNER, 20)
    assert m is not None and not isinstance(m, int), chat.text("err")
    return chat, m.group(1).decode()


def test_a_second_chatcli_on_an_open_session_is_refused(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    root = user_dirs["sessions"]
    first, sid = start(child_env, "new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1")
    turns = Turns(first)
    out, _ = turns.turn("hello from the first")
    assert "Echo: hello from the first" in out
    before = (root / f"{sid}.json").read_bytes()
    refused = 0
    for args in (
        ["resume", sid],
        ["--resume", sid],
        ["resume", "last"],
        ["rename", sid, "stolen"],
        ["delete", sid],
        ["delete", "--purge", "--yes", sid],
    ):
        r = run_cli(*args, env=child_env)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert len(lines) == 1 and "open in another chatcli" in lines[0], (args, r.stderr)
        assert (root / f"{sid}.json").read_bytes() == before, f"{args} changed the open session"
        refused += 1
    r = run_cli("show", sid, env=child_env)  # reading is fine meanwhile
    assert r.returncode == 0 and "hello from the first" in r.stdout, r.stderr
    out, _ = turns.turn("the first goes on")
    assert "Echo: the first goes on" in out
    first.close_stdin()
    assert first.wait() == 0
    assert [m["content"] for m in load_checked(root, sid)["messages"] if m["role"] == "user"] == [
        "hello from the first",
        "the first goes on",
    ]
    r = run_cli("resume", sid, env=child_env)  # once it is closed, the session opens again
    assert r.returncode == 0, r.stderr
    figure(CASE, "second opener refused (resume, rename, delete...)", f"{refused} of {refused}")


def test_many_writers_and_readers_never_interfere(
    child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    root = user_dirs["sessions"]
    turns_each = 15

    def answer(record: dict) -> Reply:
        text = last_user_text(record.get("json"))
        return Reply(tokens=[f"{text}:{i} " for i in range(20)], delay_each=0.003)

    stop = threading.Event()
    reads = {"store.list": 0, "index": 0, "chatcli list": 0}
    problems: list[str] = []

    def reader() -> None:
        store = FolderStore(root)
        while not stop.is_set():
            _, damaged = store.scan()
            if damaged:
                problems.append(f"store.list saw damaged files: {damaged}")
            reads["store.list"] += 1
            ix = SessionIndex(store)
            try:
                page = ix.page()
                _rows, damaged = page.rows, page.damaged
                if damaged:
                    problems.append(f"the index saw damaged files: {damaged}")
            finally:
                ix.close()
            reads["index"] += 1

    def cli_reader() -> None:
        while not stop.is_set():
            r = run_cli("list", "--all", env=child_env)
            if r.returncode != 0 or "damaged" in r.stderr:
                problems.append(f"chatcli list: {r.returncode} {r.stderr}")
            reads["chatcli list"] += 1

    started = time.monotonic()
    with FakeLLMServer(answer) as llm:
        writers = [
            start(child_env, "new", "--backend", "openai", "--base-url", f"{llm.url}/v1", checkpoint=0.0)
            for _ in range(WRITERS)
        ]
        threads = [threading.Thread(target=reader), threading.Thread(target=cli_reader)]
        for t in threads:
            t.start()

        def drive(w: int) -> None:
            chat, _ = writers[w]
            for j in range(turns_each):
                text = f"writer{w}-turn{j}"
                chat.send(text)
                assert chat.wait_for(f"{text}:19 \n".encode(), 60) is not None, chat.text("err")
            chat.close_stdin()

        drivers = [threading.Thread(target=drive, args=(w,)) for w in range(WRITERS)]
        for t in drivers:
            t.start()
        for t in drivers:
            t.join()
        stop.set()
        for t in threads:
            t.join()
        for chat, _ in writers:
            assert chat.wait() == 0, chat.text("err")
    assert not problems, problems[:5]
    for w, (_, sid) in enumerate(writers):
        msgs = load_checked(root, sid)["messages"]
        assert [m["content"] for m in msgs if m["role"] == "user"] == [
            f"writer{w}-turn{j}" for j in range(turns_each)
        ]
        assert all(
            m["status"] == "ok" and m["content"].startswith(f"writer{w}-")
            for m in msgs
            if m["role"] == "assistant"
        )
    assert not temp_files(root)
    figure(CASE, "writers side by side (saving at every token)", f"{WRITERS} x {turns_each} turns")
    figure(
        CASE,
        "reads of the folder during the writes",
        ", ".join(f"{k} {v}" for k, v in reads.items()) + ", none saw a damaged file",
    )
    figure(CASE, "seconds (writers)", round(time.monotonic() - started, 1))


def test_locks_left_behind(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    root = user_dirs["sessions"]
    # a lock held by a process killed mid-reply: free at once
    fake_llm.enqueue(Reply(tokens=[f"t{i} " for i in range(200)], delay_each=0.02))
    chat, sid = start(child_env, "new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1")
    chat.send("a long reply, please")
    assert chat.wait_for(b"t5 ", 20) is not None
    chat.kill()
    chat.wait()
    chat, again = start(child_env, "resume", sid)
    assert again == sid
    chat.close_stdin()
    assert chat.wait() == 0
    # a lock file with garbage in it (not held by anyone): ignored
    lock_file = root / ".locks" / f"{sid}.lock"
    lock_file.write_bytes(b"\x00garbage from another life\n" * 10)
    r = run_cli("resume", sid, env=child_env)
    assert r.returncode == 0, r.stderr
    # a lock that is a symbolic link: refused with a clear message; what it points to is untouched
    victim = user_dirs["home"] / "precious.txt"
    victim.write_text("must not be truncated")
    lock_file.unlink()
    lock_file.symlink_to(victim)
    r = run_cli("resume", sid, env=child_env)
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1
    assert victim.read_text() == "must not be truncated"
    assert lock_file.is_symlink()
    load_checked(root, sid)
    add(CASE, "stale locks recovered (plus one per kill in the crash test)", 2)
    figure(CASE, "a symlinked lock file", "refused, its target untouched")
