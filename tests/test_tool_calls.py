"""Tool calls on the wire: what each backend sends (``tools``) and how the calls of a reply are read back,
through a real HTTP server on 127.0.0.1 (tests/fakellm.py) in both wire shapes.

OpenAI-compatible servers send a call in pieces (``delta.tool_calls``: the first with the id and the name,
then the arguments cut anywhere, several calls interleaved by ``index``); Ollama sends each call whole with
its arguments as an object and no id. Either way the reply's parts end with one ``ToolCallPart`` per call,
in order, its arguments the JSON text the model wrote. The results go back as ``tool`` messages that the
fake server, like real ones, checks against the calls before them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcli.backends.base import ToolCallDelta
from chatcli.backends.ollama import OllamaBackend, ollama_messages
from chatcli.backends.openai import OpenAIBackend
from chatcli.context import Plan
from chatcli.errors import BackendHTTPError, StreamError
from chatcli.messages import MAX_MESSAGE_BYTES, GenerationParams, Timeouts
from chatcli.model import Message, TextPart, ToolCallPart, ToolResultPart
from chatcli.turn import ReplyParts, Turn, TurnHooks, TurnPolicy
from chatcli.wire import to_openai

from fakellm import FakeLLMServer, Reply

TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
CALLS = [
    ("get_current_time", '{"timezone": "Asia/Tokyo"}'),
    ("get_current_time", '{"timezone": "Europe/Paris", "note": "caf\\u00e9 \\"quoted\\""}'),
]


@pytest.fixture
def backend_for() -> Iterator[Callable[[str, FakeLLMServer], OpenAIBackend | OllamaBackend]]:
    """``backend_for(shape, llm)``: a backend of that wire shape on the fake server (closed at teardown)."""
    made: list[OpenAIBackend | OllamaBackend] = []

    def make(shape: str, llm: FakeLLMServer) -> OpenAIBackend | OllamaBackend:
        b: OpenAIBackend | OllamaBackend
        b = (
            OpenAIBackend(f"{llm.url}/v1", "fake-model")
            if shape == "openai"
            else OllamaBackend(llm.url, "fake-model", num_ctx=4096)
        )
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


Make = Callable[[str, FakeLLMServer], Any]


def streamed(
    backend: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> tuple[ReplyParts, str]:
    """The reply's parts as a turn joins them, and its finish reason."""
    got, finish = ReplyParts(), ""
    events = backend.stream_chat(messages, GenerationParams(), Timeouts(), time.monotonic() + 30, tools=tools)
    for event in events:
        got.add(event.reasoning, event.text)
        got.add_calls(event.tool_calls)
        finish = event.finish_reason or finish
    got.finish()
    return got, finish


@pytest.mark.parametrize("shape", ["openai", "ollama"])
def test_the_tools_are_sent_and_the_calls_read_back_in_order(
    shape: str, fake_llm: FakeLLMServer, backend_for: Make
) -> None:
    fake_llm.enqueue(Reply(text="Let me look.", tool_calls=CALLS))
    got, finish = streamed(backend_for(shape, fake_llm), [{"role": "user", "content": "time?"}], [TIME_TOOL])
    assert fake_llm.requests[0]["json"]["tools"] == [TIME_TOOL]
    text, *calls = got.parts()
    assert text == TextPart("Let me look.")
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [(n, json.loads(a)) for n, a in CALLS]
    assert all(isinstance(c, ToolCallPart) for c in calls)
    if shape == "openai":  # the server's ids, the arguments exactly as the model wrote them
        assert finish == "tool_calls"
        assert [(c.id, c.arguments) for c in calls] == [("call_0", CALLS[0][1]), ("call_1", CALLS[1][1])]
    else:  # Ollama gives no ids: each call gets one of its own, the same at every look
        assert finish == "stop"
        ids = [c.id for c in calls]
        assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
        assert [c.id for c in got.parts()[1:]] == ids


def test_no_tools_no_tools_field(fake_llm: FakeLLMServer, backend_for: Make) -> None:
    for shape in ("openai", "ollama"):
        streamed(backend_for(shape, fake_llm), [{"role": "user", "content": "hi"}], [])
    assert all("tools" not in r["json"] for r in fake_llm.requests)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    piece=st.integers(1, 9),
    arguments=st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=8)), min_size=1, max_size=3),
)
def test_arguments_cut_anywhere_join_whole(
    fake_llm: FakeLLMServer, backend_for: Make, piece: int, arguments: list[dict[str, str]]
) -> None:
    calls = [(f"tool_{k}", json.dumps(a)) for k, a in enumerate(arguments)]
    fake_llm.enqueue(Reply(text="", tool_calls=calls, tool_call_piece=piece))
    got, _ = streamed(backend_for("openai", fake_llm), [{"role": "user", "content": "go"}], [TIME_TOOL])
    assert [(c.name, c.arguments) for c in got.parts() if isinstance(c, ToolCallPart)] == calls


