"""``chatcli ask`` as scripts run it: a child process with stdin, stdout and stderr piped, against the fake
model server on 127.0.0.1. Also ``models``, ``completion`` and the sessions folder's ``.gitignore``."""

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

from fakellm import FakeLLMServer, Reply


def ask(
    env: dict[str, str],
    llm: FakeLLMServer | None,
    *args: str,
    stdin: bytes | None = b"",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``chatcli ask ARGS`` on the fake server's OpenAI-compatible endpoint; ``stdin=None`` leaves the
    child no stdin at all (as `< /dev/null` would not: that is an empty pipe-like file)."""
    where = ["--backend", "openai", "--base-url", f"{llm.url}/v1"] if llm is not None else []
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "ask", *where, *args],
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
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    reply = "# Summary\n\n**Two** notes, `one` link:  kept as typed."
    fake_llm.enqueue(Reply(text=reply))
    r = ask(child_env, fake_llm, "summarise", "this", stdin=b"note one\nnote two\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == reply + "\n"  # the model's text exactly: no rendering, no wrapping, no escapes
    assert r.stderr == ""  # stderr is not a terminal and -v was not given: no notices
    sent = fake_llm.requests[0]["json"]
    assert sent["messages"][-1] == {"role": "user", "content": "note one\nnote two\n\nsummarise this"}
    [snap] = sessions(user_dirs)
    assert contents(snap) == [("user", "note one\nnote two\n\nsummarise this"), ("assistant", reply)]
    assert snap["title"] == "summarise this"  # the prompt, not the piped text, names it


def test_no_prompt_and_nothing_piped_is_a_usage_error(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    r = ask(child_env, fake_llm, stdin=b"")
    assert r.returncode == 2
    assert "give a prompt" in one_error_line(r)
    assert r.stdout == "" and fake_llm.requests == [] and sessions(user_dirs) == []


def test_text_that_is_not_utf8_is_cleaned_not_an_error(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    r = ask(child_env, fake_llm, "what is this", stdin=b"caf\xe9 \xff\xfe ok\n")
    assert r.returncode == 0, r.stderr
    [snap] = sessions(user_dirs)
    assert snap["messages"][0]["content"] == "caf\ufffd \ufffd\ufffd ok\n\nwhat is this"


def test_continue_and_session_go_on_with_a_saved_session(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    assert ask(child_env, fake_llm, "first question").returncode == 0
    assert ask(child_env, fake_llm, "other session").returncode == 0
    time.sleep(0.01)
    [first, other] = sorted(sessions(user_dirs), key=lambda s: s["messages"][0]["content"])
    # -c is the most recently *updated* session: make the first one that by going on with it by id
    r = ask(child_env, fake_llm, "--session", first["id"], "second question")
    assert r.returncode == 0, r.stderr
    r = ask(child_env, fake_llm, "-c", "shorter")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Echo: shorter\n"
    sent = [(m["role"], m["content"]) for m in fake_llm.requests[-1]["json"]["messages"]]
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
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", "last"],
        input="history\n",
        capture_output=True,
        text=True,
        env=child_env,
        timeout=30,
    )
    assert first["id"] in r.stdout and "second question" in r.stdout and "Echo: shorter" in r.stdout


def test_continue_with_no_sessions_says_so(child_env: dict[str, str], fake_llm: FakeLLMServer) -> None:
    r = ask(child_env, fake_llm, "-c", "hello")
    assert r.returncode == 1
    assert "no sessions" in one_error_line(r)
    assert fake_llm.requests == []


def test_json_gives_the_reply_and_what_came_with_it(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    fake_llm.enqueue(Reply(text="Forty-two.", usage=(11, 3, 0)))
    r = ask(child_env, fake_llm, "--json", "the answer?")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {
        "reply",
        "status",
        "finish_reason",
        "model",
        "usage",
        "timings",
        "context",
        "session_id",
    }
    assert out["reply"] == "Forty-two."
    assert out["status"] == "ok" and out["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 11 and out["usage"]["completion_tokens"] == 3
    assert out["timings"]["ttft_s"] >= 0
    [snap] = sessions(user_dirs)
    assert out["session_id"] == snap["id"]


def test_no_save_writes_nothing(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    r = ask(child_env, fake_llm, "--no-save", "--json", "a throwaway question")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["session_id"] is None
    assert not user_dirs["sessions"].exists()
    # and with -c: the last session is read, sent as context, and left as it was
    assert ask(child_env, fake_llm, "kept").returncode == 0
    [before] = sessions(user_dirs)
    r = ask(child_env, fake_llm, "--no-save", "-c", "not kept")
    assert r.returncode == 0, r.stderr
    assert [m["content"] for m in fake_llm.requests[-1]["json"]["messages"]] == [
        "kept",
        "Echo: kept",
        "not kept",
    ]
    assert sessions(user_dirs) == [before]


def test_verbose_says_where_the_session_is(child_env: dict[str, str], fake_llm: FakeLLMServer) -> None:
    r = ask(child_env, fake_llm, "-v", "hello")
    assert r.returncode == 0
    assert r.stdout == "Echo: hello\n"
    assert "chatcli resume " in r.stderr


# -- exit statuses ------------------------------------------------------------------------------------------
def test_a_bad_key_exits_1_with_one_line_and_nothing_on_stdout(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    fake_llm.enqueue(
        Reply(status=401, error_message="Incorrect API key provided", error_type="invalid_request_error")
    )
    r = ask(child_env, fake_llm, "hello")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "401" in one_error_line(r) or "key" in one_error_line(r).lower()
    [snap] = sessions(user_dirs)  # the message is kept, ready for a retry
    assert snap["messages"][0]["content"] == "hello"


def test_an_unreachable_server_exits_1(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = ask(child_env, None, "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "hello")
    assert r.returncode == 1 and r.stdout == ""
    assert "cannot connect" in one_error_line(r)


def test_a_timeout_exits_124_with_the_partial_reply_printed_and_saved(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    fake_llm.enqueue(Reply(text="one two three four", stall_after=2))
    r = ask(child_env, fake_llm, "--timeout", "1", "count")
    assert r.returncode == 124, r.stderr
    assert r.stdout == "one two \n"
    assert "timed out" in one_error_line(r)
    [snap] = sessions(user_dirs)
    assert snap["messages"][1]["content"] == "one two "
    assert snap["messages"][1]["status"] == "timeout"


def test_a_reply_cut_at_the_token_limit_exits_0_with_a_notice(
    child_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue(Reply(text="a long", finish_reason="length"))
    r = ask(child_env, fake_llm, "-v", "--max-tokens", "2", "go on")
    assert r.returncode == 0
    assert r.stdout == "a long\n"
    assert "token limit" in r.stderr
    assert fake_llm.requests[0]["json"]["max_tokens"] == 2


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
        [
            sys.executable,
            "-m",
            "chatcli",
            "ask",
            "--backend",
            "openai",
            "--base-url",
            f"{fake_llm.url}/v1",
            "go",
        ],
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


# -- files in the message -----------------------------------------------------------------------------------
def test_files_go_first_fenced_with_their_path(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "plan.md").write_text("# Plan\n\n```py\nprint(1)\n```\n")
    (tmp_path / "notes.txt").write_text("no newline at the end")
    fake_llm.enqueue(Reply(text="Looks fine."))
    r = ask(child_env, fake_llm, "-f", "plan.md", "-f", "notes.txt", "review", stdin=b"piped\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sent = fake_llm.requests[0]["json"]["messages"][-1]["content"]
    assert sent == (
        "File `plan.md`:\n````\n# Plan\n\n```py\nprint(1)\n```\n````\n\n"
        "File `notes.txt`:\n```\nno newline at the end\n```\n\n"
        "piped\n\nreview"
    )
    [snap] = sessions(user_dirs)
    assert snap["messages"][0]["content"] == sent
    # history shows each file folded to one line
    r2 = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", snap["id"]],
        input="history\n",
        capture_output=True,
        text=True,
        env=child_env,
        timeout=30,
    )
    lines = [line.rstrip() for line in r2.stdout.splitlines()]
    assert "[file plan.md: 5 lines]" in lines and "[file notes.txt: 1 line]" in lines
    assert "print(1)" not in r2.stdout


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
    child_env: dict[str, str],
    fake_llm: FakeLLMServer,
    user_dirs: dict[str, Path],
    tmp_path: Path,
    make: object,
    said: str,
) -> None:
    target = tmp_path / "input.bin"
    make(target)  # type: ignore[operator]
    r = ask(child_env, fake_llm, "-f", str(target), "describe it")
    assert r.returncode == 2
    line = one_error_line(r)
    assert said in line and str(target) in line and "nothing was sent" in line
    assert r.stdout == "" and fake_llm.requests == [] and sessions(user_dirs) == []


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
    assert r.stdout.split() == ["fake-model"]
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", *base, "--json"], capture_output=True, text=True, env=child_env
    )
    assert json.loads(r.stdout) == [{"name": "fake-model"}]


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


# -- the sessions folder ------------------------------------------------------------------------------------
def test_a_sessions_folder_chatcli_creates_is_ignored_by_git(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    assert ask(child_env, fake_llm, "hello").returncode == 0
    assert (user_dirs["sessions"] / ".gitignore").read_text().splitlines()[-1] == "*"
    # a folder that was already there is left as it was
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README").write_text("my sessions\n")
    env = dict(child_env, CHATCLI_SESSIONS_DIR=str(mine))
    assert ask(env, fake_llm, "hello").returncode == 0
    assert [p.name for p in mine.iterdir() if not p.name.startswith(".") and p.suffix != ".json"] == [
        "README"
    ]
    assert not (mine / ".gitignore").exists()


def test_reading_an_absent_folder_creates_nothing_and_says_where_sessions_are(
    child_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in child_env.items() if k != "CHATCLI_SESSIONS_DIR"}  # the default: ./sessions
    work = tmp_path / "project"
    work.mkdir()
    for args in (["list"], ["resume", "last"], ["search", "x"]):
        subprocess.run([sys.executable, "-m", "chatcli", *args], capture_output=True, env=env, cwd=work)
    assert list(work.iterdir()) == []
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "resume", "last"], capture_output=True, text=True, env=env, cwd=work
    )
    assert r.returncode == 1
    line = one_error_line(r)
    assert str(work / "sessions") in line and "--store" in line and "store =" in line


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
            [
                sys.executable,
                "-m",
                "chatcli",
                "ask",
                "--backend",
                "openai",
                "--base-url",
                f"{fake_llm.url}/v1",
                "hi",
            ],
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
