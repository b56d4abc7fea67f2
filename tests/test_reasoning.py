"""Reasoning, the first new part: read from every wire shape (OpenAI-compatible ``reasoning_content`` and
``reasoning``, Ollama's ``thinking`` with its ``think`` option, ``<think>`` tags in the text), kept at every
save point, counted, not sent back except where DeepSeek needs it, shown dimmed then folded in the REPL,
never on ``ask``'s stdout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.backends.ollama import OllamaBackend
from chatcli.backends.openai import OpenAIBackend
from chatcli.errors import BackendHTTPError, StreamError
from chatcli.model import Conversation, ReasoningPart, TextPart
from chatcli.reasoning import ThinkSplitter
from chatcli.session import ConversationSession, Timeouts
from chatcli.stores.folder import FolderStore
from chatcli.turn import TurnPolicy

from fakellm import FakeLLMServer, Reply
from ptyproc import Chat, plain, start
from test_stores import snap

THOUGHT = ["The user ", "greets me.\n", "I should ", "greet back."]


# -- <think> tags --------------------------------------------------------------------------------------------
def split(pieces: list[str]) -> tuple[str, str]:
    s = ThinkSplitter()
    got = [s.feed(p) for p in pieces] + [s.flush()]
    return "".join(r for r, _ in got), "".join(t for _, t in got)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_think_tags_split_anywhere_across_pieces(data: st.DataObject) -> None:
    whole = "\n <think>step one\nstep </thi two</think>\nThe answer: <think> stays text."
    cuts = sorted(data.draw(st.sets(st.integers(1, len(whole) - 1), max_size=12)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert split(pieces) == ("step one\nstep </thi two", "The answer: <think> stays text.")


def test_think_tags_odd_cases() -> None:
    assert split(["<think>still thinking when it was cut"]) == ("still thinking when it was cut", "")
    assert split(["<think>almost </th"]) == ("almost </th", "")  # unclosed: all of it is reasoning
    assert split(["Plain ", "answer."]) == ("", "Plain answer.")
    assert split(["<thi"]) == ("", "<thi")  # the start of a tag that never came is text
    assert split(["  ", "hello"]) == ("", "  hello")
    assert split(["a <think>b</think>"]) == ("", "a <think>b</think>")  # only where the reply begins


# -- every wire shape, through the session -------------------------------------------------------------------
def session_on(
    shape: str, llm: FakeLLMServer, store: FolderStore, model: str = "fake-model"
) -> ConversationSession:
    if shape == "ollama":
        backend: Any = OllamaBackend(llm.url, model, think=True)
        base = llm.url
    else:
        backend = OpenAIBackend(llm.url + "/v1", model)
        base = llm.url + "/v1"
    s = ConversationSession.create(store, backend, model=model, base_url=base)
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=10.0)
    return s


def reply_in(shape: str, **kw: Any) -> Reply:
    if shape == "think-tags":
        return Reply(tokens=["<th", "ink>", *THOUGHT, "</think>", "\n\n", "Hello ", "there!"], **kw)
    field = "reasoning" if shape == "openai-reasoning" else "reasoning_content"
    return Reply(tokens=["Hello ", "there!"], reasoning=list(THOUGHT), reasoning_field=field, **kw)


SHAPES = ["openai-reasoning_content", "openai-reasoning", "ollama", "think-tags"]


@pytest.mark.parametrize("shape", SHAPES)
def test_reasoning_is_read_kept_and_not_sent_back(
    shape: str, fake_llm: FakeLLMServer, store: FolderStore, opened: list[ConversationSession]
) -> None:
    s = session_on(shape, fake_llm, store)
    opened.append(s)
    fake_llm.enqueue(reply_in(shape, reasoning_tokens=17, delay_each=0.01))
    text: list[str] = []
    thought: list[str] = []
    reply = s.send("hi", on_delta=text.append, on_reasoning=thought.append)
    assert "".join(thought) == "".join(THOUGHT) and "".join(text) == "Hello there!"
    assert reply.parts == [ReasoningPart("".join(THOUGHT)), TextPart("Hello there!")]
    assert (
        reply.timings is not None and reply.timings.reasoning_s is not None and reply.timings.reasoning_s > 0
    )
    saved = s.store.load(s.id).messages[-1]
    assert saved.reasoning == "".join(THOUGHT) and saved.content == "Hello there!"
    if shape.startswith("openai"):
        assert saved.usage is not None and saved.usage.reasoning_tokens == 17
        assert s.stats().reasoning_tokens == 17
    if shape == "ollama":
        assert fake_llm.requests[0]["json"]["think"] is True
    fake_llm.enqueue(Reply(text="Again."))
    s.send("and again")
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert sent[1] == {"role": "assistant", "content": "Hello there!"}  # the reasoning stays here


def test_ollama_think_false_is_sent_and_the_model_answers_without(
    fake_llm: FakeLLMServer, store: FolderStore, opened: list[ConversationSession]
) -> None:
    s = ConversationSession.create(store, OllamaBackend(fake_llm.url, "m", think=False), model="m")
    opened.append(s)
    fake_llm.enqueue(reply_in("ollama"))
    reply = s.send("hi")
    assert fake_llm.requests[0]["json"]["think"] is False
    assert reply.parts == [TextPart("Hello there!")]
    s2 = ConversationSession.create(store, OllamaBackend(fake_llm.url, "m"), model="m")
    opened.append(s2)
    s2.send("hi")
    assert "think" not in fake_llm.requests[1]["json"]  # not set: not sent, the model's default


@pytest.mark.parametrize("shape", ["openai-reasoning_content", "think-tags"])
def test_a_reply_cut_while_it_reasons_keeps_its_reasoning(
    shape: str, fake_llm: FakeLLMServer, store: FolderStore, opened: list[ConversationSession]
) -> None:
    s = session_on(shape, fake_llm, store)
    opened.append(s)
    s.policy = TurnPolicy(checkpoint_seconds=0.0, checkpoint_cost_ratio=0.0)
    mid: list[dict[str, Any]] = []

    def seen(piece: str) -> None:  # the checkpoint after each piece reached the file
        mid.append(json.loads(s.store.path_for(s.id).read_bytes())["messages"][-1])

    fake_llm.enqueue(reply_in(shape, cut_after=4, delay_each=0.01))
    with pytest.raises(StreamError):  # the stream was cut
        s.send("hi", on_reasoning=seen)
    saved = s.store.load(s.id).messages[-1]
    assert saved.status == "error" and saved.content == ""
    assert saved.reasoning and "".join(THOUGHT).startswith(saved.reasoning)
    assert any(m.get("status") == "streaming" and "parts" in m for m in mid)  # saved as it streamed


def _tool_conversation(model: str, sid: str = "20260101-090000-dsdk") -> dict[str, Any]:
    """A session whose earlier reply reasoned and made a tool call, with its result."""
    s = snap(sid, model=model, system="", turns=[("time?", "unused")])
    s["messages"][1] = {
        "role": "assistant",
        "parts": [
            {"type": "reasoning", "text": "I need the clock."},
            {"type": "tool_call", "id": "c1", "name": "clock", "arguments": "{}"},
        ],
        "created_at": "",
        "status": "ok",
    }
    tool = {"role": "tool", "parts": [{"type": "tool_result", "call_id": "c1", "text": "14:05"}]}
    answer = {
        "role": "assistant",
        "parts": [{"type": "reasoning", "text": "Say it."}, {"type": "text", "text": "14:05."}],
    }
    s["messages"] += [dict(tool, created_at="", status="ok"), dict(answer, created_at="", status="ok")]
    return s


@pytest.mark.parametrize(
    ("model", "server_rule"), [("deepseek-chat", "thinking"), ("deepseek-reasoner", "reasoner")]
)
def test_deepseek_gets_reasoning_back_as_each_of_its_modes_requires(
    model: str, server_rule: str, store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(reasoning_rule=server_rule) as llm:
        conv = Conversation.from_json(_tool_conversation(model))
        store.create(conv)
        s = ConversationSession.resume(store, conv.id, lambda x: OpenAIBackend(llm.url + "/v1", model))
        opened.append(s)
        s.timeouts = Timeouts(connect=2.0, idle=5.0, total=10.0)
        reply = s.send("and in Tokyo?")
        assert reply.status == "ok"
        sent = llm.requests[-1]["json"]["messages"]
        carried = [m for m in sent if "reasoning_content" in m]
        if server_rule == "thinking":  # the reply that made a tool call, and no other
            assert carried == [sent[1]] and sent[1]["reasoning_content"] == "I need the clock."
        else:
            assert carried == []
    # and the other way round, each server refuses what the other rule sends
    other = "deepseek-reasoner" if server_rule == "thinking" else "deepseek-chat"
    with FakeLLMServer(reasoning_rule=server_rule) as llm:
        conv = Conversation.from_json(_tool_conversation(other, "20260101-090000-dsdl"))
        store.create(conv)
        s = ConversationSession.resume(store, conv.id, lambda x: OpenAIBackend(llm.url + "/v1", other))
        opened.append(s)
        with pytest.raises(BackendHTTPError, match="reasoning_content"):
            s.send("and in Tokyo?")


def test_the_summary_of_compact_leaves_the_reasoning_out(
    fake_llm: FakeLLMServer, store: FolderStore, opened: list[ConversationSession]
) -> None:
    s = session_on("openai-reasoning_content", fake_llm, store)
    opened.append(s)
    s.planner.window_setting = 400
    for i in range(6):
        fake_llm.enqueue(Reply(text=f"answer {i} " + "word " * 60))
        s.send(f"question {i} " + "word " * 60)
    fake_llm.default = Reply(tokens=["<think>", "hmm", "</think>", "The summary."])  # every summary request
    m = s.compact()
    assert m.content == "The summary."


# -- what the user sees --------------------------------------------------------------------------------------
def test_ask_prints_only_the_answer_json_has_the_reasoning_and_v_shows_it_on_stderr(
    fake_llm: FakeLLMServer, child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    def ask(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "chatcli",
            "ask",
            "--backend",
            "openai",
            "--base-url",
            f"{fake_llm.url}/v1",
        ]
        return subprocess.run(
            [*cmd, *args], capture_output=True, text=True, env=child_env, timeout=60, input=""
        )

    fake_llm.enqueue(reply_in("openai-reasoning_content"))
    r = ask("hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello there!\n" and "greet" not in r.stderr
    fake_llm.enqueue(reply_in("think-tags", reasoning_tokens=9))
    r = ask("--json", "hi")
    out = json.loads(r.stdout)
    assert out["reply"] == "Hello there!" and out["reasoning"] == "".join(THOUGHT)
    fake_llm.enqueue(reply_in("openai-reasoning", reasoning_tokens=9))
    r = ask("-v", "hi")
    assert r.stdout == "Hello there!\n"
    assert "".join(THOUGHT) in r.stderr
    fake_llm.enqueue(Reply(text="No thought."))
    r = ask("--json", "hi")
    assert json.loads(r.stdout)["reasoning"] is None


def test_show_and_search_leave_the_reasoning_out_unless_asked(
    fake_llm: FakeLLMServer, child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    cmd = [sys.executable, "-m", "chatcli"]
    fake_llm.enqueue(reply_in("openai-reasoning_content", reasoning_tokens=17))
    r = subprocess.run(
        [*cmd, "ask", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1", "hi"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
        input="",
    )
    assert r.returncode == 0, r.stderr
    folded = subprocess.run([*cmd, "show", "last"], capture_output=True, text=True, env=child_env, timeout=60)
    assert re.search(r"thought for \d+\.\d s · 17 tokens", folded.stdout), folded.stdout
    assert "greet back" not in folded.stdout and "Hello there!" in folded.stdout
    whole = subprocess.run(
        [*cmd, "show", "last", "--reasoning"], capture_output=True, text=True, env=child_env, timeout=60
    )
    assert "greets me." in whole.stdout and "greet back." in whole.stdout and "Hello there!" in whole.stdout
    for flags, found in (([], []), (["--reasoning"], ["reasoning"]), (["--role", "user", "--reasoning"], [])):
        r = subprocess.run(
            [*cmd, "search", "greet", "--json", *flags],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert [h["role"] for h in json.loads(r.stdout)] == found, flags


def test_the_repl_streams_reasoning_dimmed_then_folds_it(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat]
) -> None:
    env = dict(pty_env)
    env.pop("NO_COLOR", None)  # (to see the dim style)
    c, _ = start(chats, env, "new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1")
    fake_llm.enqueue(reply_in("openai-reasoning_content", delay_each=0.15))
    c.send("hi")
    c.child.expect("greets me")  # the reasoning on screen while it streams ...
    streamed = c.child.before + c.child.after
    assert "\x1b[2" in streamed  # ... dimmed
    out = c.expect(re.escape("Hello there!"))
    c.expect_prompt()
    assert re.search(r"thought for \d+\.\d s · 4 tokens", plain(c.child.before) + out), out
    out = c.command("history", "Hello there!")
    assert re.search(r"thought for \d+\.\d s · ~\d+ tokens", out), out
    out = c.command("history --reasoning", "Hello there!")
    assert "greet back." in out
    out = c.command("reasoning off", "folded line")
    fake_llm.enqueue(reply_in("openai-reasoning_content", delay_each=0.15))
    c.send("again")
    out = c.expect(re.escape("Hello there!"))
    c.expect_prompt()
    assert "greets me" not in out and "thought for" in out
