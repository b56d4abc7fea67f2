"""Composing messages in the REPL: ``/file`` (text files in the next message), ``/edit`` and Ctrl-X Ctrl-E
(the message written in $EDITOR), and ``/copy`` (the last reply to the clipboard through OSC 52), in a real
pseudo-terminal and on a pipe, against the fake model server."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

from chatcli.attachments import MAX_FILE_BYTES

from fakellm import FakeLLMServer, Reply
from ptyproc import Chat, new_args, start


def load(user_dirs: dict[str, Path], sid: str) -> dict:
    return json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())


def scripted_editor(tmp_path: Path, text: str) -> str:
    """An $EDITOR that writes ``text`` into the file it is given and keeps what the file held before in
    ``editor-saw``."""
    (tmp_path / "editor-writes").write_text(text)
    script = tmp_path / "editor.sh"
    script.write_text(
        f'#!/bin/sh\ncat "$1" > "{tmp_path}/editor-saw"\ncat "{tmp_path}/editor-writes" > "$1"\n'
    )
    script.chmod(0o755)
    return str(script)


def test_file_goes_with_the_next_message_and_bad_files_attach_nothing(
    pty_env: dict[str, str],
    fake_llm: FakeLLMServer,
    chats: list[Chat],
    user_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    (tmp_path / "a.py").write_text("print('a')\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "huge.txt").write_text("x" * (MAX_FILE_BYTES + 10))
    c, sid = start(chats, pty_env, *new_args(fake_llm))
    a, blob, huge, missing = (str(tmp_path / n) for n in ("a.py", "blob.bin", "huge.txt", "missing.txt"))
    for bad, said in ((blob, "not a text file"), (huge, "too large"), (missing, "no such file")):
        out = c.command(f"/file {a} {bad}", "nothing was sent")
        assert said in out and bad in out.replace("\n", "")
    c.command("/file", "No files attached")  # all or nothing: a.py did not go in with a bad file
    out = c.command(f"/file {a}", "with your next message")
    assert "a.py (1 line)" in out
    fake_llm.enqueue(Reply(text="Looks right."))
    c.command("check this", "Looks right.")
    assert len(fake_llm.requests) == 1
    sent = fake_llm.requests[0]["json"]["messages"][-1]["content"]
    assert sent == f"File `{a}`:\n```\nprint('a')\n```\n\ncheck this"
    assert load(user_dirs, sid)["messages"][0]["content"] == sent
    out = c.command("history", "Looks right.")
    assert f"[file {a}: 1 line]" in out.replace("\n", "") and "print('a')" not in out
    c.command("next one", "Echo: next one")  # the file went once: the next message is plain
    assert fake_llm.requests[1]["json"]["messages"][-1]["content"] == "next one"


def test_edit_and_ctrl_x_ctrl_e_compose_in_the_editor(
    pty_env: dict[str, str],
    fake_llm: FakeLLMServer,
    chats: list[Chat],
    user_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    env = dict(pty_env, EDITOR=scripted_editor(tmp_path, "written in the editor\nover two lines\n"))
    env.pop("VISUAL", None)
    c, sid = start(chats, env, *new_args(fake_llm))
    c.command("/edit", "Echo: written in the editor")
    assert fake_llm.requests[0]["json"]["messages"][-1]["content"] == "written in the editor\nover two lines"
    # Ctrl-X Ctrl-E: the line typed so far goes to the editor, and what it writes comes back to the line
    c.child.send("draft line")
    c.child.send("\x18\x05")
    c.expect("over two lines")
    assert (tmp_path / "editor-saw").read_text().rstrip("\n") == "draft line"
    c.child.send("\r")
    c.expect("Echo: written in the editor")
    c.expect_prompt()
    assert [m["content"] for m in load(user_dirs, sid)["messages"] if m["role"] == "user"] == [
        "written in the editor\nover two lines",
        "written in the editor\nover two lines",
    ]


def test_edit_with_an_editor_that_fails_sends_nothing(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], tmp_path: Path
) -> None:
    env = dict(pty_env, EDITOR="false")
    env.pop("VISUAL", None)
    c, _ = start(chats, env, *new_args(fake_llm))
    out = c.command("/edit", "nothing was sent")
    assert "exited with status 1" in out
    env2 = dict(pty_env, EDITOR=scripted_editor(tmp_path, "   \n"))
    env2.pop("VISUAL", None)
    c2, _ = start(chats, env2, *new_args(fake_llm), "--store", str(tmp_path / "other"))
    c2.command("/edit", "Nothing written: nothing sent")
    assert fake_llm.requests == []


def test_copy_sends_osc_52_to_the_terminal(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat]
) -> None:
    c, _ = start(chats, pty_env, *new_args(fake_llm))
    c.command("/copy", "no reply to copy yet")
    reply = "Copy me: ünïcode and `code`."
    fake_llm.enqueue(Reply(text=reply))
    c.command("hello", "Copy me:")
    c.send("/copy")
    c.child.expect(re.escape("\x1b]52;c;") + r"([A-Za-z0-9+/=]+)\x07")
    assert base64.b64decode(c.child.match.group(1)).decode() == reply
    c.expect("to the clipboard")
    c.expect_prompt()


def test_copy_on_a_pipe_writes_no_escape_sequence(child_env: dict[str, str], fake_llm: FakeLLMServer) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", *new_args(fake_llm)],
        input="hello\n/copy\n",
        capture_output=True,
        text=True,
        env=child_env,
        timeout=30,
    )
    assert "\x1b]52" not in r.stdout and "\x1b]52" not in r.stderr
    assert "/copy needs a terminal" in r.stdout + r.stderr
    assert "Echo: hello" in r.stdout
