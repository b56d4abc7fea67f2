"""Server faults through the fake server, against a real chatcli REPL fed by a pipe, for both wire
protocols: every fault the issue names, one after another in one session, each followed by a normal turn.

For each fault: exactly one `error:` line that says what happened (none when a bounded retry succeeds),
the user's message and whatever part of the reply arrived are on disk with the right status, and the
REPL goes on: the next turn is answered, saved, and sent with the whole context, the faulty turn included.
Connection refused and an unknown host are run as their own sessions, then resumed against a live server.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fakellm import FakeLLMServer, Reply, last_user_text
from torturelib import Chat, Turns, add, chatcli_args, figure, load_checked

IDLE = 0.6  # idle_timeout of these sessions, seconds
TOTAL = 4.0  # whole-turn timeout (--timeout), seconds
CASE = "server faults"
TOKENS = [f"w{i} " for i in range(8)]


@dataclass
class Fault:
    name: str
    replies: list[Reply]
    error: str | None  # a regex the one error line matches; None: the turn succeeds after retries
    status: str = "error"  # the reply's status on disk
    partial: str = ""  # the reply text kept
    requests: int = 1  # requests the server gets for this turn
    protocols: tuple[str, ...] = ("openai", "ollama")
    min_seconds: float = 0.0  # a backoff that must have been waited
    notices: list[str] = field(default_factory=list)


FAULTS = [
    Fault("401 bad key", [Reply(status=401, error_message="Invalid API key")], r"\(401\)"),
    Fault("unknown model (404)", [Reply(status=404, error_message="model 'nope' not found")], r"\(404\)"),
    Fault(
        "429 then ok (Retry-After: 0)",
        [Reply(status=429, headers={"Retry-After": "0"})],
        None,
        status="ok",
        requests=2,
        notices=["retrying in 0 s"],
    ),
    Fault(
        "429 twice, backoff 1 s then 2 s",
        [Reply(status=429), Reply(status=429)],
        None,
        status="ok",
        requests=3,
        protocols=("openai",),
        min_seconds=3.0,
        notices=["retrying in 1 s", "retrying in 2 s"],
    ),
    Fault(
        "429 past the retry limit",
        [Reply(status=429, headers={"Retry-After": "0"})] * 3,
        r"\(429\)",
        requests=3,
    ),
    Fault("429 with a long Retry-After", [Reply(status=429, headers={"Retry-After": "3600"})], r"\(429\)"),
    Fault("500", [Reply(status=500, error_message="boom")], r"server error \(500\)"),
    Fault("503", [Reply(status=503, error_message="Loading model")], r"server error \(503\)"),
    Fault(
        "malformed chunk", [Reply(tokens=TOKENS, malformed_after=3)], "malformed", partial="".join(TOKENS[:3])
    ),
    Fault(
        "error inside the stream",
        [Reply(tokens=TOKENS, error_after=3, error_message="overloaded")],
        "error during the reply",
        partial="".join(TOKENS[:3]),
    ),
    Fault(
        "stream cut before its end",
        [Reply(tokens=TOKENS, cut_after=3)],
        "before it was complete|closed in the middle of the reply",
        partial="".join(TOKENS[:3]),
    ),
    Fault(
        "stall past the idle timeout",
        [Reply(tokens=TOKENS, stall_after=3, stall_seconds=4 * IDLE)],
        "idle timeout",
        status="timeout",
        partial="".join(TOKENS[:3]),
    ),
    Fault(
        "trickle past the whole-turn deadline",
        [Reply(tokens=[f"t{i} " for i in range(60)], delay_each=0.1)],
        "longer than",
        status="timeout",
    ),
    Fault(
        "a 200 that is not a stream",
        [Reply(headers={"Content-Type": "application/json"})],
        "did not answer with a stream",
        protocols=("openai",),
    ),
]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_for(protocol: str, base: str) -> str:
    return f"{base}/v1" if protocol == "openai" else base


@pytest.fixture
def timeouts_config(user_dirs: dict[str, Path]) -> None:
    cfg = user_dirs["config"]
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"idle_timeout = {IDLE}\nconnect_timeout = 2\n")


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_every_server_fault_is_one_message_and_the_repl_goes_on(
    protocol: str,
    child_env: dict[str, str],
    fake_llm: FakeLLMServer,
    user_dirs: dict[str, Path],
    timeouts_config: None,
) -> None:
    chat = Chat(
        chatcli_args(
            "new",
            "--backend",
            protocol,
            "--base-url",
            url_for(protocol, fake_llm.url),
            "--model",
            "fake-model",
            "--timeout",
            str(TOTAL),
        ),
        child_env,
    )
    m = chat.wait_for(re.compile(rb"New session ([0-9a-z-]+)"), 20)
    assert m is not None and not isinstance(m, int), chat.text("err")
    sid = m.group(1).decode()
    turns = Turns(chat)
    faults = [f for f in FAULTS if protocol in f.protocols]
    for f in faults:
        fake_llm.enqueue(*f.replies)
        before = len(fake_llm.requests)
        started = time.monotonic()
        out, err = turns.turn(f"fault: {f.name}")
        took = time.monotonic() - started
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        if f.error is None:
            assert errors == [], f"{f.name}: {err}"
            assert "Echo: fault: " + f.name in out
        else:
            assert len(errors) == 1, f"{f.name}: expected one error line, got {err!r}"
            assert re.search(f.error, errors[0]), f"{f.name}: {errors[0]!r}"
            assert "your message is saved" in errors[0], errors[0]
            assert "Traceback" not in out + err
        for n in f.notices:
            assert n in err, f"{f.name}: no notice {n!r} in {err!r}"  # notices go to stderr
        assert len(fake_llm.requests) - before == f.requests, (
            f"{f.name}: {len(fake_llm.requests) - before} requests"
        )
        assert took >= f.min_seconds, f"{f.name}: the backoff was not waited ({took:.2f} s)"
        # the REPL goes on: the next turn is answered and carries the faulty turn in its context
        out, err = turns.turn(f"after: {f.name}")
        assert "Echo: after: " + f.name in out and not err.strip(), err
        last = fake_llm.requests[-1]["json"]
        assert any(m.get("content") == f"fault: {f.name}" for m in last["messages"]), f.name
        add(CASE, f"{protocol}: faults", 1)
    chat.close_stdin()
    assert chat.wait() == 1, chat.text("err")  # turns failed: a piped REPL exits 1
    msgs = load_checked(user_dirs["sessions"], sid)["messages"]
    by_user = {
        msgs[i]["content"]: msgs[i + 1]
        for i in range(len(msgs) - 1)
        if msgs[i]["role"] == "user" and msgs[i + 1]["role"] == "assistant"
    }
    for f in faults:
        reply = by_user.get(f"fault: {f.name}")
        assert reply is not None, f"{f.name}: no reply kept"
        assert reply["status"] == f.status, f"{f.name}: status {reply['status']}"
        if f.status == "timeout" and not f.partial:
            assert reply["content"].startswith("t0 t1 "), f"{f.name}: {reply['content']!r}"
        elif f.status != "ok":
            assert reply["content"] == f.partial, f"{f.name}: {reply['content']!r}"
        if f.status != "ok":
            assert f.error is not None and reply.get("error"), f.name
        assert by_user[f"after: {f.name}"]["status"] == "ok"
    figure(CASE, f"{protocol}: each followed by a good turn", len(faults))


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
@pytest.mark.parametrize("where", ["connection refused", "unknown host"])
def test_unreachable_server_keeps_the_messages_and_resume_goes_on(
    protocol: str,
    where: str,
    child_env: dict[str, str],
    fake_llm: FakeLLMServer,
    user_dirs: dict[str, Path],
    timeouts_config: None,
) -> None:
    bad = (
        f"http://127.0.0.1:{closed_port()}" if where == "connection refused" else "http://nonexistent.invalid"
    )
    chat = Chat(
        chatcli_args(
            "new", "--backend", protocol, "--base-url", url_for(protocol, bad), "--model", "fake-model"
        ),
        child_env,
    )
    m = chat.wait_for(re.compile(rb"New session ([0-9a-z-]+)"), 20)
    assert m is not None and not isinstance(m, int), chat.text("err")
    sid = m.group(1).decode()
    turns = Turns(chat)
    expect = "Connection refused" if where == "connection refused" else "unknown host"
    for text in ("first while down", "second while down"):
        out, err = turns.turn(text)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and expect in errors[0] and "your message is saved" in errors[0], err
    chat.close_stdin()
    assert chat.wait() == 1  # both turns failed
    # the server is back (or the user gives the right address): the conversation goes on, whole
    chat = Chat(chatcli_args("resume", sid, "--base-url", url_for(protocol, fake_llm.url)), child_env)
    turns = Turns(chat)
    out, err = turns.turn("now it answers")
    assert "Echo: now it answers" in out and not err.strip(), err
    users = [m["content"] for m in fake_llm.requests[-1]["json"]["messages"] if m.get("role") == "user"]
    assert users == ["first while down", "second while down", "now it answers"]
    chat.close_stdin()
    assert chat.wait() == 0
    msgs = load_checked(user_dirs["sessions"], sid)["messages"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == users
    assert [m["status"] for m in msgs if m["role"] == "assistant"] == ["error", "error", "ok"]
    add(CASE, f"{protocol}: faults", 1)
    figure(CASE, f"{where}: turns kept, then resumed", "yes")
    assert last_user_text(fake_llm.requests[-1]["json"]) == "now it answers"
