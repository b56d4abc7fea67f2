"""Tools in the REPL, through a pseudo-terminal: a model on the fake server (tests/fakellm.py) calls the
tools of real MCP servers configured as a user would (``[mcp.servers.NAME]``): the call is shown, asked
about (yes, no, always), run, its result shown folded; a SIGKILL at the question loses nothing and runs
nothing; ``resume`` shows the call, offers the tools again, and the next request is accepted; on a folder and
on a real PostgreSQL, where another home's ``show --json`` and ``export --format jsonl`` see every call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fakellm import FakeLLMServer, Reply
from ptyproc import Chat, start

HERE = Path(__file__).parent
TIME = Path(sys.executable).parent / "mcp-server-time"


def configure(user_dirs: dict[str, Path]) -> None:
    cfg = user_dirs["config"]
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        f'[mcp.servers.time]\ncommand = "{TIME}"\nargs = ["--local-timezone", "UTC"]\n'
        f'[mcp.servers.own]\ncommand = "{sys.executable}"\nargs = ["{HERE / "mcp_test_server.py"}"]\n'
    )


TOKYO = ("get_current_time", '{"timezone": "Asia/Tokyo"}')


def test_a_call_is_shown_asked_about_and_answered(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    configure(user_dirs)
    args = ["new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1", "--tools", "time,own"]
    c, _ = start(chats, pty_env, *args)
    fake_llm.enqueue(Reply(text="Let me look.", tool_calls=[TOKYO]), Reply(text="It is tomorrow in Tokyo."))
    c.send("what time is it in Tokyo?")
    c.expect("time.get_current_time")
    c.expect("Asia/Tokyo")
    c.expect(r"Run it\?")
    c.send("y")
    out = c.expect("It is tomorrow in Tokyo.")
    assert '"day_of_week"' in out and "more line" in out  # the result, folded
    c.expect_prompt()
    assert "tools" in fake_llm.requests[0]["json"]
    assert fake_llm.requests[1]["json"]["messages"][-1]["role"] == "tool"
    # no: the model is told; always: not asked again; escape sequences in a result are not obeyed
    fake_llm.enqueue(Reply(text="", tool_calls=[("escapes", "{}")]), Reply(text="Refused, fine."))
    c.send("show me escapes")
    c.expect(r"Run it\?")
    c.send("n")
    c.expect("Refused, fine.")
    c.expect_prompt()
    assert "refused" in fake_llm.requests[-1]["json"]["messages"][-1]["content"]
    fake_llm.enqueue(Reply(text="", tool_calls=[("escapes", "{}")]), Reply(text="one"))
    c.send("again")
    c.expect(r"Run it\?")
    c.send("a")
    out = c.expect("one")
    assert "plain" in out and "\x1b]0;owned" not in out
    fake_llm.enqueue(Reply(text="", tool_calls=[("escapes", "{}")]), Reply(text="two"))
    c.send("and again")
    out = c.expect("two")
    assert "Run it?" not in out
    out = c.command("tools", "The server dies mid-call.")
    assert "time ready" in out and "own ready" in out
    out = " ".join(c.command("stats", "last saved").split())  # (a narrow terminal folds the row)
    assert "tool calls 4 (escapes 3, get_current_time 1) · 1 failed · " in out and " s in tools" in out


@pytest.fixture(params=["folder", "postgresql"])
def on_store(request: pytest.FixtureRequest, pty_env: dict[str, str], store_for: Any) -> dict[str, str]:
    """``pty_env`` with its sessions in a folder, then on the tests' real PostgreSQL server."""
    return {**pty_env, "CHATCLI_STORE": store_for(request.param)}


