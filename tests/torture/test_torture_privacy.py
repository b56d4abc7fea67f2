"""Privacy: under umask 022 every file chatcli writes is 0600 and every folder 0700 (snapshots, locks,
temp files, the index and its journal, the trash, input history); and an API key canary, even one a
hostile server echoes back in its errors, never lands in any file or on the screen."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pexpect

from chatcli.stores.folder import FolderStore
from chatcli.stores.folder_index import SessionIndex

from fakellm import FakeLLMServer, Reply
from torturelib import Chat, Turns, all_files, assert_no_canary, chatcli_args, figure, load_checked

CASE = "privacy"
CANARY = "sk-privacy-canary-5b2c9e7d1a"


def umask_022() -> None:
    os.umask(0o022)


def test_files_are_private_and_the_key_is_never_written(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    env = dict(child_env, OPENAI_API_KEY=CANARY)
    root, state = user_dirs["sessions"], user_dirs["state"]
    echo = f"Incorrect API key provided: {CANARY}"
    fake_llm.enqueue(
        Reply(tokens=[f"t{i} " for i in range(30)], delay_each=0.01),
        Reply(status=401, error_message=echo),
        Reply(status=500, error_message=f"upstream said Bearer {CANARY}"),
        Reply(tokens=["a ", "b "], error_after=1, error_message=f"key {CANARY} is over quota"),
    )
    chat = Chat(
        chatcli_args("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1", checkpoint=0.0),
        env,
        preexec_fn=umask_022,
    )
    m = chat.wait_for(re.compile(rb"New session ([0-9a-z-]+)"), 20)
    assert m is not None and not isinstance(m, int)
    sid = m.group(1).decode()
    turns = Turns(chat)
    shown = ""
    for text in ("a reply saved at every token", "401", "500", "error inside the stream", "fine again"):
        out, err = turns.turn(text)
        shown += out + err
    chat.close_stdin()
    assert chat.wait() == 1, chat.text("err")  # turns failed: a piped REPL exits 1
    assert all(r["headers"].get("authorization") == f"Bearer {CANARY}" for r in fake_llm.requests)
    assert CANARY not in shown and "[API key]" in shown

    # the library writes too: the index, the trash, a fork, a rename; and a terminal session (input history)
    def cli(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "chatcli", *args],
            input="",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            preexec_fn=umask_022,
        )
        assert r.returncode == 0, (args, r.stderr)
        assert CANARY not in r.stdout + r.stderr
        return r.stdout

    cli("list")
    cli("search", "reply")
    cli("rename", sid, "private")
    fork = cli("fork", sid).split()[-1]
    cli("delete", fork)
    cli("restore", fork)
    cli("delete", fork)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chatcli", "resume", sid],
        env=dict(env, PROMPT_TOOLKIT_NO_CPR="1"),
        dimensions=(40, 100),
        timeout=20,
        preexec_fn=umask_022,
    )
    child.expect("\u203a".encode())
    child.sendline(b"typed at a terminal")
    child.expect(b"Echo: typed at a terminal")
    child.expect("\u203a".encode())
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # the index's journal files exist only while it is open: look at them then
    old = os.umask(0o022)
    try:
        ix = SessionIndex(FolderStore(root))
        ix.page()
        journal = sorted(root.glob(".index.sqlite*"))
        assert len(journal) >= 2, journal  # the database and its -wal (and -shm)
        for p in journal:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p} is {stat.S_IMODE(p.stat().st_mode):o}"
        ix.close()
    finally:
        os.umask(old)
    files = all_files(root, state)
    names = {p.name for p in files}
    assert f"{sid}.json" in names and f"{sid}.lock" in names and "input_history" in names
    assert (root / ".locks" / f"{sid}.lock").is_file() and not list(root.glob(".*.lock"))
    assert any(n.startswith(".index.sqlite") for n in names) and (root / ".trash").is_dir()
    for p in files:
        mode = stat.S_IMODE(os.lstat(p).st_mode)
        assert mode == 0o600, f"{p} is {mode:o}, not 600"
    folders = [root, state] + [d for r in (root, state) for d in r.rglob("*") if d.is_dir()]
    for d in folders:
        mode = stat.S_IMODE(d.stat().st_mode)
        assert mode == 0o700, f"{d} is {mode:o}, not 700"
    checked = assert_no_canary(CANARY, root, state, user_dirs["home"], user_dirs["config"].parent)
    snap = load_checked(root, sid)
    errors = [m.get("error", "") for m in snap["messages"] if m["role"] == "assistant"]
    assert sum("[API key]" in e for e in errors) == 3, errors
    figure(
        CASE,
        "files checked (all 0600)",
        f"{len(files)}: " + ", ".join(sorted(re.sub(r"\d{8}-\d{6}-\w{4}", "ID", n) for n in names)),
    )
    figure(CASE, "folders checked (all 0700)", len(folders))
    figure(CASE, "index journal files while open (0600)", len(journal))
    figure(CASE, "files checked for the key canary (incl. 3 errors echoing it)", checked)
