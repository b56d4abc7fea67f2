"""The REPL in a real pseudo-terminal (pexpect): prompt-toolkit input, live replies, Ctrl-C, Ctrl-D, resume
and the session lock, against the fake model server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pexpect

from fakellm import FakeLLMServer, Reply
from ptyproc import Chat, new_args, plain, start


def load(user_dirs: dict[str, Path], sid: str) -> dict:
    return json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())


def test_messages_and_commands(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    c, sid = start(chats, pty_env, *new_args(fake_llm))
    c.command("first message", "Echo: first message")
    c.command("second message", "Echo: second message")
    assert len(fake_llm.requests) == 2
    assert fake_llm.requests[1]["json"]["messages"] == [
        {"role": "user", "content": "first message"},
        {"role": "assistant", "content": "Echo: first message"},
        {"role": "user", "content": "second message"},
    ]

    out = c.command("stats", "last saved")
    assert re.search(r"turns\s+2\b", out), out
    assert re.search(r"messages\s+4 \(2 user, 2 assistant\); 4 in context", out), out
    snapshot_path = str(user_dirs["sessions"] / f"{sid}.json")
    assert snapshot_path in re.sub(r"\s*\n\s*", "", out), out  # whole (maybe folded), not cut with "…"
    assert "…" not in out

    out = c.command("history", "Echo: second message")
    order = [out.index(s) for s in ("first message", "Echo: first message", "second message")]
    assert order == sorted(order)
    assert out.count("you ") >= 2 and "model " in out

    out = c.command("/history 1", "Echo: second message")
    assert "first message" not in out
    assert "1 earlier turn not shown" in out

    out = c.command("help", 'sends "quit"')
    for usage in ("history [N]", "stats", "clear [undo]", "help", "quit", "Ctrl-D"):
        assert usage in out

    out = c.command("/nope", "unknown command /nope")
    assert len(fake_llm.requests) == 2  # commands never reach the model

    out = c.quit_with_ctrl_d()
    assert c.child.exitstatus == 0, out
    assert f"Resume it with: chatcli resume {sid}" in out
    assert "Traceback" not in "".join(c.log)
    msgs = load(user_dirs, sid)["messages"]
    assert [m["content"] for m in msgs] == [
        "first message",
        "Echo: first message",
        "second message",
        "Echo: second message",
    ]


def test_backslash_sends_a_command_word_as_a_message(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat]
) -> None:
    c, _ = start(chats, pty_env, *new_args(fake_llm))
    c.command("\\quit", "Echo: quit")
    assert fake_llm.requests[-1]["json"]["messages"][-1] == {"role": "user", "content": "quit"}
    c.command("\\history 3", "Echo: history 3")
    assert fake_llm.requests[-1]["json"]["messages"][-1] == {"role": "user", "content": "history 3"}
    c.command("stats please", "Echo: stats please")  # not exactly a command: a message
    assert len(fake_llm.requests) == 3
    c.send("/quit")
    c.expect(pexpect.EOF)
    c.child.close()
    assert c.child.exitstatus == 0


def test_ctrl_c_stops_a_reply_and_keeps_it(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    slow = Reply(tokens=[f"t{i:03d} " for i in range(200)], delay_each=0.2)
    fake_llm.enqueue(slow)
    c, sid = start(chats, pty_env, *new_args(fake_llm))
    c.send("tell me a long story")
    c.expect("t002")  # streaming, shown live
    c.child.sendintr()
    out = c.expect("interrupted")
    c.expect_prompt()
    assert "Traceback" not in out

    c.command("are you still there?", "Echo: are you still there?")  # the REPL goes on
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert sent[0] == {"role": "user", "content": "tell me a long story"}
    assert sent[1]["role"] == "assistant" and sent[1]["content"].startswith("t000 t001 t002 ")
    assert sent[2] == {"role": "user", "content": "are you still there?"}

    out = c.quit_with_ctrl_d()
    assert c.child.exitstatus == 0
    msgs = load(user_dirs, sid)["messages"]
    assert [(m["role"], m["status"]) for m in msgs] == [
        ("user", "ok"),
        ("assistant", "interrupted"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    partial = msgs[1]["content"]
    assert partial.startswith("t000 t001 t002 ")
    assert len(partial) < len(slow.full_text)
    assert slow.full_text.startswith(partial)


def test_ctrl_c_at_the_prompt_clears_the_line(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat]
) -> None:
    c, _ = start(chats, pty_env, *new_args(fake_llm))
    c.child.send("half typed")
    c.child.sendintr()
    c.expect_prompt()
    c.command("next", "Echo: next")
    assert [r["json"]["messages"][-1]["content"] for r in fake_llm.requests] == ["next"]
    c.quit_with_ctrl_d()
    assert c.child.exitstatus == 0


def test_resume_last_and_the_session_lock(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    c, sid = start(chats, pty_env, *new_args(fake_llm))
    c.command("my name is Ada", "Echo: my name is Ada")
    c.command("I like tea", "Echo: I like tea")
    out = c.quit_with_ctrl_d()
    assert c.child.exitstatus == 0
    assert f"chatcli resume {sid}" in out

    r, rid = start(chats, pty_env, "resume", "last")
    assert rid == sid
    shown = "".join(plain(b) for b in r.log)
    for text in ("my name is Ada", "Echo: my name is Ada", "I like tea", "Echo: I like tea"):
        assert text in shown

    # a second chatcli on the same session is refused while the first one holds it
    second = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", sid],
        input="hijack\n",
        capture_output=True,
        text=True,
        env=pty_env,
        timeout=30,
    )
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "open in another chatcli" in lines[0], second.stderr
    assert "Traceback" not in second.stderr
    assert len(fake_llm.requests) == 2  # the refused one sent nothing

    r.command("what is my name?", "Echo: what is my name?")
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == [
        "my name is Ada",
        "I like tea",
        "what is my name?",
    ]
    assert [m["content"] for m in sent if m["role"] == "assistant"] == [
        "Echo: my name is Ada",
        "Echo: I like tea",
    ]
    r.quit_with_ctrl_d()
    assert r.child.exitstatus == 0
    msgs = load(user_dirs, sid)["messages"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == [
        "my name is Ada",
        "I like tea",
        "what is my name?",
    ]

    # once the first chatcli is gone the session opens again
    again = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", sid],
        input="",
        capture_output=True,
        text=True,
        env=pty_env,
        timeout=30,
    )
    assert again.returncode == 0, again.stderr


def test_tab_completes_commands_and_retry_streams_again(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    fake_llm.enqueue(Reply(text="first try"), Reply(text="second try"))
    c, sid = start(chats, pty_env, *new_args(fake_llm))
    c.command("a question", "first try")
    c.child.send("/ret")
    c.child.send("\t")  # Tab completes the command name
    c.child.send("\r")
    c.expect("second try")
    c.expect_prompt()
    c.child.send("und")
    c.child.send("\t")
    c.child.send("\r")
    c.expect("Took back the last turn")
    c.expect_prompt()
    c.quit_with_ctrl_d()
    assert c.child.exitstatus == 0
    msgs = load(user_dirs, sid)["messages"]
    assert [(m["content"], m.get("dropped")) for m in msgs] == [
        ("a question", "undone"),
        ("first try", "retried"),
        ("second try", "undone"),
    ]
    assert len(fake_llm.requests) == 2
