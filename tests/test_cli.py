"""The command line as a user runs it: ``python -m chatcli ...`` in a child process, stdin piped (the REPL
then reads plain lines and quits at EOF), against the fake model server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatcli import __version__
from chatcli.stores.folder import FolderStore

from fakellm import FakeLLMServer, Reply

ID_RE = re.compile(r"\d{8}-\d{6}-[0-9a-z]{4}")


def run(
    env: dict[str, str], *args: str, stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def new_session(env: dict[str, str], llm: FakeLLMServer, text: str = "hello\n", *extra: str) -> str:
    """Run ``chatcli new`` against the fake server with ``text`` on stdin; return the new session's id."""
    r = run(env, "new", "--backend", "openai", "--base-url", f"{llm.url}/v1", *extra, stdin=text)
    assert r.returncode == 0, r.stderr
    m = re.search(r"New session (\S+)", r.stdout)
    assert m, r.stdout
    return m.group(1)


def snapshot(user_dirs: dict[str, Path], sid: str) -> dict:
    return json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())


def assert_one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- version and help ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(child_env: dict[str, str], flag: str) -> None:
    r = run(child_env, flag)
    assert r.returncode == 0
    assert r.stdout.strip() == f"chatcli {__version__}"
    assert r.stderr == ""


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ([], ["--resume", "--version", "--sessions-dir", "new", "resume", "list"]),
        (
            ["new"],
            [
                "--backend",
                "--model",
                "--base-url",
                "--system",
                "--title",
                "--temperature",
                "--max-tokens",
                "--timeout",
                "--sessions-dir",
                "--model-path",
            ],
        ),
        (["resume"], ["ID", "--sessions-dir", "--timeout", "--base-url", "--model-path"]),
        (["list"], ["--json", "--limit", "--sessions-dir"]),
    ],
)
def test_help(child_env: dict[str, str], args: list[str], options: list[str]) -> None:
    r = run(child_env, *args, "--help")
    assert r.returncode == 0, r.stderr
    for option in options:
        assert option in r.stdout, f"{option} missing from `chatcli {' '.join(args)} --help`"
    assert "Traceback" not in r.stdout + r.stderr


def test_no_arguments_prints_help(child_env: dict[str, str]) -> None:
    r = run(child_env)
    assert r.returncode == 0
    assert "resume" in r.stdout and "list" in r.stdout


