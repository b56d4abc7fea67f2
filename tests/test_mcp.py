"""MCP servers as tool sources (chatcli/mcp_client.py), with real servers in processes of their own: the
reference ``mcp-server-time`` and ``mcp-server-git`` from PyPI, and the tests' own server
(tests/mcp_test_server.py) for the ways a server fails: slow, raising, crashing mid-call, noisy on stderr,
a command that does not exist."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli.errors import ConfigError
from chatcli.mcp_client import MCPServers, ServerConfig

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def tool_command(name: str) -> str:
    """A server's command from the venv the tests run in (never a silent skip: a missing one fails)."""
    found = BIN / name
    assert found.exists() or shutil.which(name), f"{name} is not installed: make install installs it"
    return str(found) if found.exists() else str(shutil.which(name))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[MCPServers]]:
    made: list[MCPServers] = []
    yield made
    for s in made:
        s.close()


def started(made: list[MCPServers], tmp_path: Path, *configs: ServerConfig) -> MCPServers:
    s = MCPServers(list(configs), tmp_path / "logs", start_timeout=20)
    made.append(s)
    s.start()
    s.wait_ready(30)
    return s


TIME = ServerConfig("time", command="mcp-server-time", args=("--local-timezone", "UTC"))
OWN = ServerConfig("own", command=sys.executable, args=(str(HERE / "mcp_test_server.py"),))


