"""Messages made of parts: the snapshot codec (text-only messages stay a plain ``content``), the OpenAI
chat format and content blocks both ways, and a session with every part type through every engine,
``migrate`` (folder -> sqlite -> postgresql -> mysql -> folder), ``export`` (snapshot, OpenAI-format JSON and
JSON Lines, Markdown) and ``import``."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli import wire
from chatcli.errors import SnapshotError
from chatcli.library import migrate
from chatcli.model import (
    Conversation,
    Message,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    part_from_json,
    part_to_json,
)
from chatcli.stores import open_store, parse_store
from chatcli.wire import from_blocks, from_openai, reasoning_rule, to_blocks, to_openai

from engines import DATABASES
from test_stores import A, B, put, snap

# -- a session with every part type --------------------------------------------------------------------------
RAW_RESULT = [
    {"type": "text", "text": "14:05 in Paris"},
    {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
]


def every_part() -> dict[str, Any]:
    """A snapshot whose messages hold every part type: a reply that reasoned and called two tools, their
    results (one an error, one with the raw MCP content), and a reply that reasoned then answered."""
    s = snap(A, title="every part", turns=[("What time is it in Paris?", "unused")])
    when = "2026-01-01T09:00:02.000Z"
    s["messages"][1] = {
        "role": "assistant",
        "parts": [
            {"type": "reasoning", "text": "The user wants the time.\nI should call the clock."},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_call", "id": "call_1", "name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
            {"type": "tool_call", "id": "call_2", "name": "get_time", "arguments": '{"tz":"Mars/Olympus"}'},
        ],
        "created_at": when,
        "status": "ok",
        "finish_reason": "tool_calls",
        "model": "fake-model",
        "usage": {"prompt_tokens": 30, "completion_tokens": 40, "cached_tokens": 0, "reasoning_tokens": 25},
    }
    s["messages"].append(
        {
            "role": "tool",
            "parts": [
                {"type": "tool_result", "call_id": "call_1", "text": "14:05 in Paris", "raw": RAW_RESULT},
                {"type": "tool_result", "call_id": "call_2", "text": "no such time zone", "is_error": True},
            ],
            "created_at": when,
            "status": "ok",
        }
    )
    s["messages"].append(
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "text": "Paris it is."},
                {"type": "text", "text": "It is 14:05."},
            ],
            "created_at": when,
            "status": "interrupted",
            "timings": {"ttft_s": 0.1, "duration_s": 0.9, "tokens_per_second": 20.0, "server": None},
        }
    )
    return s


def test_a_text_only_message_is_written_as_plain_content_and_others_as_parts() -> None:
    conv = Conversation.from_json(every_part())
    out = conv.to_json()
    assert out == every_part()  # read and written back unchanged
    assert out["messages"][0]["content"] == "What time is it in Paris?" and "parts" not in out["messages"][0]
    m = conv.messages[-1]
    assert m.content == "It is 14:05." and m.reasoning == "Paris it is."
    m.content = "It is five past two."  # a change of text keeps the reasoning where it was
    assert m.to_json()["parts"] == [
        {"type": "reasoning", "text": "Paris it is."},
        {"type": "text", "text": "It is five past two."},
    ]
    plain = Message("user", "hi")
    assert plain.to_json()["content"] == "hi" and "parts" not in plain.to_json()


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "sound", "text": "x"},
        {"type": "text"},
        {"type": "tool_call", "id": "c", "name": 3, "arguments": "{}"},
        {"type": "tool_result", "call_id": "c", "text": "x", "is_error": "yes"},
        "text",
    ],
)
def test_a_part_of_the_wrong_shape_is_a_clear_error(bad: Any) -> None:
    s = every_part()
    s["messages"][1]["parts"][0] = bad
    with pytest.raises(SnapshotError, match="is damaged: part 0 of message 1"):
        Conversation.from_json(s)


def test_a_reply_saved_while_streaming_is_read_and_written_again_as_interrupted() -> None:
    s = every_part()
    s["messages"][-1]["status"] = "streaming"  # its writer was killed mid-reply
    conv = Conversation.from_json(copy.deepcopy(s))
    assert conv.messages[-1].status == "interrupted"
    assert conv.to_json() == dict(
        s, messages=[*s["messages"][:-1], dict(s["messages"][-1], status="interrupted")]
    )


def test_a_version_1_snapshot_is_upgraded_and_a_newer_one_refused() -> None:
    v1 = dict(snap(B), version=1)
    assert Conversation.from_json(copy.deepcopy(v1)).to_json() == dict(v1, version=2)
    with pytest.raises(SnapshotError, match="newer chatcli"):
        Conversation.from_json(dict(snap(B), version=3))


# -- the OpenAI chat format and content blocks, both ways ----------------------------------------------------
def _json_text() -> st.SearchStrategy[str]:
    values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )
    return st.dictionaries(st.text(max_size=6), values, max_size=3).map(
        lambda d: json.dumps(d, separators=(",", ":"))
    )


_text = st.text(min_size=1, max_size=30)
_call = st.builds(
    ToolCallPart, st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8), _json_text()
)


@st.composite
def openai_messages(draw: st.DrawFn) -> list[Message]:
    """Messages the OpenAI form can hold: parts in its order (reasoning, text, tool calls), results
    without raw or error flag."""
    out: list[Message] = []
    for kind in draw(st.lists(st.sampled_from(["user", "system", "assistant", "tool"]), max_size=6)):
        if kind == "assistant":
            parts: list[Any] = [ReasoningPart(draw(_text))] if draw(st.booleans()) else []
            parts += [TextPart(draw(_text))] if draw(st.booleans()) else []
            parts += draw(st.lists(_call, max_size=2))
            out.append(Message("assistant", parts=parts or [TextPart("x")]))
        elif kind == "tool":
            if out and out[-1].role == "tool":  # (consecutive tool messages read back as one)
                continue
            results = draw(st.lists(st.builds(ToolResultPart, _text, _text), min_size=1, max_size=3))
            out.append(Message("tool", parts=results))
        else:
            out.append(Message(kind, draw(_text)))
    return out


def _shape(messages: list[Message]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(m.role, [part_to_json(p) for p in m.parts]) for m in messages]


@settings(max_examples=300, deadline=None)
@given(openai_messages())
def test_the_openai_chat_format_is_lossless_both_ways(messages: list[Message]) -> None:
    wire = to_openai(messages, rule=lambda m: True)  # (reasoning sent back, to see it come back)
    assert _shape(from_openai(wire)) == _shape(messages)
    assert to_openai(from_openai(wire), rule=lambda m: True) == wire


@st.composite
def any_messages(draw: st.DrawFn) -> list[Message]:
    """Messages of any parts in any order (results with raw MCP content whose text is theirs)."""
    out = []
    for role in draw(st.lists(st.sampled_from(["user", "assistant", "system", "tool"]), max_size=5)):
        if role == "tool":
            texts = draw(st.lists(_text, min_size=1, max_size=2))
            raw = draw(st.booleans())
            parts: list[Any] = [
                ToolResultPart(
                    draw(_text),
                    t,
                    [{"type": "text", "text": t}, {"type": "image", "data": "AA=="}] if raw else None,
                    draw(st.booleans()),
                )
                for t in texts
            ]
        else:
            kinds = draw(st.lists(st.sampled_from(["text", "reasoning", "call"]), min_size=1, max_size=4))
            parts = [
                TextPart(draw(_text))
                if k == "text"
                else ReasoningPart(draw(_text))
                if k == "reasoning"
                else draw(_call)
                for k in kinds
            ]
        out.append(Message(role, parts=parts))
    return out


def _as_json_values(shape: list[tuple[str, list[dict[str, Any]]]]) -> Any:
    """Tool-call arguments compared as JSON values (a content block holds them decoded)."""
    return [
        (role, [dict(p, arguments=json.loads(p["arguments"])) if "arguments" in p else p for p in parts])
        for role, parts in shape
    ]


@settings(max_examples=300, deadline=None)
@given(any_messages())
def test_content_blocks_are_lossless_both_ways(messages: list[Message]) -> None:
    blocks = to_blocks(messages)
    assert _as_json_values(_shape(from_blocks(blocks))) == _as_json_values(_shape(messages))
    assert to_blocks(from_blocks(blocks)) == blocks


def test_the_openai_form_of_the_example_session() -> None:
    conv = Conversation.from_json(every_part())
    wire = to_openai(conv.messages)
    assert wire[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"Mars/Olympus"}'},
            },
        ],
    }  # reasoning not sent back by default
    assert wire[2:4] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "14:05 in Paris"},
        {"role": "tool", "tool_call_id": "call_2", "content": "no such time zone"},
    ]
    assert to_blocks(conv.messages)[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": RAW_RESULT,
        "is_error": False,
    }


@pytest.mark.parametrize(
    ("backend", "model", "sent"),
    [
        ("openai", "deepseek-chat", True),
        ("openai", "deepseek-v4-pro", True),
        ("openai", "deepseek/deepseek-chat", True),
        ("openai", "deepseek-reasoner", False),
        ("openai", "gpt-4o-mini", False),
        ("ollama", "deepseek-r1", False),
        ("local", "SmolLM2-135M-Instruct", False),
    ],
)
def test_reasoning_goes_back_only_where_the_server_needs_it(backend: str, model: str, sent: bool) -> None:
    conv = Conversation.from_json(every_part())
    rule = reasoning_rule(backend, model)
    wire = to_openai(conv.messages, rule)
    assert ("reasoning_content" in wire[1]) is sent  # the reply that made tool calls
    assert all("reasoning_content" not in m for m in wire[4:])  # never one without tool calls


def test_parts_json_round_trip() -> None:
    for p in (
        TextPart("a"),
        ReasoningPart("b"),
        ToolCallPart("i", "n", "{}"),
        ToolResultPart("i", "t", {"x": 1}, True),
        ToolResultPart("i", "t", None, False, 1.25),
    ):
        assert part_from_json(part_to_json(p), "x", "y") == p
    assert part_to_json(ToolResultPart("i", "t")) == {"type": "tool_result", "call_id": "i", "text": "t"}
    for damaged in ("soon", -1, True, None, [1]):  # a figure that is not one is read as none
        d = {"type": "tool_result", "call_id": "i", "text": "t", "duration_s": damaged}
        assert part_from_json(d, "x", "y") == ToolResultPart("i", "t")


# -- through every store -------------------------------------------------------------------------------------
def test_every_part_type_round_trips_on_every_engine(store_spec: str) -> None:
    st_ = open_store(parse_store(store_spec), timeout=10)
    try:
        put(st_, every_part())
        assert st_.load(A).to_json() == every_part()
        conv = st_.load(A)
        conv.messages[-1].parts = [*conv.messages[-1].parts, ReasoningPart(" and more thought")]
        lock = st_.lock(A)
        try:
            st_.save(conv, changed_from=len(conv.messages) - 1)
        finally:
            lock.release()
        assert st_.load(A).messages[-1].reasoning == "Paris it is. and more thought"
    finally:
        st_.close()


def test_migrate_round_trip_of_every_part_type(store_for: Any, tmp_path: Path) -> None:
    specs = [store_for("folder"), store_for("sqlite"), store_for("postgresql"), store_for("mysql")]
    specs.append(str(tmp_path / "back"))
    first = open_store(parse_store(specs[0]), timeout=10)
    put(first, every_part())
    first.close()
    for src_spec, dst_spec in itertools.pairwise(specs):
        src, dst = (open_store(parse_store(x), timeout=10) for x in (src_spec, dst_spec))
        try:
            report = migrate(src, dst)
            assert report.copied == [A], (src_spec, dst_spec)
            assert dst.load(A).to_json() == every_part(), dst_spec
        finally:
            src.close()
            dst.close()


def test_export_snapshot_then_import_on_every_engine(
    store_for: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    folder = store_for("folder")
    src = open_store(parse_store(folder), timeout=10)
    put(src, every_part())
    src.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "chatcli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=120)

    exported = tmp_path / "out.json"
    r = run("export", A, "--format", "snapshot", "--store", folder, "--output", str(exported))
    assert r.returncode == 0, r.stderr
    assert json.loads(exported.read_text()) == every_part()
    for engine in DATABASES:
        dst = store_for(engine)
        r = run("import", str(exported), "--store", dst)
        assert r.returncode == 0, r.stderr
        back = open_store(parse_store(dst), timeout=10)
        try:
            (sid,) = back.ids()
            got = back.load(sid).to_json()
        finally:
            back.close()
        assert got["messages"] == every_part()["messages"], engine


OPENAI_FORM = [
    {"role": "user", "content": "What time is it in Paris?"},
    {
        "role": "assistant",
        "content": "Let me look.",
        "reasoning_content": "The user wants the time.\nI should call the clock.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"Mars/Olympus"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "14:05 in Paris"},
    {"role": "tool", "tool_call_id": "call_2", "content": "no such time zone"},
    {"role": "assistant", "content": "It is 14:05.", "reasoning_content": "Paris it is."},
]


def test_export_in_the_openai_chat_format_then_import_on_every_engine(
    store_for: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    folder = store_for("folder")
    src = open_store(parse_store(folder), timeout=10)
    talk = every_part()
    talk["messages"].append({"role": "user", "content": "And in Rome?", "created_at": "x", "status": "ok"})
    talk["messages"].append(  # a call a kill left without its result
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_3", "name": "get_time", "arguments": "{}"}],
            "created_at": "x",
            "status": "ok",
        }
    )
    put(src, talk)
    src.close()

    def run(*args: str) -> str:
        cmd = [sys.executable, "-m", "chatcli", *args, "--store", folder]
        r = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    doc = json.loads(run("export", A, "--format", "json"))
    unanswered = {"role": "tool", "tool_call_id": "call_3", "content": wire.UNANSWERED}
    rome = [
        {"role": "user", "content": "And in Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ],
        },
    ]
    assert doc == {
        "title": "every part",
        "model": "fake-model",
        "messages": [{"role": "system", "content": "Be brief."}, *OPENAI_FORM, *rome, unanswered],
    }
    lines = [json.loads(x) for x in run("export", A, "--format", "jsonl").splitlines()]
    assert [
        {
            k: v
            for k, v in x.items()
            if k in ("role", "content", "tool_calls", "tool_call_id", "reasoning_content")
        }
        for x in lines
    ] == [{"role": "system", "content": "Be brief."}, *OPENAI_FORM, *rome]  # as kept: no answer made up
    assert lines[2]["usage"]["reasoning_tokens"] == 25 and lines[5]["status"] == "interrupted"
    md = run("export", A, "--format", "md")
    assert '*(calls `get_time`, call `call_1`)*\n\n```json\n{"tz":"Europe/Paris"}\n```' in md
    assert (
        "<details><summary>result of <code>get_time</code>, call <code>call_2</code> — error</summary>\n\n"
        "```text\nno such time zone\n```\n\n</details>" in md
    )
    exported = tmp_path / "openai.json"
    exported.write_text(json.dumps(doc))
    for engine in DATABASES:
        dst = store_for(engine)
        subprocess.run(
            [sys.executable, "-m", "chatcli", "import", str(exported), "--store", dst],
            check=True,
            capture_output=True,
            env=child_env,
            timeout=120,
        )
        back = open_store(parse_store(dst), timeout=10)
        try:
            (sid,) = back.ids()
            conv = back.load(sid)
        finally:
            back.close()
        assert conv.header.title == "every part" and conv.header.model == "fake-model", engine
        assert conv.header.system == "Be brief.", engine
        assert wire.to_openai(conv.messages, wire.always) == doc["messages"][1:], engine
        calls = [p for m in conv.messages for p in m.parts if isinstance(p, ToolCallPart)]
        assert [c.id for c in calls] == ["call_1", "call_2", "call_3"], engine


def _found(st_: Any, text: str, **kw: Any) -> list[tuple[str, int, str]]:
    return [(h.role, h.position, h.snippet) for h in st_.search(text, **kw)]


def test_tool_calls_and_results_are_searched_on_every_engine(store_spec: str) -> None:
    st_ = open_store(parse_store(store_spec), timeout=10)
    try:
        put(st_, every_part())
        [(role, position, text)] = _found(st_, "get_time olympus")  # a call: its name and arguments
        assert (role, position) == ("assistant", 1) and "Mars/\x02Olympus\x03" in text
        assert _found(st_, "olympus", role="tool") == []
        assert [r[:2] for r in _found(st_, "zone")] == [("tool", 2)]  # a result
        assert [r[:2] for r in _found(st_, "paris", role="tool")] == [("tool", 2)]
        assert "\x02zone\x03" in _found(st_, "zone", role="tool")[0][2]
        conv = st_.load(A)  # a result that changes is searched as it is now
        conv.messages[2].parts = [ToolResultPart("call_1", "sunny"), *conv.messages[2].parts[1:]]
        lock = st_.lock(A)
        try:
            st_.save(conv, changed_from=2)
        finally:
            lock.release()
        assert [r[:2] for r in _found(st_, "sunny", role="tool")] == [("tool", 2)]
        assert _found(st_, "14:05", role="tool") == []
    finally:
        st_.close()


def test_reasoning_is_searched_only_when_asked_on_every_engine(store_spec: str) -> None:
    st_ = open_store(parse_store(store_spec), timeout=10)
    try:
        put(st_, every_part())
        assert _found(st_, "clock") == []
        assert _found(st_, "clock", role="assistant") == []
        [(role, position, text)] = _found(st_, "clock", reasoning=True)
        assert (role, position) == ("reasoning", 1) and text.endswith("I should call the \x02clock\x03.")
        assert _found(st_, "clock", role="assistant", reasoning=True)[0][:2] == ("reasoning", 1)
        assert _found(st_, "clock", role="user", reasoning=True) == []
        assert _found(st_, "clock", role="title", reasoning=True) == []
        # text and reasoning of one message are two hits; the text alone without --reasoning
        assert {r[:2] for r in _found(st_, "paris", reasoning=True)} >= {("user", 0), ("reasoning", 3)}
        assert ("reasoning", 3) not in {r[:2] for r in _found(st_, "paris")}
        # a reasoning that changes is searched as it is now; one undone is searched no more
        conv = st_.load(A)
        conv.messages[1].parts = [ReasoningPart("Another plan: a sundial."), *conv.messages[1].parts[1:]]
        lock = st_.lock(A)
        try:
            st_.save(conv, changed_from=1)
            assert _found(st_, "clock", reasoning=True) == []
            assert [r[:2] for r in _found(st_, "sundial", reasoning=True)] == [("reasoning", 1)]
            del conv.messages[1:]
            st_.save(conv, changed_from=1)
        finally:
            lock.release()
        assert _found(st_, "sundial", reasoning=True) == []
        put(st_, every_part() | {"id": B})
        st_.trash(B)
        assert _found(st_, "clock", reasoning=True) == []
    finally:
        st_.close()
