"""``chatcli ask`` as scripts run it: stdin, stdout and stderr piped. The message, the reply, the exit
statuses and the files in a message run in this process on a scripted model (tests/transcript.py); what
needs a real process runs ``python -m chatcli`` against the fake model server on 127.0.0.1 (connection
errors, signals, a terminal on stderr), and so do ``models`` and ``completion`` (the real backends, the
shell's environment at start-up). Also the sessions folder's ``.gitignore``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatcli.attachments import MAX_FILE_BYTES
from chatcli.errors import AuthenticationError, BackendTimeout
from chatcli.messages import Usage
from transcript import CLI, ScriptedBackend
from transcript import Reply as Scripted

from fakellm import FakeLLMServer, Reply


def ask_command(llm: FakeLLMServer | None, *args: str) -> list[str]:
    """The command line of ``chatcli ask ARGS`` on the fake server's OpenAI-compatible endpoint."""
    where = ["--backend", "openai", "--base-url", f"{llm.url}/v1"] if llm is not None else []
    return [sys.executable, "-m", "chatcli", "ask", *where, *args]


def ask(
    env: dict[str, str],
    llm: FakeLLMServer | None,
    *args: str,
    stdin: bytes | None = b"",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``chatcli ask ARGS`` in a child process on the fake server's OpenAI-compatible endpoint;
    ``stdin=None`` leaves the child no stdin at all (as `< /dev/null` would not: that is an empty
    pipe-like file)."""
    r = subprocess.run(
        ask_command(llm, *args),
        input=stdin,
        capture_output=True,
        env=env,
        timeout=30,
        cwd=cwd,
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8", "replace")
    )


def sessions(user_dirs: dict[str, Path]) -> list[dict]:
    folder = user_dirs["sessions"]
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def contents(snap: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in snap["messages"]]


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# -- the message, the reply, the session ------------------------------------------------------------------
def test_piped_text_comes_before_the_prompt_and_the_reply_is_printed_exactly(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    reply = "# Summary\n\n**Two** notes, `one` link:  kept as typed."
    scripted.enqueue(reply)
    r = cli("ask", "summarise", "this", input=b"note one\nnote two\n")
    # the model's text exactly: no rendering, no wrapping, no escapes; stderr is not a terminal and -v was
    # not given: no notices
    assert r.ok == reply + "\n"
    assert scripted.requests[0].pairs() == [("user", "note one\nnote two\n\nsummarise this")]
    [snap] = sessions(user_dirs)
    assert contents(snap) == [("user", "note one\nnote two\n\nsummarise this"), ("assistant", reply)]
    assert snap["title"] == "summarise this"  # the prompt, not the piped text, names it


def test_no_prompt_and_nothing_piped_is_a_usage_error(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    assert cli("ask", input=b"").error(2) == (
        'error: give a prompt (chatcli ask "..."), or pipe text into chatcli ask'
    )
    assert scripted.requests == [] and sessions(user_dirs) == []


def test_text_that_is_not_utf8_is_cleaned_not_an_error(cli: CLI, user_dirs: dict[str, Path]) -> None:
    assert cli("ask", "what is this", input=b"caf\xe9 \xff\xfe ok\n").exit_code == 0
    [snap] = sessions(user_dirs)
    assert snap["messages"][0]["content"] == "caf\ufffd \ufffd\ufffd ok\n\nwhat is this"


def test_continue_and_session_go_on_with_a_saved_session(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    assert cli("ask", "first question").ok == "Echo: first question\n"
    assert cli("ask", "other session").ok == "Echo: other session\n"
    [first, other] = sorted(sessions(user_dirs), key=lambda s: s["messages"][0]["content"])
    time.sleep(0.005)  # (so the next save is the newest to the millisecond)
    # -c is the most recently *updated* session: make the first one that by going on with it by id
    assert cli("ask", "--session", first["id"], "second question").ok == "Echo: second question\n"
    assert cli("ask", "-c", "shorter").ok == "Echo: shorter\n"
    sent = scripted.requests[-1].pairs()
    assert sent == [
        ("user", "first question"),
        ("assistant", "Echo: first question"),
        ("user", "second question"),
        ("assistant", "Echo: second question"),
        ("user", "shorter"),
    ]
    snaps = {s["id"]: s for s in sessions(user_dirs)}
    assert len(snaps) == 2
    assert contents(snaps[first["id"]]) == [*sent, ("assistant", "Echo: shorter")]
    assert len(snaps[other["id"]]["messages"]) == 2
    # resume last shows both turns of the continued session
    out = cli("resume", "last", input="history\n").ok
    assert first["id"] in out and "second question" in out and "Echo: shorter" in out


def test_continue_with_no_sessions_says_so(cli: CLI, scripted: ScriptedBackend) -> None:
    assert "no sessions" in cli("ask", "-c", "hello").error(1)
    assert scripted.requests == []


def test_json_gives_the_reply_and_what_came_with_it(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    scripted.enqueue(Scripted("Forty-two.", usage=Usage(11, 3, 0)))
    out = json.loads(cli("ask", "--json", "the answer?").ok)
    [snap] = sessions(user_dirs)
    timings = out.pop("timings")
    assert out == {
        "reply": "Forty-two.",
        "reasoning": None,
        "tool_calls": [],
        "status": "ok",
        "finish_reason": "stop",
        "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "cached_tokens": 0},
        "context": {"start": 0},
        "session_id": snap["id"],
    }
    assert set(timings) == {"ttft_s", "duration_s", "tokens_per_second", "server"}
    assert timings["ttft_s"] >= 0 and timings["server"] is None


def test_no_save_writes_nothing(cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]) -> None:
    assert json.loads(cli("ask", "--no-save", "--json", "a throwaway question").ok)["session_id"] is None
    assert not user_dirs["sessions"].exists()
    # and with -c: the last session is read, sent as context, and left as it was
    assert cli("ask", "kept").ok == "Echo: kept\n"
    [before] = sessions(user_dirs)
    assert cli("ask", "--no-save", "-c", "not kept").ok == "Echo: not kept\n"
    assert scripted.requests[-1].pairs() == [
        ("user", "kept"),
        ("assistant", "Echo: kept"),
        ("user", "not kept"),
    ]
    assert sessions(user_dirs) == [before]


def test_verbose_says_where_the_session_is(cli: CLI, user_dirs: dict[str, Path]) -> None:
    r = cli("ask", "-v", "hello")
    [snap] = sessions(user_dirs)
    assert (r.exit_code, r.stdout) == (0, "Echo: hello\n")
    assert r.stderr == f"session {snap['id']}: chatcli resume {snap['id']} --store {user_dirs['sessions']}\n"


# -- exit statuses ------------------------------------------------------------------------------------------
def test_a_backend_error_exits_1_with_one_line_and_nothing_on_stdout(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    said = "http://scripted.invalid/v1 refused the request (401): Incorrect API key provided"
    scripted.enqueue(Scripted(error=AuthenticationError(said, 401, "Incorrect API key provided")))
    assert cli("ask", "hello").error(1) == f"error: {said}"
    [snap] = sessions(user_dirs)  # the message is kept, ready for a retry
    assert [(m["content"], m["status"]) for m in snap["messages"]] == [("hello", "ok"), ("", "error")]


def test_a_timeout_exits_124_with_the_partial_reply_printed_and_saved(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    late = BackendTimeout("the reply took longer than the 1 s limit", "total", 1.0)
    scripted.enqueue(Scripted("one two ", error=late))
    r = cli("ask", "--timeout", "1", "count")
    assert (r.exit_code, r.stdout) == (124, "one two \n")
    assert r.stderr == "error: timed out: the reply took longer than the 1 s limit\n"
    [snap] = sessions(user_dirs)
    assert snap["messages"][1]["content"] == "one two "
    assert snap["messages"][1]["status"] == "timeout"


def test_a_reply_cut_at_the_token_limit_exits_0_with_a_notice(cli: CLI, scripted: ScriptedBackend) -> None:
    scripted.enqueue(Scripted("a long", finish_reason="length"))
    r = cli("ask", "-v", "--max-tokens", "2", "go on")
    assert (r.exit_code, r.stdout) == (0, "a long\n")
    assert r.stderr.splitlines()[0] == (
        "the reply was cut at the token limit (finish reason: length; --max-tokens sets it)"
    )
    assert scripted.requests[0].params.max_tokens == 2


# -- files in the message -----------------------------------------------------------------------------------
def test_files_go_first_fenced_with_their_path(
    cli: CLI,
    scripted: ScriptedBackend,
    user_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "plan.md").write_text("# Plan\n\n```py\nprint(1)\n```\n")
    (tmp_path / "notes.txt").write_text("no newline at the end")
    monkeypatch.chdir(tmp_path)
    scripted.enqueue("Looks fine.")
    assert cli("ask", "-f", "plan.md", "-f", "notes.txt", "review", input=b"piped\n").ok == "Looks fine.\n"
    sent = scripted.requests[0].messages[-1]["content"]
    assert sent == (
        "File `plan.md`:\n````\n# Plan\n\n```py\nprint(1)\n```\n````\n\n"
        "File `notes.txt`:\n```\nno newline at the end\n```\n\n"
        "piped\n\nreview"
    )
    [snap] = sessions(user_dirs)
    assert snap["messages"][0]["content"] == sent
    # history shows each file folded to one line
    out = cli("resume", snap["id"], input="history\n").ok
    lines = [line.rstrip() for line in out.splitlines()]
    assert "[file plan.md: 5 lines]" in lines and "[file notes.txt: 1 line]" in lines
    assert "print(1)" not in out


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "not a text file"),
        (lambda p: p.write_bytes(b"caf\xe9\n"), "not a text file"),
        (lambda p: p.write_bytes(b"x" * (MAX_FILE_BYTES + 1)), "too large"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: None, "no such file"),
    ],
    ids=["binary", "not-utf8", "huge", "folder", "missing"],
)
def test_a_file_that_cannot_go_in_sends_nothing(
    cli: CLI,
    scripted: ScriptedBackend,
    user_dirs: dict[str, Path],
    tmp_path: Path,
    make: object,
    said: str,
) -> None:
    target = tmp_path / "input.bin"
    make(target)  # type: ignore[operator]
    line = cli("ask", "-f", str(target), "describe it").error(2)
    assert said in line and str(target) in line and "nothing was sent" in line
    assert scripted.requests == [] and sessions(user_dirs) == []


# -- the sessions folder ------------------------------------------------------------------------------------
def test_a_sessions_folder_chatcli_creates_is_ignored_by_git(
    cli: CLI, user_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("ask", "hello").exit_code == 0
    assert (user_dirs["sessions"] / ".gitignore").read_text().splitlines()[-1] == "*"
    # a folder that was already there is left as it was
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README").write_text("my sessions\n")
    monkeypatch.setenv("CHATCLI_SESSIONS_DIR", str(mine))
    assert cli("ask", "hello").exit_code == 0
    assert [p.name for p in mine.iterdir() if not p.name.startswith(".") and p.suffix != ".json"] == [
        "README"
    ]
    assert len(list(mine.glob("*.json"))) == 1
    assert not (mine / ".gitignore").exists()


def test_reading_an_absent_folder_creates_nothing_and_says_where_sessions_are(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHATCLI_SESSIONS_DIR")  # the default: ./sessions
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    for args in (["list"], ["resume", "last"], ["search", "x"]):
        cli(*args)
    assert list(work.iterdir()) == []
    line = cli("resume", "last").error(1)
    assert str(work / "sessions") in line and "--store" in line and "store =" in line


# -- what needs a real process: connections, signals, a terminal ----------------------------------------------
def test_an_unreachable_server_exits_1(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = ask(child_env, None, "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "hello")
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot connect" in one_error_line(r)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_reply_keeps_what_came(
    child_env: dict[str, str],
    fake_llm: FakeLLMServer,
    user_dirs: dict[str, Path],
    signum: int,
    status: int,
) -> None:
    fake_llm.enqueue(Reply(text="first second third", stall_after=1))
    proc = subprocess.Popen(
        ask_command(fake_llm, "go"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
    )
    assert proc.stdout is not None
    assert os.read(proc.stdout.fileno(), 100) == b"first "  # the first token, printed as it came
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == status, err
    assert b"Traceback" not in err
    [snap] = sessions(user_dirs)
    assert snap["messages"][1]["content"] == "first "
    assert snap["messages"][1]["status"] == "interrupted"


def test_at_a_terminal_a_failed_turn_is_still_one_line_on_stderr(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    import pty

    fake_llm.enqueue(Reply(status=401, error_message="Incorrect API key provided"))
    fake_llm.enqueue(Reply(text="fine"))
    outputs = []
    for _ in range(2):
        master, slave = pty.openpty()  # stderr is a terminal (notices on), stdout a pipe
        proc = subprocess.Popen(
            ask_command(fake_llm, "hi"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=child_env,
        )
        os.close(slave)
        out, _ = proc.communicate(timeout=30)
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
        os.close(master)
        outputs.append((proc.returncode, out.decode(), err.decode().replace("\r", "")))
    (code, out, err), (code2, out2, err2) = outputs
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]  # one line (wrapped at most)
    assert "401" in err and "chatcli resume" not in err
    assert code2 == 0 and out2 == "fine\n" and "chatcli resume " in err2  # a good turn says where it is


# -- models and completion ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "path"), [("openai", "/v1"), ("ollama", "")])
def test_models_lists_what_the_server_offers(
    child_env: dict[str, str], fake_llm: FakeLLMServer, backend: str, path: str
) -> None:
    base = ["models", "--backend", backend, "--base-url", fake_llm.url + path]
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", *base], capture_output=True, text=True, env=child_env
    )
    assert r.returncode == 0, r.stderr
    details = {"owned_by": "openai", "created": 1677610602} if backend == "openai" else {}
    # Unix seconds are shown as a date, not as a number with thousands separators
    assert r.stdout == ("fake-model  (owned_by openai, created 2023-02-28)\n" if details else "fake-model\n")
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", *base, "--json"], capture_output=True, text=True, env=child_env
    )
    assert json.loads(r.stdout) == [{"name": "fake-model", **details}]


def test_models_on_an_unreachable_server_is_one_line(child_env: dict[str, str]) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatcli",
            "models",
            "--backend",
            "ollama",
            "--base-url",
            "http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        env=child_env,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot connect" in one_error_line(r)


def test_completion_script_and_the_completions_it_asks_for(child_env: dict[str, str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "completion", "bash"], capture_output=True, text=True, env=child_env
    )
    assert r.returncode == 0
    assert "_CHATCLI_COMPLETE=complete_bash" in r.stdout and "complete -o" in r.stdout
    # what the script's function runs when Tab is pressed after `chatcli as`
    env = dict(child_env, _CHATCLI_COMPLETE="complete_bash", COMP_WORDS="chatcli as", COMP_CWORD="1")
    r = subprocess.run([sys.executable, "-m", "chatcli"], capture_output=True, text=True, env=env)
    assert r.stdout.split() == ["ask"]
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "completion", "tcsh"], capture_output=True, text=True, env=child_env
    )
    assert r.returncode == 2 and "bash, zsh, fish" in one_error_line(r)
