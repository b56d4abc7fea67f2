"""Running a model's tool calls (chatcli/tools.py) on a real MCP server (tests/mcp_test_server.py): what runs,
what is refused without running, approval by pattern, by the user and "always", timeouts and Ctrl-C."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from chatcli.mcp_client import MCPServers, ToolSpec
from chatcli.model import ToolCallPart
from chatcli.tools import MAX_ARGUMENT_BYTES, Answer, ToolRunner
from chatcli.wire import MAX_RESULT_CHARS, sent_result

HERE = Path(__file__).parent


def call(name: str, arguments: Any = None, ident: str = "c1") -> ToolCallPart:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCallPart(ident, name, text)


class Asked:
    """An ``ask`` that answers as told and records what it was asked."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, c: ToolCallPart, spec: ToolSpec, arguments: dict[str, Any]) -> Answer:
        self.asked.append((f"{spec.server}.{spec.name}", arguments))
        return self.answers.pop(0)


def test_the_tools_are_offered_as_functions(own: MCPServers) -> None:
    names = [f["function"]["name"] for f in ToolRunner(own).functions()]
    assert {"echo", "slow", "fail", "huge", "escapes", "crash"} <= set(names)


def test_an_approved_call_runs_and_its_result_goes_back(own: MCPServers) -> None:
    r = ToolRunner(own, approve=["own.*"])
    got = r.run(call("echo", {"text": "héllo"}), ask=None)
    assert (got.call_id, got.text, got.is_error) == ("c1", "héllo", False)
    assert got.raw["content"][0]["text"] == "héllo"


def test_the_user_is_asked_and_always_holds_for_the_session(own: MCPServers) -> None:
    r = ToolRunner(own, approve=["other.*"])
    asked = Asked("no", "always")
    refused = r.run(call("echo", {"text": "a"}), asked)
    assert refused.is_error and "refused" in refused.text
    assert r.run(call("echo", {"text": "b"}), asked).text == "b"
    assert r.run(call("echo", {"text": "c"}), asked).text == "c"  # not asked again
    assert asked.asked == [("own.echo", {"text": "a"}), ("own.echo", {"text": "b"})]
    once = Asked("yes")
    assert r.run(call("huge", {"lines": 2}), once).text == "line 0\nline 1"
    assert r.run(call("huge", {"lines": 1}), Asked("no")).is_error  # "yes" was for that call only


def test_without_a_terminal_an_unapproved_call_is_refused_with_how_to_allow_it(own: MCPServers) -> None:
    got = ToolRunner(own).run(call("echo", {"text": "x"}), ask=None)
    assert got.is_error and "--approve own.echo" in got.text


@pytest.mark.parametrize(
    ("the_call", "said"),
    [
        (call("no_such_tool", {}), "no tool named 'no_such_tool'"),
        (call("echo", "{not json"), "not valid JSON"),
        (call("echo", "[1, 2]"), "must be a JSON object, not list"),
        (call("echo", {"text": "x" * MAX_ARGUMENT_BYTES}), "more than the 65,536"),
    ],
)
def test_calls_that_cannot_run_are_error_results_and_nobody_is_asked(
    own: MCPServers, the_call: ToolCallPart, said: str
) -> None:
    asked = Asked("yes")
    got = ToolRunner(own).run(the_call, asked)
    assert got.is_error and said in got.text and got.raw is None
    assert asked.asked == []


def test_empty_arguments_are_no_arguments(own: MCPServers) -> None:
    assert "plain" in ToolRunner(own, approve=["own.escapes"]).run(call("escapes", ""), None).text


def test_a_slow_tool_times_out_and_ctrl_c_cancels_a_call(own: MCPServers) -> None:
    r = ToolRunner(own, approve=["own.*"], timeout=1)
    late = r.run(call("slow", {"seconds": 3}), None)
    assert late.is_error and "did not answer within 1 s" in late.text
    r.timeout = 30
    timer = threading.Timer(0.5, lambda: signal.raise_signal(signal.SIGINT))
    timer.start()
    cancelled = r.run(call("slow", {"seconds": 3}), None)
    assert cancelled.is_error and "cancelled" in cancelled.text
    assert r.run(call("echo", {"text": "after"}), None).text == "after"  # the server goes on (once free)


def test_a_long_result_is_kept_whole_and_cut_when_sent(own: MCPServers) -> None:
    got = ToolRunner(own, approve=["own.huge"]).run(call("huge", {"lines": 5000}), None)
    assert len(got.text) > MAX_RESULT_CHARS
    sent = sent_result(got.text)
    assert sent.startswith(got.text[:MAX_RESULT_CHARS]) and f"of {len(got.text):,} characters sent" in sent
    assert sent_result("short") == "short"
