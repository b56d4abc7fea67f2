"""SIGKILL chatcli while a reply streams: the snapshot on disk must still be a valid session holding the
user's message (and, once a checkpoint has passed, the partial reply), and `chatcli resume` must open it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from chatcli.session import ConversationSession
from chatcli.stores.folder import FolderStore

from fakellm import FakeLLMServer, Reply

TOKENS = [f"k{i:03d} " for i in range(400)]
DELAY_EACH = 0.1  # so token k030 arrives ~3 s into the reply, past several checkpoints


def _spawn_new(fake_llm: FakeLLMServer, env: dict[str, str]) -> pexpect.spawn:
    """`chatcli new` on the fake server, in a 40x100 pseudo-terminal."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "chatcli", "new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"],
        env=env,
        dimensions=(40, 100),
        timeout=10,
        encoding="utf-8",
        codec_errors="replace",
    )


@pytest.mark.parametrize("moment", ["before-first-token", "k005", "k030"])
def test_sigkill_mid_reply_loses_nothing(
    moment: str, child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    env = dict(child_env, PROMPT_TOOLKIT_NO_CPR="1")
    first = 3.0 if moment == "before-first-token" else 0.0
    fake_llm.enqueue(Reply(tokens=TOKENS, delay_first=first, delay_each=DELAY_EACH))
    child = _spawn_new(fake_llm, env)
    try:
        child.expect(r"New session ([0-9A-Za-z_-]+)")
        sid = child.match.group(1)
        child.expect("›")
        child.sendline("please write a very long answer")
        fake_llm.wait_for_requests(1, timeout=10)
        if moment != "before-first-token":
            child.expect(moment)  # this token reached chatcli and the screen
        os.kill(child.pid, signal.SIGKILL)
        child.expect(pexpect.EOF)
        child.close()
        assert child.signalstatus == signal.SIGKILL
    finally:
        if child.isalive():
            child.terminate(force=True)

    sessions = user_dirs["sessions"]
    path = sessions / f"{sid}.json"
    raw = json.loads(path.read_bytes())  # valid JSON, not a half-written file
    snap = FolderStore(sessions).load(sid).to_json()  # and a valid session: the same, a reply saved while
    # streaming read as interrupted (its writer is gone)
    read_as = [dict(m, status="interrupted") if m["status"] == "streaming" else m for m in raw["messages"]]
    assert snap == dict(raw, messages=read_as)
    msgs = raw["messages"]
    assert msgs[0]["role"] == "user" and msgs[0]["content"] == "please write a very long answer"
    full = "".join(TOKENS)
    if moment == "k030":
        # 3 s of streaming: a checkpoint saved the reply so far, marked as still streaming
        assert len(msgs) == 2
        reply = msgs[1]
        assert reply["role"] == "assistant" and reply["status"] == "streaming"
        assert reply["content"].startswith("k000 k001 k002 k003 k004 k005 k006 k007 k008 k009 k010 ")
        assert full.startswith(reply["content"]) and len(reply["content"]) < len(full)
    else:
        # killed before any checkpoint: the user's message is there; a reply, if any, is a true prefix
        assert len(msgs) in (1, 2)
        if len(msgs) == 2:
            assert full.startswith(msgs[1]["content"])

    # a crash mid-save would leave a temp file; plant one to see resume clear it
    stale = sessions / f".{sid}.x1y2z3.tmp"
    stale.write_text("{half a snapshot")

    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", "last"],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr  # the dead process's lock is free
    assert f"Resumed session {sid}" in r.stdout
    assert "please write a very long answer" in r.stdout
    if moment == "k030":
        assert "[interrupted]" in r.stdout  # a reply saved as streaming is read back as interrupted
        assert "k000 k001 k002" in r.stdout
        session = ConversationSession.resume(FolderStore(sessions), sid)
        try:
            assert session.messages[1].status == "interrupted"
        finally:
            session.close()
    assert not list(sessions.glob("*.tmp")) and not list(sessions.glob(".*.tmp"))
    # resuming wrote nothing new, and the snapshot is still the same valid session
    assert json.loads(path.read_bytes())["messages"] == msgs
    assert FolderStore(sessions).load(sid).to_json()["messages"] == read_as


@pytest.mark.parametrize(
    "how", ["sigterm", "terminal-closed", "sigterm-at-prompt", "terminal-closed-at-prompt"]
)
def test_sigterm_and_hangup_keep_the_partial_reply(
    how: str, child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    """SIGTERM, or SIGHUP from the terminal going away, stops chatcli like Ctrl-C stops a reply: what arrived
    is saved on the way out (status interrupted, where a checkpoint writes streaming), then it leaves with
    128 + the signal number."""
    env = dict(child_env, PROMPT_TOOLKIT_NO_CPR="1")
    fake_llm.enqueue(Reply(tokens=["done."]))
    fake_llm.enqueue(Reply(tokens=TOKENS, delay_each=DELAY_EACH))
    child = _spawn_new(fake_llm, env)
    try:
        child.expect(r"New session ([0-9A-Za-z_-]+)")
        sid = child.match.group(1)
        child.expect("›")
        child.sendline("first question")
        child.expect("done.")
        child.expect("›")
        if not how.endswith("at-prompt"):
            child.sendline("please write a very long answer")
            child.expect("k005")  # ~0.6 s in
        if how.startswith("terminal-closed"):
            os.close(child.child_fd)  # the terminal goes away: the kernel sends SIGHUP
            _, status = os.waitpid(child.pid, 0)
            child.ptyproc.terminated = True
            code = os.waitstatus_to_exitcode(status)
            expected = 128 + signal.SIGHUP
        else:
            os.kill(child.pid, signal.SIGTERM)
            child.expect(r"stopped by SIGTERM: session \S+ is saved")
            child.expect(pexpect.EOF)
            child.close()
            code = child.exitstatus
            expected = 128 + signal.SIGTERM
    finally:
        if child.isalive():
            child.terminate(force=True)
    assert code == expected

    sessions = user_dirs["sessions"]
    msgs = FolderStore(sessions).load(sid).to_json()["messages"]
    assert [m["content"] for m in msgs[:2]] == ["first question", "done."]
    if how.endswith("at-prompt"):
        assert len(msgs) == 2
    else:
        assert len(msgs) == 4 and msgs[2]["content"] == "please write a very long answer"
        reply = msgs[3]
        assert reply["status"] == "interrupted"  # not "streaming": this was a save on the way out
        assert reply["content"].startswith("k000 k001 k002 k003 k004 k005")
        assert "".join(TOKENS).startswith(reply["content"])
    assert not list(sessions.glob(".*.tmp"))
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", sid],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr  # the lock was released
