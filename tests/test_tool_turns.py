"""Turns with tool rounds (chatcli/tool_rounds.py): a model on the fake server (tests/fakellm.py) calls the
tools of a real MCP server (tests/mcp_test_server.py); every call, result and reply is saved in the store as
it happens, on every engine, and every request is one the server accepts (it refuses unpaired calls)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli.backends.ollama import OllamaBackend
from chatcli.backends.openai import OpenAIBackend
from chatcli.mcp_client import MCPServers, ToolSpec
from chatcli.messages import Timeouts
from chatcli.model import ToolCallPart, ToolResultPart
from chatcli.session import ConversationSession, Sinks
from chatcli.stores import open_store, parse_store
from chatcli.tools import Answer, ToolRunner
from chatcli.wire import UNANSWERED

from fakellm import FakeLLMServer, Reply

HERE = Path(__file__).parent


@pytest.fixture
def opened() -> Iterator[list[ConversationSession]]:
    """Sessions a test opened, closed at teardown, then their stores."""
    sessions: list[ConversationSession] = []
    yield sessions
    for session in sessions:
        session.close()
    for session in sessions:
        session.store.close()


def loaded(spec: str) -> Any:
    """The store at ``spec`` opened afresh (another connection: as another machine would), its sessions'
    messages by id."""
    st = open_store(parse_store(spec), timeout=10)
    try:
        return {sid: st.load(sid).to_json()["messages"] for sid in st.ids()}
    finally:
        st.close()


def session_on(
    shape: str, llm: FakeLLMServer, spec: str, runner: ToolRunner, opened: list[ConversationSession]
) -> ConversationSession:
    store = open_store(parse_store(spec), timeout=10)
    backend: OpenAIBackend | OllamaBackend
    backend = (
        OpenAIBackend(f"{llm.url}/v1", "fake-model")
        if shape == "openai"
        else OllamaBackend(llm.url, "fake-model")
    )
    s = ConversationSession.create(store, backend, model="fake-model")
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=20.0)
    s.tools = runner
    opened.append(s)
    return s


def shapes(s: ConversationSession) -> list[tuple[str, list[str]]]:
    return [(m.role, [p.type for p in m.parts]) for m in s.messages]


@pytest.mark.parametrize("shape", ["openai", "ollama"])
def test_a_call_runs_its_result_goes_back_and_everything_is_saved(
    shape: str, fake_llm: FakeLLMServer, own: MCPServers, store_spec: str, opened: list[ConversationSession]
) -> None:
    s = session_on(shape, fake_llm, store_spec, ToolRunner(own, approve=["own.*"]), opened)
    saved_before_sent: list[list[str]] = []
    fake_llm.on_request = lambda record: saved_before_sent.append(
        [m["role"] for m in loaded(store_spec)[s.id]]
    )
    fake_llm.enqueue(
        Reply(text="Let me ask.", tool_calls=[("echo", '{"text": "pong"}'), ("echo", '{"text": "again"}')]),
        Reply(text="The tool said pong and again."),
    )
    done: list[tuple[str, str]] = []
    reply = s.send("ping?", sinks=Sinks(done=lambda c, r: done.append((c.name, r.text))))
    assert reply.content == "The tool said pong and again." and reply.status == "ok"
    assert shapes(s) == [
        ("user", ["text"]),
        ("assistant", ["text", "tool_call", "tool_call"]),
        ("tool", ["tool_result", "tool_result"]),
        ("assistant", ["text"]),
    ]
    assert done == [("echo", "pong"), ("echo", "again")]
    assert saved_before_sent == [["user"], ["user", "assistant", "tool"]]  # results saved before sent
    calls = s.messages[1].tool_calls
    sent = fake_llm.requests[1]["json"]["messages"]
    if shape == "openai":
        assert [m.get("tool_call_id") for m in sent if m["role"] == "tool"] == [c.id for c in calls]
    else:
        assert [m.get("tool_name") for m in sent if m["role"] == "tool"] == ["echo", "echo"]
    assert loaded(store_spec)[s.id] == s.conv.to_json()["messages"]  # as another machine reads it
    results = s.messages[2].parts
    assert all(isinstance(r, ToolResultPart) and r.duration_s is not None for r in results)
    stats = s.stats()
    assert stats.tool_calls == {"echo": 2} and stats.tool_failures == 0
    assert stats.tool_seconds == sum(r.duration_s or 0 for r in results if isinstance(r, ToolResultPart))


class Asked:
    def __init__(self, *answers: Answer | BaseException) -> None:
        self.answers = list(answers)
        self.shown: list[tuple[str, dict[str, Any]]] = []

    def show(self, call: ToolCallPart, spec: ToolSpec, arguments: dict[str, Any]) -> None:
        self.shown.append((f"{spec.server}.{spec.name}", arguments))

    def __call__(self, call: ToolCallPart, spec: ToolSpec, arguments: dict[str, Any]) -> Answer:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_a_refused_call_goes_back_as_a_refusal(
    fake_llm: FakeLLMServer, own: MCPServers, tmp_path: Path, opened: list[ConversationSession]
) -> None:
    s = session_on("openai", fake_llm, str(tmp_path / "s"), ToolRunner(own), opened)
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "x"}')]), Reply(text="Understood."))
    asked = Asked("no")
    s.send("try it", sinks=Sinks(ask=asked, shown=asked.show))
    assert asked.shown == [("own.echo", {"text": "x"})]  # shown before the question
    [result] = s.messages[2].parts
    assert isinstance(result, ToolResultPart) and result.is_error and "refused" in result.text
    assert fake_llm.requests[1]["json"]["messages"][-1]["content"] == result.text


def test_rounds_stop_at_max_tool_rounds_with_a_notice(
    fake_llm: FakeLLMServer, own: MCPServers, tmp_path: Path, opened: list[ConversationSession]
) -> None:
    s = session_on(
        "openai", fake_llm, str(tmp_path / "s"), ToolRunner(own, approve=["own.*"], max_rounds=3), opened
    )
    fake_llm.enqueue(*[Reply(text="", tool_calls=[("echo", '{"text": "loop"}')]) for _ in range(5)])
    notices: list[str] = []
    reply = s.send("go", sinks=Sinks(notice=notices.append))
    assert len(fake_llm.requests) == 3 and reply.tool_calls  # the third reply's call is not run
    assert any("stopped after 3 requests" in n for n in notices)
    fake_llm.enqueue(Reply(text="fine"))
    assert s.send("and now?").content == "fine"  # the unrun call is answered as not run
    assert UNANSWERED in str(fake_llm.requests[-1]["json"]["messages"])


def test_ctrl_c_at_the_question_stops_the_turn_and_the_next_one_is_accepted(
    fake_llm: FakeLLMServer, own: MCPServers, tmp_path: Path, opened: list[ConversationSession]
) -> None:
    spec = str(tmp_path / "s")
    s = session_on("openai", fake_llm, spec, ToolRunner(own, approve=["own.echo"]), opened)
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "ran"}'), ("huge", '{"lines": 3}')]))
    reply = s.send("two calls", sinks=Sinks(ask=Asked(KeyboardInterrupt())))
    assert reply.tool_calls and len(fake_llm.requests) == 1  # no request after the stop
    assert shapes(s)[-1] == ("tool", ["tool_result"])  # the first call ran and was kept
    sid = s.id
    s.close()
    s.store.close()
    opened.remove(s)
    resumed = ConversationSession.resume(open_store(parse_store(spec), timeout=10), sid)
    resumed.backend = OpenAIBackend(f"{fake_llm.url}/v1", "fake-model")
    opened.append(resumed)
    fake_llm.enqueue(Reply(text="ok then"))
    assert resumed.send("never mind").content == "ok then"  # nothing ran by itself, the server took it
    sent = fake_llm.requests[-1]["json"]["messages"]
    results = [m["content"] for m in sent if m["role"] == "tool"]
    assert results == ["ran", UNANSWERED]


def test_retry_and_undo_take_a_turn_with_tool_rounds_as_one(
    fake_llm: FakeLLMServer, own: MCPServers, tmp_path: Path, opened: list[ConversationSession]
) -> None:
    s = session_on("openai", fake_llm, str(tmp_path / "s"), ToolRunner(own, approve=["own.*"]), opened)
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "a"}')]), Reply(text="first answer"))
    s.send("question")
    fake_llm.enqueue(Reply(text="second answer"))
    assert s.retry().content == "second answer"
    assert [m.dropped for m in s.messages] == [None, "retried", "retried", "retried", None]
    assert [m["role"] for m in fake_llm.requests[-1]["json"]["messages"]] == ["user"]  # no unpaired call
    s.undo()
    assert all(m.dropped is not None for m in s.messages)


def test_a_fork_keeps_a_turn_with_tool_rounds_whole_and_its_requests_are_accepted(
    fake_llm: FakeLLMServer, own: MCPServers, store_spec: str, opened: list[ConversationSession]
) -> None:
    from chatcli.library import fork

    s = session_on("openai", fake_llm, store_spec, ToolRunner(own, approve=["own.*"]), opened)
    s.header.tools = ["own"]
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "one"}')]), Reply(text="first"))
    s.send("turn one")
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "two"}')]), Reply(text="second"))
    s.send("turn two")
    new = fork(s.store, s.store.load(s.id), 1)
    forked = loaded(store_spec)[new]
    assert [m["role"] for m in forked] == ["user", "assistant", "tool", "assistant"]
    assert forked == s.conv.to_json()["messages"][:4]  # the first turn whole: call, result, reply
    resumed = ConversationSession.resume(open_store(parse_store(store_spec), timeout=10), new)
    resumed.backend = OpenAIBackend(f"{fake_llm.url}/v1", "fake-model")
    resumed.tools = ToolRunner(own, approve=["own.*"])
    opened.append(resumed)
    assert resumed.header.tools == ["own"]  # the fork keeps the session's servers
    fake_llm.enqueue(Reply(text="", tool_calls=[("echo", '{"text": "three"}')]), Reply(text="branch"))
    assert resumed.send("another turn two").content == "branch"
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert [m["role"] for m in sent] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
    ]
    assert [m["content"] for m in sent if m["role"] == "tool"] == ["one", "three"]


def test_a_turn_whose_rounds_outgrow_the_window_sends_its_newest_rounds_then_stops(
    fake_llm: FakeLLMServer, own: MCPServers, store_spec: str, opened: list[ConversationSession]
) -> None:
    s = session_on("openai", fake_llm, store_spec, ToolRunner(own, approve=["own.*"]), opened)
    s.planner.window_setting = 2000  # tokens: 1,500 once the reply's room is kept; a result below is ~1,150
    big = ("huge", '{"lines": 400}')
    fake_llm.enqueue(Reply(text="", tool_calls=[big]), Reply(text="", tool_calls=[big]), Reply(text="done"))
    notices: list[str] = []
    assert s.send("read it all", sinks=Sinks(notice=notices.append)).content == "done"
    third = fake_llm.requests[2]["json"]["messages"]
    assert [m["role"] for m in third] == ["user", "assistant", "tool"]  # the first round left out
    assert (
        third[1]["tool_calls"][0]["id"] == s.messages[3].tool_calls[0].id
        and third[0]["content"] == "read it all"
    )
    assert notices == [
        "1 earlier tool round of this turn not sent (context 2,000 tokens); it stays in the session"
    ]
    assert s.messages[-1].context is not None and s.messages[-1].context.rounds_from == 3
    assert loaded(store_spec)[s.id][-1]["context"]["rounds_from"] == 3
    # a round that cannot fit even alone ends the turn with a notice; the turn is kept, and not "unsent"
    fake_llm.enqueue(Reply(text="", tool_calls=[("huge", '{"lines": 900}')]))
    notices.clear()
    reply = s.send("now more", sinks=Sinks(notice=notices.append))
    assert reply.tool_calls and len(fake_llm.requests) == 4
    assert [n for n in notices if "no longer fit" in n] and all(m.dropped is None for m in s.messages)
    assert s.messages[-1].role == "tool"
    fake_llm.enqueue(Reply(text="next"))
    assert s.send("something small").content == "next"  # the large turn is left out as an earlier turn
    assert [m["role"] for m in fake_llm.requests[-1]["json"]["messages"]][-1] == "user"
