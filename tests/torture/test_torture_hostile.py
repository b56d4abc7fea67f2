"""Hostile input: ids that would escape or confuse the file system, model output carrying terminal control
sequences, multi-megabyte pastes, bytes that are not UTF-8.

* Every hostile id is refused by every command that takes one, before any path is built from it: a
  ``sys.addaudithook`` hook watches every file-system call the process makes while the command runs.
* Model text (and a server's error text) full of ANSI CSI/OSC/DCS, C1 controls and split sequences is
  stored raw in the snapshot but never reaches the terminal raw: not in the live reply (a real
  pseudo-terminal), not through a pipe, not in `history`, `resume`, `show`, `export`, `search` or `list`.
* A 3 MB paste (a pipe, and a bracketed paste into the terminal) is one message, saved byte for byte.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pexpect
import pytest

from chatcli.errors import InvalidSessionId
from chatcli.model import Conversation
from chatcli.session import ConversationSession
from chatcli.snapshot import validate_id
from chatcli.stores.folder import FolderStore

from fakellm import FakeLLMServer, Reply
from torturelib import Chat, Turns, add, chatcli_args, figure, load_checked

CASE_IDS = "hostile input: ids"
CASE_ESC = "hostile input: control sequences in model output"
CASE_PASTE = "hostile input: multi-megabyte paste"

HOSTILE_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "/etc/passwd",
    "../../../../tmp/pwned",
    "..\\x",
    "a\\b",
    "x" * 65,
    "y" * 10000,
    "a\x00b",
    "\x00",
    "",
    " ",
    "a b",
    "-x",
    "_x",
    "x\n",
    "\nx",
    "x\r",
    "x\t",
    "~root",
    "$HOME",
    "a.json",
    ".lock",
    ".index",
    "%2e%2e%2fx",
    "ａｂｃ",
    "٣٤٥",
    "a\u202eb",
    "é",
    "x\u0301",
    "🚀",
    "a\udcffb",
    "\ufeffx",
    "x:y",
    "x*",
    "x?",
    "`id`",
    "x;rm",
]


def fragments(hostile: str) -> list[str]:
    """What a path built from ``hostile`` would contain: the snapshot name, the lock/temp name, or (when it
    holds a slash) the id itself."""
    if "/" in hostile:
        return [hostile]
    return [f"/{hostile}.json", f"/.{hostile}."]


PAYLOADS = [
    "\x1b]0;PWNED-TITLE\x07",  # OSC: set the window title
    "\x1b]52;c;cHduZWQ=\x07",  # OSC 52: write the clipboard
    "\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b[?1049h",  # alternate screen
    "\x1bP1$qm\x1b\\",  # DCS request
    "\x1bc",  # full reset
    "\x1b[6n",  # ask the terminal to type its cursor position
    "\x9b31m\x9b6n",  # 8-bit C1 CSI
    "\x90evil\x9c",  # 8-bit DCS ... ST
    "\x1b[31;1;4m",  # colours
    "\x1b",  # a lone ESC
    "\u202eevil.exe\u202c",  # a right-to-left override: text that reads otherwise than it is
    "\u2066isolated\u2069",  # a bidi isolate
]
# byte sequences that must never reach the terminal (chatcli's own UI never sends these)
FORBIDDEN = [
    b"\x1b]0;",
    b"\x1b]52",
    b"\x1b]8;",
    b"\x1b[2J",
    b"\x1b[?1049h",
    b"\x1bP",
    b"\x1bc",
    b"\x1b[6n",
    b"\xc2\x9b",
    b"\xc2\x90",
    b"\xc2\x9c",
    b"\x1b[31;1;4m",
    "\u202e".encode(),
    "\u2066".encode(),
]


# ------------------------------------------------------------------------------------------------ ids
_watch: list[str] = []
_seen: list[tuple[str, str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watch:
        return
    if not (event == "open" or event.startswith(("os.", "shutil.", "sqlite3.connect"))):
        return
    for a in args:
        if isinstance(a, (str, bytes, os.PathLike)):
            text = os.fsdecode(a) if not isinstance(a, str) else a
            for fragment in _watch:
                if fragment and fragment in text:
                    _seen.append((event, text))


_hook_installed = False


@pytest.fixture
def audit() -> Iterator[None]:
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # stays for the process; does nothing unless _watch is set
        _hook_installed = True
    yield
    _watch.clear()


def _cli(args: list[str]) -> int:
    from chatcli.cli import app

    try:
        rc = app(args, prog_name="chatcli", standalone_mode=False)
    except SystemExit as e:
        rc = e.code
    except Exception as e:
        if hasattr(e, "exit_code") and hasattr(e, "show"):  # a usage error ("-x" looks like an option)
            e.show()
            return int(e.exit_code)
        raise
    return int(rc or 0)


@pytest.mark.parametrize("with_sessions", [False, True])
def test_hostile_ids_are_refused_before_touching_the_file_system(
    with_sessions: bool, user_dirs: dict[str, Path], audit: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = user_dirs["sessions"]
    if with_sessions:
        store = FolderStore(root)
        store.save(
            Conversation.from_json(
                {
                    "format": "chatcli.session",
                    "version": 1,
                    "id": "20260101-090000-real",
                    "title": "real",
                    "created_at": "2026-01-01T09:00:00.000Z",
                    "updated_at": "2026-01-01T09:00:00.000Z",
                    "backend": "openai",
                    "model": "m",
                    "base_url": "",
                    "params": {},
                    "system": "",
                    "context_start": 0,
                    "messages": [],
                }
            )
        )
    before = sorted(p.name for p in root.iterdir()) if root.exists() else None
    commands = [
        ["resume", "{}"],
        ["--resume", "{}"],
        ["show", "{}"],
        ["rename", "{}", "t"],
        ["delete", "{}"],
        ["export", "{}"],
        ["fork", "{}"],
        ["restore", "{}"],
        ["delete", "--purge", "{}"],
    ]
    checked = 0
    for hostile in HOSTILE_IDS:
        with pytest.raises(InvalidSessionId):
            validate_id(hostile)
        _seen.clear()
        _watch[:] = fragments(hostile)
        store = FolderStore(root)
        for call in (
            store.path_for,
            store.load,
            store.lock,
            lambda sid, store=store: ConversationSession.resume(store, sid),
        ):
            with pytest.raises(InvalidSessionId):
                call(hostile)
        for cmd in commands:
            args = [a.format(hostile) if "{}" in a else a for a in cmd]
            rc = _cli(args)
            out, err = capsys.readouterr()
            assert rc in (1, 2), f"{args!r}: exit {rc}; {err}"
            lines = [ln for ln in err.splitlines() if ln.strip()]
            usage = rc == 2 and "Usage:" in err  # the argument parser's own answer to "-x"
            assert usage or (len(lines) == 1 and lines[0].startswith("error:")), f"{args!r}: {err!r}"
            assert "Traceback" not in out + err
            checked += 1
        _watch.clear()
        assert not _seen, f"{hostile!r} reached the file system: {_seen[:3]}"
    after = sorted(p.name for p in root.iterdir()) if root.exists() else None
    assert after == before, "a hostile id created or removed something"
    figure(CASE_IDS, "hostile ids", len(HOSTILE_IDS))
    add(CASE_IDS, "commands refused (each with one error line, no file-system access)", checked)


def test_hostile_ids_through_a_real_process(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    """The same through argv, where the OS allows it (argv cannot carry NUL)."""
    root = user_dirs["sessions"]
    for hostile in ["../../../../tmp/pwned", "a/b", "..", "x" * 5000, "a\u202eb", "\udcff"]:
        r = subprocess.run(
            [sys.executable, "-m", "chatcli", "resume", hostile],
            capture_output=True,
            env=child_env,
            timeout=30,
        )
        assert r.returncode in (1, 2), r.stderr
        assert b"Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not root.exists() or not any(root.iterdir())
    assert not Path("/tmp/pwned.json").exists()


# ------------------------------------------------------------------------------------- escape sequences
def _payload_reply() -> tuple[list[str], str]:
    tokens = ["safe-start "]
    for p in PAYLOADS:
        tokens += [p, "ok "]
    tokens += ["\x1b", "]0;SPLIT-TITLE", "\x07", " \x1b[", "2J", " safe-end"]  # sequences split across chunks
    return tokens, "".join(tokens)


def _assert_clean(data: bytes, where: str, *, no_esc_at_all: bool) -> None:
    for f in FORBIDDEN:
        assert f not in data, f"{where}: {f!r} reached the terminal"
    if no_esc_at_all:
        assert b"\x1b" not in data, f"{where}: an escape byte reached the output"
    for c1 in range(0x80, 0xA0):
        assert chr(c1).encode() not in data, f"{where}: C1 control {c1:#x} reached the output"


def test_control_sequences_are_stored_raw_and_never_shown_raw_through_a_pipe(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    tokens, raw = _payload_reply()
    title = "\x1b]0;PWNED-TITLE\x07first \x9b31m \u202emessage"
    fake_llm.enqueue(
        Reply(tokens=tokens),
        Reply(status=500, error_message="boom \x1b]0;PWNED-TITLE\x07\x1b[2J"),
        Reply(tokens=tokens, cut_after=len(tokens) - 3),
    )
    chat = Chat(chatcli_args("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"), child_env)
    turns = Turns(chat)
    m = chat.wait_for(re.compile(rb"New session ([0-9a-z-]+)"), 20)
    assert m is not None and not isinstance(m, int)
    sid = m.group(1).decode()
    out, err = turns.turn(title)
    assert "safe-start" in out and "safe-end" in out
    out, err = turns.turn("now an error with escapes in it")
    assert "boom" in err
    out, err = turns.turn("and a cut stream")
    chat.send("history")
    chat.send("stats")
    chat.close_stdin()
    assert chat.wait() == 1, chat.text("err")  # turns failed: a piped REPL exits 1
    _assert_clean(bytes(chat.out), "stdout (pipe)", no_esc_at_all=True)
    _assert_clean(bytes(chat.err), "stderr (pipe)", no_esc_at_all=True)
    snap = load_checked(user_dirs["sessions"], sid)
    replies = [m for m in snap["messages"] if m["role"] == "assistant"]
    assert replies[0]["content"] == raw, "model text is not stored raw"
    assert snap["messages"][0]["content"] == title, "user text is not stored raw"
    assert "\x1b]0;PWNED-TITLE\x07" in replies[1]["error"]  # the server's words, raw, in the file
    # the library's views of the same session
    for args in (
        ["resume", sid],
        ["show", sid],
        ["show", sid, "--raw"],
        ["list"],
        ["search", "safe-start"],
        ["search", "PWNED"],
        ["stats"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "chatcli", *args],
            input=b"",
            capture_output=True,
            env=child_env,
            timeout=60,
        )
        assert r.returncode in (0, 1), (args, r.stderr)
        _assert_clean(r.stdout, f"chatcli {' '.join(args)} stdout", no_esc_at_all=True)
        _assert_clean(r.stderr, f"chatcli {' '.join(args)} stderr", no_esc_at_all=True)
        add(CASE_ESC, "views checked (pipe)", 1)
    # export is data: into a pipe or a file it is exact (to a terminal it is cleaned, see below)
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "export", sid, "--format", "jsonl"],
        capture_output=True,
        env=child_env,
        timeout=60,
    )
    assert r.returncode == 0 and orjson.loads(r.stdout.splitlines()[1])["content"] == raw
    figure(CASE_ESC, "payloads", len(PAYLOADS) + 2)


@pytest.fixture
def logged_pty(child_env: dict[str, str]) -> Iterator[Any]:
    """A spawn function whose children log every byte they print."""
    children: list[Any] = []

    class Log:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, b: bytes) -> None:
            self.data += b

        def flush(self) -> None:
            pass

    def spawn(*args: str) -> Any:
        env = dict(child_env, PROMPT_TOOLKIT_NO_CPR="1")
        child = pexpect.spawn(
            sys.executable, ["-m", "chatcli", *args], env=env, dimensions=(40, 100), timeout=30
        )
        child.logfile_read = Log()
        children.append(child)
        return child

    yield spawn
    for c in children:
        if c.isalive():
            c.close(force=True)


def test_every_byte_a_terminal_receives_is_clean(
    logged_pty: Any, fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    tokens, raw = _payload_reply()
    fake_llm.enqueue(
        Reply(tokens=tokens, delay_each=0.01), Reply(status=500, error_message="boom \x1b]0;PWNED\x07")
    )
    child = logged_pty("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1")
    prompt = "\u203a".encode()
    child.expect(prompt)
    child.sendline(b"\x1b]0;PWNED-TITLE\x07typed escapes")
    child.expect(b"safe-end")
    child.expect(prompt)
    child.sendline(b"again")
    child.expect(b"boom")
    child.expect(prompt)
    child.sendline(b"history")
    child.expect(b"safe-end")
    child.expect(prompt)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    _assert_clean(
        bytes(child.logfile_read.data), "the terminal (live reply, error, history)", no_esc_at_all=False
    )
    sid = max(p.stem for p in user_dirs["sessions"].glob("*.json"))
    child = logged_pty("resume", sid)
    child.expect(prompt)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    _assert_clean(bytes(child.logfile_read.data), "the terminal (resume)", no_esc_at_all=False)
    for args in (
        ["show", sid],
        ["show", sid, "--raw"],
        ["export", sid],
        ["export", sid, "--format", "json"],
        ["search", "safe-start"],
        ["list"],
    ):
        child = logged_pty(*args)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, bytes(child.logfile_read.data)[-500:]
        _assert_clean(
            bytes(child.logfile_read.data), f"the terminal (chatcli {' '.join(args)})", no_esc_at_all=False
        )
        add(CASE_ESC, "views checked (terminal)", 1)
    snap = load_checked(user_dirs["sessions"], sid)
    assert next(m for m in snap["messages"] if m["role"] == "assistant")["content"] == raw
    add(CASE_ESC, "views checked (terminal)", 2)


# --------------------------------------------------------------------------------------- big pastes
def test_a_multi_megabyte_paste_through_a_pipe(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    paste = "".join(
        f"{i:07d} lorem ipsum dolor sit amet, consectetur adipiscing elit. " for i in range(50000)
    )
    assert len(paste.encode()) > 3 * 10**6
    fake_llm.enqueue(Reply(text="got the paste"), Reply(text="got the bytes"))
    chat = Chat(chatcli_args("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"), child_env)
    turns = Turns(chat)
    t0 = time.monotonic()
    out, err = turns.turn(paste)
    took = time.monotonic() - t0
    assert "got the paste" in out and not err.strip(), err
    out, err = turns.turn(b"bytes that are not UTF-8: \xff\xfe\xc3(")
    assert "got the bytes" in out and not err.strip(), err
    chat.close_stdin()
    assert chat.wait() == 0, chat.text("err")
    sid = max(p.stem for p in user_dirs["sessions"].glob("*.json"))
    users = [
        m["content"] for m in load_checked(user_dirs["sessions"], sid)["messages"] if m["role"] == "user"
    ]
    assert users[0] == paste
    assert users[1].startswith("bytes that are not UTF-8: ") and "\ufffd" in users[1]
    assert fake_llm.requests[0]["json"]["messages"][-1]["content"] == paste
    figure(
        CASE_PASTE,
        "pipe",
        f"{len(paste.encode()) / 1e6:.1f} MB in one line, saved and sent whole in {took:.1f} s",
    )


def test_a_multi_megabyte_bracketed_paste_into_the_terminal(
    logged_pty: Any, fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    paste = "".join(f"{i:06d} a line of a big paste, with some words in it to wrap.\n" for i in range(50000))
    assert len(paste.encode()) > 3 * 10**6
    fake_llm.enqueue(Reply(text="got the paste"))
    child = logged_pty("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1")
    child.expect("\u203a".encode())
    t0 = time.monotonic()
    child.send(b"\x1b[200~" + paste.encode() + b"\x1b[201~")
    child.send(b"\r")
    child.expect(b"got the paste", timeout=300)
    took = time.monotonic() - t0
    child.expect("\u203a".encode())
    child.sendeof()
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == 0
    sid = max(p.stem for p in user_dirs["sessions"].glob("*.json"))
    users = [
        m["content"] for m in load_checked(user_dirs["sessions"], sid)["messages"] if m["role"] == "user"
    ]
    assert users == [paste.rstrip("\n")] or users == [paste], "the paste was split or changed"
    figure(
        CASE_PASTE,
        "terminal (bracketed paste)",
        f"{len(paste.encode()) / 1e6:.1f} MB, 50,000 lines, one message, saved whole in {took:.1f} s",
    )