def test_pieces_are_joined_by_index_whatever_their_order() -> None:
    got = ReplyParts()
    got.add_calls([ToolCallDelta(1, "b", "second", '{"x"'), ToolCallDelta(0, "a", "first", "")])
    got.add_calls([ToolCallDelta(0, None, None, "{}"), ToolCallDelta(1, None, None, ": 1}")])
    assert got.parts() == [ToolCallPart("a", "first", "{}"), ToolCallPart("b", "second", '{"x": 1}')]


def test_calls_count_toward_the_size_limit() -> None:
    got = ReplyParts()
    got.add_calls([ToolCallDelta(0, "a", "big", "x" * (MAX_MESSAGE_BYTES - 10))])
    with pytest.raises(StreamError):
        got.add_calls([ToolCallDelta(0, None, None, "y" * 20)])
    assert got.parts() == [ToolCallPart("a", "big", "x" * (MAX_MESSAGE_BYTES - 10))]


@pytest.mark.parametrize("shape", ["openai", "ollama"])
def test_a_turn_keeps_the_calls_at_its_checkpoints(
    shape: str, fake_llm: FakeLLMServer, backend_for: Make
) -> None:
    fake_llm.enqueue(Reply(tokens=["Checking", " now."], delay_each=0.05, tool_calls=CALLS))
    reply = Message("assistant", status="streaming")
    seen: list[list[str]] = []
    hooks = TurnHooks(
        params_for=lambda plan: GenerationParams(),
        replan=lambda e, plan: plan,
        checkpoint=lambda: seen.append([p.type for p in reply.parts]),
        notify=lambda line: None,
    )
    policy = TurnPolicy(checkpoint_seconds=0.0, checkpoint_cost_ratio=0.0)
    plan = Plan(0, [0], [{"role": "user", "content": "time?"}], None, False, None, 0)
    Turn(backend_for(shape, fake_llm), Timeouts(), policy, hooks, tools=[TIME_TOOL]).run(reply, plan)
    assert [p.type for p in reply.parts] == ["text", "tool_call", "tool_call"] and reply.status == "ok"
    assert seen and seen[-1][-1] == "tool_call"  # a checkpoint saved the calls as they came
    assert fake_llm.requests[0]["json"]["tools"] == [TIME_TOOL]


CALLED = Message(
    "assistant",
    parts=[TextPart("Let me look."), ToolCallPart("call_0", "get_current_time", CALLS[0][1])],
)
ANSWERED = Message("tool", parts=[ToolResultPart("call_0", '{"timezone": "Asia/Tokyo", "datetime": "…"}')])


@pytest.mark.parametrize("shape", ["openai", "ollama"])
def test_results_go_back_as_each_server_takes_them(
    shape: str, fake_llm: FakeLLMServer, backend_for: Make
) -> None:
    backend = backend_for(shape, fake_llm)
    history = to_openai([Message("user", "time in Tokyo?"), CALLED, ANSWERED])
    fake_llm.enqueue(Reply(text="It is morning in Tokyo."))
    got, _ = streamed(backend, history, [TIME_TOOL])
    assert got.parts() == [TextPart("It is morning in Tokyo.")]
    sent = fake_llm.requests[-1]["json"]["messages"]
    if shape == "openai":
        assert sent[2] == {"role": "tool", "tool_call_id": "call_0", "content": ANSWERED.parts[0].text}
    else:
        assert sent[1]["tool_calls"] == [
            {"function": {"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}}
        ]
        assert sent[2] == {"role": "tool", "content": ANSWERED.parts[0].text, "tool_name": "get_current_time"}


@pytest.mark.parametrize("shape", ["openai", "ollama"])
def test_a_call_without_its_result_is_refused_by_the_server(
    shape: str, fake_llm: FakeLLMServer, backend_for: Make
) -> None:
    history = to_openai([Message("user", "time in Tokyo?"), CALLED, Message("user", "well?")])
    with pytest.raises(BackendHTTPError) as e:
        streamed(backend_for(shape, fake_llm), history, [TIME_TOOL])
    said = str(e.value)
    assert e.value.status == 400 and ("call_0" in said or "get_current_time" in said), said


def test_ollama_messages_name_the_tool_of_each_result() -> None:
    sent = ollama_messages(to_openai([CALLED, ANSWERED]))
    assert sent[1] == {"role": "tool", "content": ANSWERED.parts[0].text, "tool_name": "get_current_time"}
