"""Conversations longer than the model's context window, against the fake server with a small window in
each server's shape (llama.cpp, OpenAI, Ollama): every turn gets a reply, every message stays in the
session, the notices say what was left out, resume sends the same window, overflow errors are retried
once, a message too large alone is refused cleanly, and /compact sends a summary instead."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatcli.backends.ollama import OllamaBackend
from chatcli.backends.openai import OpenAIBackend
from chatcli.compaction import SUMMARY_INSTRUCTIONS
from chatcli.context import SUMMARY_HEADER
from chatcli.errors import MessageTooLarge, NothingToDo
from chatcli.session import ConversationSession, GenerationParams
from chatcli.stores.folder import FolderStore
from chatcli.transcript import transcript_markdown

from fakellm import FakeLLMServer, Reply

WINDOW = 400  # tokens, as the fake counts them: characters / 4
STYLES = ("llamacpp", "openai", "ollama")


def long_message(i: int) -> str:
    return f"message {i}: " + " ".join(f"word{i}x{j}" for j in range(40))  # ~80 tokens


def backend(llm: FakeLLMServer, style: str) -> OpenAIBackend | OllamaBackend:
    if style == "ollama":
        return OllamaBackend(llm.url, "fake-model", num_ctx=WINDOW)
    return OpenAIBackend(llm.url + "/v1", "fake-model")


def new(
    store: FolderStore, llm: FakeLLMServer, style: str, opened: list[ConversationSession]
) -> ConversationSession:
    b = backend(llm, style)
    s = ConversationSession.create(store, b, model=b.model, params=GenerationParams(max_tokens=60))
    opened.append(s)
    return s


def refused(llm: FakeLLMServer) -> int:
    """How many chat requests the fake refused as too long (what it counts is exactly what it refuses)."""
    n = 0
    for r in llm.requests:
        body = r["json"]
        prompt = sum(len(m["content"]) for m in body["messages"]) // 4
        window = (body.get("options") or {}).get("num_ctx", WINDOW)
        extra = body.get("max_tokens") or 0 if llm.overflow == "openai" and "options" not in body else 0
        n += prompt + extra > window
    return n


@pytest.mark.parametrize("style", STYLES)
def test_twenty_long_turns_all_get_replies_and_every_word_stays(
    style: str, store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow=style) as llm:
        s = new(store, llm, style, opened)
        notices: list[str] = []
        for i in range(20):
            reply = s.send(long_message(i), on_notice=notices.append)
            assert reply.status == "ok" and reply.content == f"Echo: {long_message(i)}"
        snap = store.load(s.id).to_json()
        assert [m["content"] for m in snap["messages"] if m["role"] == "user"] == [
            long_message(i) for i in range(20)
        ]
        assert len(snap["messages"]) == 40
        # a window was kept: the last request held the newest turns only, and said which
        last = llm.requests[-1]["json"]["messages"]
        assert last[-1]["content"] == long_message(19) and len(last) < 39
        ctx = snap["messages"][-1]["context"]
        assert ctx["start"] == 39 - len(last) > 0  # the request held messages[start:39], the newest turns
        assert ctx["window"] == WINDOW
        # said once the window leaves turns out (an OpenAI-style server's overflow says it itself), and not
        # again at every turn while it slides on
        said = [
            n
            for n in notices
            if re.match(
                r"\d+ earlier turns? not sent to the model \(context 400 tokens\)|the request did not fit", n
            )
        ]
        assert 1 <= len(said) <= 3, notices
        # the window is known from /props (llama.cpp) or num_ctx (Ollama): nothing was ever refused;
        # an OpenAI-style server states it only in its first overflow error, retried at once
        assert refused(llm) == (1 if style == "openai" else 0)
        # deciding the window cost no request per turn: the usage of each reply calibrates the next
        assert [p["path"] for p in llm.probes] == {
            "llamacpp": ["/props"],
            "openai": ["/props"],
            "ollama": [],
        }[style]
        figures = s.stats().context
        assert figures["window"] == WINDOW and figures["left_out"] > 0 and figures["turns_sent"] >= 1
        assert 0 < figures["share"] <= 1


def test_an_overflow_is_retried_once_with_fewer_turns_and_the_message_kept_once(
    store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="openai") as llm:
        s = new(store, llm, "openai", opened)
        notices: list[str] = []
        for i in range(6):
            s.send(long_message(i), on_notice=notices.append)
        assert refused(llm) == 1
        said = [n for n in notices if n.startswith("the request did not fit")]
        assert len(said) == 1
        assert re.fullmatch(
            r"the request did not fit the model's context \(400 tokens\): sending it again with "
            r"(1 earlier turn left out \(it stays|\d+ earlier turns left out \(they stay) in the session\)",
            said[0],
        )
        snap = store.load(s.id).to_json()
        users = [m["content"] for m in snap["messages"] if m["role"] == "user"]
        assert users == [long_message(i) for i in range(6)]  # never twice
        assert snap["context_window"] == WINDOW  # remembered for the session
        assert all(m["status"] == "ok" for m in snap["messages"])


def test_resume_sends_the_same_window_as_going_on(store: FolderStore, tmp_path: Path) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="openai") as llm:
        straight = ConversationSession.create(store, backend(llm, "openai"), model="fake-model")
        for i in range(9):
            straight.send(long_message(i))
        expected = llm.requests[-1]["json"]["messages"]
        straight.close()
        before = refused(llm)

        s = ConversationSession.create(store, backend(llm, "openai"), model="fake-model")
        for i in range(8):
            s.send(long_message(i))
        sid = s.id
        s.close()
        resumed = ConversationSession.resume(store, sid, lambda found: backend(llm, "openai"))
        resumed.send(long_message(8))
        resumed.close()
        assert llm.requests[-1]["json"]["messages"] == expected
        assert (
            refused(llm) - before == 1
        )  # the resumed session knew the window: only the first run learned it


def test_a_message_too_large_alone_is_kept_unsent_and_the_talk_goes_on(
    store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="llamacpp") as llm:
        s = new(store, llm, "llamacpp", opened)
        s.send("hello")
        huge = "paste " * 600  # ~900 tokens
        with pytest.raises(MessageTooLarge) as info:
            s.send(huge)
        assert re.search(
            r"this message is [\d,]+ tokens, [\d,]+ more than the model's context leaves", str(info.value)
        )
        assert len(llm.requests) == 1  # nothing was sent
        snap = store.load(s.id).to_json()
        kept = snap["messages"][-1]
        assert (kept["role"], kept["content"], kept["dropped"]) == ("user", huge, "unsent")
        assert "more than the model's context leaves" in kept["error"]
        reply = s.send("a short one")
        assert reply.status == "ok"
        assert [m["content"] for m in llm.requests[-1]["json"]["messages"]] == [
            "hello",
            "Echo: hello",
            "a short one",
        ]


def test_compact_sends_a_summary_in_place_of_the_turns_left_out(
    store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="llamacpp") as llm:
        s = new(store, llm, "llamacpp", opened)
        with pytest.raises(NothingToDo):
            s.compact()
        for i in range(8):
            s.send(long_message(i))
        n = len(llm.requests)
        llm.default = Reply(text="They listed words of eight messages.")  # every summary request
        progress: list[str] = []
        summary = s.compact(progress.append)
        llm.default = None
        asked_for = [r["json"]["messages"][-1]["content"] for r in llm.requests[n:]]
        assert all(len(a) // 4 + 60 <= WINDOW for a in asked_for)  # each fits the window with its answer
        assert "".join(asked_for).count("User: message 0:") == 1  # each message goes to one request only
        asked = llm.requests[n]["json"]["messages"]
        assert asked[0] == {"role": "system", "content": SUMMARY_INSTRUCTIONS}
        assert long_message(0) in asked[1]["content"]
        assert progress and progress[0].startswith("summarising ")
        assert summary.role == "system" and summary.content == "They listed words of eight messages."
        assert summary.summary_of is not None and summary.summary_of[0] == 0
        snap = store.load(s.id).to_json()
        assert snap["messages"][-1]["summary_of"] == summary.summary_of
        assert sum(1 for m in snap["messages"] if m["role"] == "user") == 8  # the turns are untouched

        s.send(long_message(8))
        sent = llm.requests[-1]["json"]["messages"]
        assert sent[0]["role"] == "system" and sent[0]["content"].startswith(SUMMARY_HEADER)
        assert "They listed words of eight messages." in sent[0]["content"]
        assert store.load(s.id).to_json()["messages"][-1]["context"]["summary"] == len(snap["messages"]) - 1

        s.uncompact()
        s.send(long_message(9))
        assert llm.requests[-1]["json"]["messages"][0]["role"] == "user"  # plain trimming again
        assert store.load(s.id).to_json()["messages"][len(snap["messages"]) - 1]["dropped"] == "undone"


def test_compact_at_summarises_by_itself(store: FolderStore, opened: list[ConversationSession]) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="llamacpp") as llm:
        s = new(store, llm, "llamacpp", opened)
        s.planner.compact_at = 0.8
        notices: list[str] = []
        for i in range(8):
            s.send(long_message(i), on_notice=notices.append)
        assert any(n.startswith("summarising ") for n in notices)
        snap = store.load(s.id).to_json()
        summaries = [i for i, m in enumerate(snap["messages"]) if m.get("summary_of")]
        assert summaries
        # each summary sits before the user message of the turn that asked for it, not after
        assert all(snap["messages"][i + 1]["role"] == "user" for i in summaries)
        assert [m["content"] for m in snap["messages"] if m["role"] == "user"] == [
            long_message(i) for i in range(8)
        ]


def test_the_repl_says_what_was_left_out_and_shows_it(
    child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="openai") as llm:
        lines = [long_message(i) for i in range(8)] + [
            "stats",
            "history 2",
            "paste " * 600,
            "after the paste",
        ]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "chatcli",
                "new",
                "--backend",
                "openai",
                "--base-url",
                f"{llm.url}/v1",
                "--context-window",
                str(WINDOW),
                "--max-tokens",
                "60",
            ],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            env=child_env,
            timeout=60,
        )
        assert refused(llm) == 0  # --context-window: nothing was ever too long
    out = r.stdout + r.stderr
    assert "1 earlier turn not sent to the model (context 400 tokens); it stays in the session" in out
    assert re.search(
        r"context\s+\d+ of 400 tokens \(\d+ %\) in the last request; \d+ turns? sent, \d+ left out", out
    )
    assert re.search(r"turns 1–\d+ not sent", out)  # history marks the replies whose request left turns out
    assert "more than the model's context leaves for it" in out
    assert "Echo: after the paste" in out
    assert r.returncode == 1  # a turn failed (the paste): the piped REPL says so in its exit status
    sid = re.search(r"New session (\S+)", r.stdout).group(1)  # type: ignore[union-attr]
    shown = subprocess.run(
        [sys.executable, "-m", "chatcli", "show", sid, "--raw"], capture_output=True, text=True, env=child_env
    ).stdout
    for i in range(8):
        assert long_message(i) in shown  # every word is still in the session
    assert "not sent: too large for the model's context" in shown
    assert re.search(r"## Model — \*turns? 1(–\d+)? not sent \(context window\)\*", shown)
    snap = json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())
    assert snap["messages"][-1]["context"]["window"] == WINDOW


def test_compact_when_the_newest_turn_fills_the_window_alone(
    store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="llamacpp") as llm:
        s = new(store, llm, "llamacpp", opened)
        s.params = GenerationParams(max_tokens=200)  # replies of up to 200 tokens: a turn fills the window
        for i in range(3):
            s.send(long_message(i) + " " + long_message(i))
        llm.default = Reply(text="Three long notes.")
        summary = s.compact()
        assert summary.summary_of == [0, 4]  # every turn but the newest
        stats = s.stats()
        assert stats.context["turns_sent"] == 1 and stats.context["left_out"] == 2
        shown = transcript_markdown(s.conv)
        assert "## Summary of turns 1–2 (sent in their place)\n\nThree long notes." in shown


def test_stats_count_the_last_request_as_it_was_after_a_clear(
    store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer(context_window=WINDOW, overflow="llamacpp") as llm:
        s = new(store, llm, "llamacpp", opened)
        for i in range(6):
            s.send(long_message(i))
        before = s.stats().context
        s.clear()
        after = s.stats().context
        assert after == before and after["turns_sent"] >= 1 and after["left_out"] >= 1
        # show and history keep saying what those requests left out, counted from the clear before them
        assert re.search(
            r"## Model — \*turns 1–\d+ not sent \(context window\)\*", transcript_markdown(s.conv)
        )


def test_an_overflow_that_states_no_numbers_still_sends_less(
    store: FolderStore, opened: list[ConversationSession]
) -> None:
    with FakeLLMServer() as llm:  # no window anywhere: neither /props nor numbers in the error
        s = new(store, llm, "openai", opened)
        for i in range(3):
            s.send(long_message(i))
        llm.enqueue(
            Reply(status=400, error_message="too long for me", error_type="exceed_context_size_error")
        )
        notices: list[str] = []
        reply = s.send(long_message(3), on_notice=notices.append)
        assert reply.status == "ok"
        refused_body, retried = llm.requests[-2]["json"], llm.requests[-1]["json"]
        assert len(refused_body["messages"]) == 7 and len(retried["messages"]) == 5  # one turn fewer
        assert notices == [
            "the request did not fit the model's context: sending it again with 1 earlier turn left out "
            "(it stays in the session)"
        ]
        assert reply.context is not None and reply.context.start == 2