def from_another_home(env: dict[str, str], tmp_path: Path, *args: str) -> str:
    """``chatcli ARGS`` run with a home and state folder of its own (another machine), its stdout."""
    other = tmp_path / "other-home"
    other.mkdir(exist_ok=True)
    env = {**env, "HOME": str(other), "CHATCLI_STATE_DIR": str(other / "state")}
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_kill_at_the_question_runs_nothing_and_resume_goes_on(
    on_store: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    pty_env = on_store
    configure(user_dirs)
    args = ["new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1", "--tools", "own"]
    c, sid = start(chats, pty_env, *args)
    fake_llm.enqueue(Reply(text="Checking.", tool_calls=[("echo", '{"text": "never"}')]))
    c.send("call it")
    c.expect(r"Run it\?")
    os.kill(c.child.pid, signal.SIGKILL)
    c.child.wait()
    c2, _ = start(chats, pty_env, "resume", sid)
    out = c2.command("history", "no result")
    assert "echo" in out and "never" in out  # the call, said to have no result: it was not run
    fake_llm.enqueue(Reply(text="All right."))
    c2.send("forget it")
    c2.expect("All right.")
    c2.expect_prompt()
    assert "tools" in fake_llm.requests[-1]["json"]  # the recorded tools are offered again
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == [
        "the call did not run or did not finish (the turn was stopped); it has no result"
    ]
    shown = json.loads(from_another_home(pty_env, user_dirs["home"].parent, "show", sid, "--json"))
    [call] = [p for m in shown["messages"] for p in m.get("parts", []) if p["type"] == "tool_call"]
    assert call["name"] == "echo" and json.loads(call["arguments"]) == {"text": "never"}
    lines = from_another_home(pty_env, user_dirs["home"].parent, "export", sid, "--format", "jsonl")
    assert [
        x["tool_calls"][0]["function"]["name"]
        for x in map(json.loads, lines.splitlines())
        if "tool_calls" in x
    ] == ["echo"]


def test_ask_refuses_unapproved_calls_in_one_line_and_json_has_the_calls(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path]
) -> None:
    configure(user_dirs)
    cmd = [sys.executable, "-m", "chatcli", "ask", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"]

    def ask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, env=child_env, timeout=60, input=""
        )

    call = ("echo", '{"text": "pong"}')
    fake_llm.enqueue(Reply(text="", tool_calls=[call]), Reply(text="I may not."))
    r = ask("--tools", "own", "echo pong")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "I may not.\n"
    assert "--approve own.echo" in r.stderr and r.stderr.count("--approve") == 1
    fake_llm.enqueue(Reply(text="", tool_calls=[call]), Reply(text="It said pong."))
    r = ask("--tools", "own", "--approve", "own.*", "--json", "echo pong")
    out = json.loads(r.stdout)
    assert out["reply"] == "It said pong."
    assert out["tool_calls"] == [{"name": "echo", "arguments": call[1], "result": "pong", "is_error": False}]


def test_a_machine_without_the_recorded_server_goes_on_without_its_tools(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    configure(user_dirs)
    cmd = [sys.executable, "-m", "chatcli", "ask", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"]
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "x"}')]), Reply(text="Done."))
    r = subprocess.run(
        [*cmd, "--tools", "own", "--approve", "own.*", "--json", "call it"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
        input="",
    )
    sid = json.loads(r.stdout)["session_id"]
    elsewhere = {**child_env, "CHATCLI_CONFIG": str(tmp_path / "no-servers.toml")}  # another machine's config
    fake_llm.enqueue(Reply(text="Without tools."))
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "ask", "-v", "--session", sid, "and now?"],
        capture_output=True,
        text=True,
        env=elsewhere,
        timeout=60,
        input="",
    )
    assert r.returncode == 0 and r.stdout == "Without tools.\n", r.stderr
    assert "tool server own, which" in r.stderr and "going on without its tools" in r.stderr
    assert "tools" not in fake_llm.requests[-1]["json"]
    shown = json.loads(from_another_home(child_env, tmp_path, "show", sid, "--json"))
    assert shown["tools"] == ["own"]  # kept for the machines that have it
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "ask", "--tools", "own", "hi"],
        capture_output=True,
        text=True,
        env=elsewhere,
        timeout=60,
        input="",
    )
    assert r.returncode == 2 and "no MCP server named 'own'" in r.stderr  # named on purpose: an error


def test_ctrl_c_during_a_call_cancels_it_and_the_servers_live_on(
    on_store: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat], user_dirs: dict[str, Path]
) -> None:
    pty_env = on_store
    configure(user_dirs)
    args = [
        "new",
        "--backend",
        "openai",
        "--base-url",
        f"{fake_llm.url}/v1",
        "--tools",
        "own",
        "--approve",
        "own.*",
    ]
    c, sid = start(chats, pty_env, *args)
    fake_llm.enqueue(
        Reply(text="", tool_calls=[("slow", '{"seconds": 20}')]), Reply(text="Cancelled, I see.")
    )
    c.send("take your time")
    c.expect("own.slow")
    time.sleep(1.0)  # (shown just before it runs: Ctrl-C before the call starts stops the turn instead)
    c.child.sendintr()
    c.expect("Cancelled, I see.")
    c.expect_prompt()
    assert "cancelled" in fake_llm.requests[-1]["json"]["messages"][-1]["content"]
    out = c.command("tools", "The server dies mid-call.")
    assert "own ready" in out  # Ctrl-C reached chatcli, not the tool servers
    fake_llm.enqueue(Reply(text="", tool_calls=[("slow", '{"seconds": 20}')]))
    c.send("again")
    c.expect("own.slow")
    os.kill(c.child.pid, signal.SIGKILL)  # killed while the call runs
    c.child.wait()
    c2, _ = start(chats, pty_env, "resume", sid)
    fake_llm.enqueue(Reply(text="Fine."))
    c2.send("so?")
    c2.expect("Fine.")
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert sent[-2]["role"] == "tool" and "did not run" in sent[-2]["content"]
    shown = json.loads(from_another_home(pty_env, user_dirs["home"].parent, "show", sid, "--json"))
    calls = [p["name"] for m in shown["messages"] for p in m.get("parts", []) if p["type"] == "tool_call"]
    results = [p["text"] for m in shown["messages"] for p in m.get("parts", []) if p["type"] == "tool_result"]
    assert calls == ["slow", "slow"] and len(results) == 1 and "cancelled" in results[0]