# -- list -------------------------------------------------------------------------------------------------
def test_list_empty(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    r = run(child_env, "list")
    assert r.returncode == 0, r.stderr
    assert "No sessions yet" in r.stdout
    r = run(child_env, "list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    assert not list(user_dirs["sessions"].glob("*.json"))


def test_new_then_list_and_list_json(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    first = new_session(child_env, fake_llm, "hello\n")
    second = new_session(child_env, fake_llm, "second chat\nand more\n")
    assert first != second

    r = run(child_env, "list")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    rows = [ln for ln in lines if ID_RE.search(ln)]
    assert [ID_RE.search(ln).group(0) for ln in rows] == [second, first]  # newest first
    assert "hello" in rows[1] and "second chat" in rows[0]
    assert "openai/gpt-4o-mini" in rows[0]
    assert re.search(r"\b2\b", rows[0].split("gpt-4o-mini", 1)[1])  # two turns
    assert re.search(r"\b1\b", rows[1].split("gpt-4o-mini", 1)[1])

    r = run(child_env, "list", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [d["id"] for d in data] == [second, first]
    one = data[1]
    assert one["title"] == "hello"
    assert (one["backend"], one["model"], one["turns"], one["messages"]) == ("openai", "gpt-4o-mini", 1, 2)
    assert Path(one["location"]) == user_dirs["sessions"] / f"{first}.json"
    assert data[0]["turns"] == 2 and data[0]["messages"] == 4
    assert set(one) >= {"created_at", "updated_at"}

    r = run(child_env, "list", "--json", "--limit", "1")
    assert [d["id"] for d in json.loads(r.stdout)] == [second]

    snap = snapshot(user_dirs, first)
    assert [(m["role"], m["content"], m["status"]) for m in snap["messages"]] == [
        ("user", "hello", "ok"),
        ("assistant", "Echo: hello", "ok"),
    ]


def test_list_reports_damaged_file_and_still_lists_good_ones(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    good = new_session(child_env, fake_llm)
    bad = user_dirs["sessions"] / "20200101-000000-dead.json"
    bad.write_text('{"format": "chatcli.session", "version": 1, "id": "20200101-000000-de')  # truncated

    r = run(child_env, "list")
    assert r.returncode == 0, r.stderr
    assert good in r.stdout
    assert "20200101-000000-dead" not in r.stdout
    assert str(bad) in r.stderr
    assert "damaged" in r.stderr
    assert "Traceback" not in r.stderr

    r = run(child_env, "list", "--json")
    assert r.returncode == 0
    assert [d["id"] for d in json.loads(r.stdout)] == [good]
    assert str(bad) in r.stderr


# -- resume ---------------------------------------------------------------------------------------------
def test_resume_unknown_id(child_env: dict[str, str], fake_llm: FakeLLMServer) -> None:
    sid = new_session(child_env, fake_llm)
    r = run(child_env, "resume", "20000101-000000-zzzz")
    line = assert_one_line_error(r)
    assert r.returncode == 1
    assert "no session '20000101-000000-zzzz'" in line
    assert sid in line  # says what exists


def test_resume_when_there_are_no_sessions(child_env: dict[str, str]) -> None:
    for ref in ("last", "abc"):
        r = run(child_env, "resume", ref)
        line = assert_one_line_error(r)
        assert "no sessions" in line


def test_resume_ambiguous_prefix(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    store = FolderStore(user_dirs["sessions"])
    base = json.loads(json.dumps(_minimal_snapshot("x")))
    for sid in ("20250101-120000-aaaa", "20250101-120000-aaab"):
        base["id"] = sid
        store.save(base)
    r = run(child_env, "resume", "20250101-120000-aa")
    line = assert_one_line_error(r)
    assert r.returncode == 1
    assert "matches 2 sessions" in line
    assert "20250101-120000-aaaa" in line and "20250101-120000-aaab" in line


@pytest.mark.parametrize("ref", ["../etc", "../../etc/passwd", "/etc/passwd", "a/b"])
def test_resume_hostile_id(
    child_env: dict[str, str], fake_llm: FakeLLMServer, ref: str, user_dirs: dict[str, Path]
) -> None:
    new_session(child_env, fake_llm)
    before = sorted(p.name for p in user_dirs["sessions"].parent.rglob("*"))
    r = run(child_env, "resume", ref)
    line = assert_one_line_error(r)
    assert r.returncode == 2
    assert "is not a session id" in line
    assert sorted(p.name for p in user_dirs["sessions"].parent.rglob("*")) == before  # nothing created


def test_resume_last_sends_whole_context(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    sid = new_session(child_env, fake_llm, "hello\nhow are you\n")
    assert len(fake_llm.requests) == 2

    r = run(child_env, "resume", "last", stdin="and now?\n")
    assert r.returncode == 0, r.stderr
    assert f"Resumed session {sid}" in r.stdout
    out = r.stdout
    # the history comes before the new reply, in order
    positions = [out.index(s) for s in ("hello", "Echo: hello", "how are you", "Echo: how are you")]
    assert positions == sorted(positions)
    assert out.index("Echo: how are you") < out.index("Echo: and now?")
    assert f"chatcli resume {sid}" in out  # the hint on the way out

    assert len(fake_llm.requests) == 3
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert sent == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Echo: hello"},
        {"role": "user", "content": "how are you"},
        {"role": "assistant", "content": "Echo: how are you"},
        {"role": "user", "content": "and now?"},
    ]
    assert fake_llm.requests[-1]["json"]["model"] == "gpt-4o-mini"
    assert len(snapshot(user_dirs, sid)["messages"]) == 6


def test_resume_option_works_like_resume_command(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    sid = new_session(child_env, fake_llm, "first\n")
    new_session(child_env, fake_llm, "other\n")  # so `last` would be the wrong one
    for args in (["--resume", sid], ["-r", sid[:-1]]):
        r = run(child_env, *args, stdin="more\n")
        assert r.returncode == 0, r.stderr
        assert f"Resumed session {sid}" in r.stdout
        assert "Echo: first" in r.stdout
        assert fake_llm.requests[-1]["json"]["messages"][0] == {"role": "user", "content": "first"}
    assert [m["content"] for m in snapshot(user_dirs, sid)["messages"] if m["role"] == "user"] == [
        "first",
        "more",
        "more",
    ]

    r = run(child_env, "--resume", "20000101-000000-zzzz")
    assert_one_line_error(r)
    r = run(child_env, "--resume", sid, "list")
    assert r.returncode == 2
    assert "cannot be combined" in r.stderr


# -- errors ---------------------------------------------------------------------------------------------
def test_unreachable_server_keeps_the_message(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    port = closed_port()
    r = run(
        child_env,
        "new",
        "--backend",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        stdin="are you there?\n",
    )
    assert r.returncode == 1, r.stderr  # the REPL reports the error and goes on; EOF quits, saying it failed
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert (
        len(errors) == 2
        and errors[1] == "error: 1 of 1 turn failed (turn 1); every message is kept in the session"
    )
    assert errors[0].startswith("error: cannot connect to")
    assert f"127.0.0.1:{port}" in errors[0] and "your message is saved" in errors[0]

    sid = re.search(r"New session (\S+)", r.stdout).group(1)
    msgs = snapshot(user_dirs, sid)["messages"]
    assert msgs[0]["role"] == "user" and msgs[0]["content"] == "are you there?"
    assert msgs[1]["role"] == "assistant" and msgs[1]["status"] == "error"
    assert "cannot connect" in msgs[1]["error"]


def test_bad_config_file(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    cfg = user_dirs["config"]
    cfg.parent.mkdir(parents=True)
    cfg.write_text("backend = 'openai'\nthis is not toml\n")
    for args in (["list"], ["new"], ["resume", "last"]):
        r = run(child_env, *args)
        assert r.returncode == 2, (args, r.stderr)
        line = assert_one_line_error(r)
        assert str(cfg) in line and "TOML" in line

    cfg.write_text("colour = 'blue'\n")
    r = run(child_env, "list")
    assert r.returncode == 2
    assert str(cfg) in r.stderr and "colour" in r.stderr

    cfg.write_text("temperature = 'hot'\n")
    r = run(child_env, "list")
    assert r.returncode == 2
    assert str(cfg) in r.stderr and "temperature" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "5"],
        ["--temperature", "-1"],
        ["--timeout", "0"],
        ["--backend", "gpt"],
        ["--base-url", "ftp://x"],
    ],
)
def test_bad_flag_values(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path], args: list[str]
) -> None:
    extra = [] if "--backend" in args else ["--backend", "openai"]
    extra += [] if "--base-url" in args else ["--base-url", f"{fake_llm.url}/v1"]
    r = run(child_env, "new", *extra, *args, stdin="hello\n")
    assert r.returncode == 2, r.stderr
    line = assert_one_line_error(r)
    assert args[0].lstrip("-").replace("-", " ").split()[0] in line.lower()
    assert not fake_llm.requests
    assert not (user_dirs["sessions"].exists() and list(user_dirs["sessions"].glob("*.json")))


def test_bad_title_rejected(child_env: dict[str, str], fake_llm: FakeLLMServer) -> None:
    r = run(child_env, "new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1", "--title", "a\x1bb")
    assert r.returncode == 2
    assert "title" in assert_one_line_error(r)


def test_no_color_output_has_no_escape_bytes(child_env: dict[str, str], fake_llm: FakeLLMServer) -> None:
    child_env["NO_COLOR"] = "1"
    child_env["TERM"] = "xterm-256color"
    # Markdown plus an escape sequence a hostile model might send: neither may reach the output raw.
    fake_llm.enqueue(Reply(text="Some **bold** text \x1b[31mred\x1b[0m and `code`."))
    outputs = []
    r = run(
        child_env,
        "new",
        "--backend",
        "openai",
        "--base-url",
        f"{fake_llm.url}/v1",
        stdin="hello\nstats\nhistory\nhelp\n/nope\n",
    )
    assert r.returncode == 0, r.stderr
    outputs.append(r)
    outputs.append(run(child_env, "list"))
    outputs.append(run(child_env, "resume", "nope"))
    outputs.append(run(child_env, "--help"))
    for r in outputs:
        assert "\x1b" not in r.stdout, r.stdout
        assert "\x1b" not in r.stderr, r.stderr
    assert "text red and" in outputs[0].stdout  # the model's escape sequence was dropped, its text kept
    assert "turns" in outputs[0].stdout and "unknown command /nope" in outputs[0].stderr


def test_api_key_never_written(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    canary = "sk-canary-7f3a9c2e41d8b605"
    child_env["OPENAI_API_KEY"] = canary
    sid = new_session(child_env, fake_llm, "hello\nsecond\n")
    r = run(child_env, "resume", sid, stdin="third\n")
    assert r.returncode == 0, r.stderr
    r = run(
        child_env,
        "new",
        "--backend",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{closed_port()}/v1",
        stdin="unreachable\n",
    )
    assert r.returncode == 1  # the turn failed: a piped REPL exits 1

    # the key was used: the server saw it on every request
    assert len(fake_llm.requests) == 3
    assert all(req["headers"].get("authorization") == f"Bearer {canary}" for req in fake_llm.requests)
    files = [
        p
        for d in (user_dirs["sessions"], user_dirs["state"])
        if d.exists()
        for p in d.rglob("*")
        if p.is_file()
    ]
    assert any(p.suffix == ".json" for p in files)
    for p in files:
        assert canary.encode() not in p.read_bytes(), f"the API key was written to {p}"
    for out in (r.stdout, r.stderr):
        assert canary not in out


def test_credentials_in_base_url_are_not_saved(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    secret = "pw-canary-55e1"
    url = fake_llm.url.replace("http://", f"http://user:{secret}@") + "/v1"
    r = run(child_env, "new", "--backend", "openai", "--base-url", url, stdin="hello\n")
    assert r.returncode == 0, r.stderr
    assert "Echo: hello" in r.stdout
    snap_files = list(user_dirs["sessions"].glob("*.json"))
    assert len(snap_files) == 1
    data = json.loads(snap_files[0].read_text())
    assert data["base_url"] == f"{fake_llm.url}/v1"
    for p in user_dirs["sessions"].rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes()
    assert secret not in r.stdout + r.stderr


def _minimal_snapshot(sid: str) -> dict:
    return {
        "format": "chatcli.session",
        "version": 1,
        "id": sid,
        "title": "t",
        "created_at": "2025-01-01T12:00:00.000Z",
        "updated_at": "2025-01-01T12:00:00.000Z",
        "backend": "openai",
        "model": "m",
        "base_url": "http://127.0.0.1:1/v1",
        "params": {},
        "system": "",
        "messages": [],
        "context_start": 0,
    }
