"""The command line as a user runs it where a real process matters: ``python -m chatcli ...`` in a child
process, stdin piped (the REPL then reads plain lines and quits at EOF), against the fake model server on
127.0.0.1 or a closed port: the start-up shortcut for ``--version``, connection errors, what the real
backend sends and records (the API key, credentials in the URL). The rest of the command line and the REPL
runs in-process on a scripted model: test_transcripts.py."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatcli import __version__

from fakellm import FakeLLMServer


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


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- install ---------------------------------------------------------------------------------------------
def test_the_editable_install_of_make_install_prints_nothing(tmp_path: Path) -> None:
    """``make install``'s ``pip install --quiet -e .``, with chatcli's own build backend (the test extra has
    it, so no network is needed), into a folder of its own: nothing is printed (setuptools printed a
    warning box here), and the install points at the source folder."""
    import shutil

    root, src = Path(__file__).parent.parent, tmp_path / "src"
    shutil.copytree(root / "chatcli", src / "chatcli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, src / name)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--isolated", "--disable-pip-version-check"]
    # --ignore-installed: pip would otherwise uninstall the chatcli these tests run from
    where = ["--no-build-isolation", "--no-deps", "--no-index", "--ignore-installed"]
    r = subprocess.run(
        [*pip, *where, "--prefix", str(tmp_path / "prefix"), "-e", str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    (pth,) = (tmp_path / "prefix").glob("lib/python*/site-packages/*.pth")
    assert pth.read_text().strip() == str(src)
    script = (tmp_path / "prefix" / "bin" / "chatcli").read_text()
    assert "from chatcli.cli import main" in script
    still = subprocess.run([sys.executable, "-c", "import chatcli"], cwd=tmp_path)  # the tests' own chatcli
    assert still.returncode == 0


# -- start-up -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(child_env: dict[str, str], flag: str) -> None:
    r = run(child_env, flag)
    assert r.returncode == 0
    assert r.stdout.strip() == f"chatcli {__version__}"
    assert r.stderr == ""


# -- the real backend: connections, keys, addresses -------------------------------------------------------
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