def test_the_time_server_lists_its_tools_and_answers(
    servers: list[MCPServers], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    time_server = ServerConfig("time", command=tool_command("mcp-server-time"), args=TIME.args)
    s = started(servers, tmp_path, time_server)
    assert s.states["time"].state == "ready", s.states["time"].error
    tools = {t.name: t for t in s.tools()}
    assert {"get_current_time", "convert_time"} <= set(tools)
    spec = tools["get_current_time"].function()
    assert spec["type"] == "function" and spec["function"]["parameters"]["required"] == ["timezone"]
    got = s.call("time", "get_current_time", {"timezone": "Asia/Tokyo"}, timeout=20)
    assert not got.is_error and '"timezone": "Asia/Tokyo"' in got.text
    assert got.raw["structuredContent"]["timezone"] == "Asia/Tokyo"
    bad = s.call("time", "get_current_time", {"timezone": "Mars/Olympus"}, timeout=20)
    assert bad.is_error and "Mars/Olympus" in bad.text
    unknown = s.call("time", "no_such_tool", {}, timeout=20)
    assert unknown.is_error and "no_such_tool" in unknown.text and unknown.raw is None
    assert capfd.readouterr().err == ""  # nothing of the server on the screen


def test_the_git_server_works_on_a_repository(servers: list[MCPServers], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notes.txt").write_text("hello\n")
    git = ServerConfig("git", command=tool_command("mcp-server-git"), args=("--repository", str(repo)))
    s = started(servers, tmp_path, git)
    assert s.states["git"].state == "ready", s.states["git"].error
    assert "git_status" in {t.name for t in s.tools()}
    got = s.call("git", "git_status", {"repo_path": str(repo)}, timeout=20)
    assert not got.is_error and "notes.txt" in got.text


def test_a_server_that_cannot_start_fails_alone(
    servers: list[MCPServers], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = ServerConfig("missing", command="/nonexistent/mcp-server")
    s = started(servers, tmp_path, missing, OWN)
    assert s.states["missing"].state == "failed" and "/nonexistent/mcp-server" in (
        s.states["missing"].error or ""
    )
    assert s.states["own"].state == "ready"
    assert [t.server for t in s.tools()] == ["own"] * len(s.tools()) and s.tools()
    gone = s.call("missing", "anything", {}, timeout=5)
    assert gone.is_error and "not available" in gone.text
    assert capfd.readouterr().err == ""
    assert "this is stderr" in (tmp_path / "logs" / "own.log").read_text()  # its stderr went to its log


def test_slow_failing_and_odd_tools_are_outcomes_not_exceptions(
    servers: list[MCPServers], tmp_path: Path
) -> None:
    s = started(servers, tmp_path, OWN)
    assert s.call("own", "echo", {"text": "héllo"}, timeout=10).text == "héllo"
    t0 = time.monotonic()
    slow = s.call("own", "slow", {"seconds": 30}, timeout=1)
    assert slow.is_error and "1 s" in slow.text and time.monotonic() - t0 < 10
    failed = s.call("own", "fail", {"why": "disk on fire"}, timeout=10)
    assert failed.is_error and "disk on fire" in failed.text
    assert s.call("own", "huge", {"lines": 5000}, timeout=10).text.count("\n") == 4999
    assert "\x1b" in s.call("own", "escapes", {}, timeout=10).text  # kept raw: sanitised when shown
    assert s.call("own", "echo", {"text": "still here"}, timeout=10).text == "still here"


def test_a_server_that_dies_mid_call_is_an_error_then_failed(
    servers: list[MCPServers], tmp_path: Path
) -> None:
    s = started(servers, tmp_path, OWN)
    crashed = s.call("own", "crash", {}, timeout=10)
    assert crashed.is_error
    deadline = time.monotonic() + 10
    while s.states["own"].state == "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.states["own"].state in ("failed", "stopped")
    assert s.call("own", "echo", {"text": "x"}, timeout=5).is_error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """The tests' own server over streamable HTTP behind the bearer token "sesame"; its URL."""
    port = free_port()
    logged = tmp_path / "http-server.log"
    with open(logged, "wb") as log:
        cmd = [sys.executable, str(HERE / "mcp_test_server.py"), "--http", str(port), "sesame"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, logged.read_text()
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_streamable_http_server_is_reached_with_its_headers(
    servers: list[MCPServers], tmp_path: Path, http_server: str
) -> None:
    good = ServerConfig.from_table("web", {"url": http_server, "headers": {"Authorization": "Bearer sesame"}})
    bad = ServerConfig.from_table(
        "locked", {"url": http_server, "headers": {"Authorization": "Bearer wrong"}}
    )
    s = started(servers, tmp_path, good, bad)
    assert s.states["web"].state == "ready", s.states["web"].error
    assert {t.name for t in s.tools() if t.server == "web"} >= {"echo", "slow", "huge"}
    assert s.call("web", "echo", {"text": "over http"}, timeout=10).text == "over http"
    failed = s.call("web", "fail", {"why": "no luck"}, timeout=10)
    assert failed.is_error and "no luck" in failed.text
    assert s.states["locked"].state == "failed" and "401" in (s.states["locked"].error or "")
    assert "\n" not in (s.states["locked"].error or "")  # one line


def test_close_stops_the_server_processes(tmp_path: Path) -> None:
    s = MCPServers([OWN], tmp_path / "logs")
    s.start()
    s.wait_ready(30)
    assert s.states["own"].state == "ready"
    s.close()
    assert s.states["own"].state == "stopped"
    s.close()  # twice is harmless


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ("not a table", "mcp.servers.x must be a table"),
        ({}, "needs either command"),
        ({"command": "a", "url": "http://h"}, "needs either command"),
        ({"command": 3}, "mcp.servers.x.command must be a string"),
        ({"command": "a", "args": ["ok", 2]}, "mcp.servers.x.args must be a list of strings"),
        ({"command": "a", "env": {"K": 1}}, "mcp.servers.x.env must be a table of strings"),
        ({"command": "a", "comand": "b"}, "mcp.servers.x.comand is not a server setting"),
    ],
)
def test_a_mistyped_server_entry_is_one_line_naming_the_key(table: object, said: str) -> None:
    with pytest.raises(ConfigError) as e:
        ServerConfig.from_table("x", table)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_server_entry_in_the_conventional_keys() -> None:
    c = ServerConfig.from_table(
        "time", {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"], "env": {"TZ": "UTC"}}
    )
    assert (c.command, c.args, dict(c.env), c.url) == (
        "mcp-server-time",
        ("--local-timezone", "UTC"),
        {"TZ": "UTC"},
        None,
    )
    h = ServerConfig.from_table(
        "web", {"url": "http://127.0.0.1:1/mcp", "headers": {"Authorization": "Bearer x"}}
    )
    assert (h.url, dict(h.headers), h.command) == (
        "http://127.0.0.1:1/mcp",
        {"Authorization": "Bearer x"},
        None,
    )


def test_chatcli_tools_lists_the_servers_and_their_tools(
    child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    cfg = user_dirs["config"]
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        f'[mcp.servers.time]\ncommand = "{tool_command("mcp-server-time")}"\n'
        '[mcp.servers.gone]\ncommand = "/nonexistent/server"\n'
    )
    cmd = [sys.executable, "-m", "chatcli", "tools"]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=child_env, timeout=60)
    assert r.returncode == 1, r.stderr  # one is not available
    import json

    listed = {s["name"]: s for s in json.loads(r.stdout)}
    assert listed["time"]["state"] == "ready" and listed["gone"]["state"] == "failed"
    assert "get_current_time" in {t["name"] for t in listed["time"]["tools"]}
    r = subprocess.run([*cmd, "--tools", "time"], capture_output=True, text=True, env=child_env, timeout=60)
    assert r.returncode == 0 and "time ready" in r.stdout and "convert_time" in r.stdout
    r = subprocess.run([*cmd, "--tools", "nope"], capture_output=True, text=True, env=child_env, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no MCP server named 'nope'" in r.stderr


def test_without_the_sdk_each_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # (import mcp raises ImportError, as without the extra)
    with MCPServers([OWN], tmp_path / "logs") as s:
        s.start()
        s.wait_ready(10)
        assert s.states["own"].state == "failed"
        assert "pip install 'chatcli[tools]'" in (s.states["own"].error or "")
