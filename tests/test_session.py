"""ConversationSession through real HTTP: the fake server on one side, OpenAIBackend / OllamaBackend on the
other, and the snapshot on disk checked at every step."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli.backends.ollama import OllamaBackend
from chatcli.backends.openai import OpenAIBackend
from chatcli.errors import (
    AuthenticationError,
    BackendError,
    BackendHTTPError,
    ModelNotFound,
    RateLimited,
    SessionLocked,
    SessionTimeoutError,
    StreamError,
)
from chatcli.model import FORMAT, VERSION, Conversation
from chatcli.session import ConversationSession, GenerationParams, Message, Timeouts
from chatcli.stores.folder import FolderStore
from chatcli.turn import TurnPolicy

from fakellm import FakeLLMServer, Reply

SYSTEM = "You are terse."


def openai_session(
    store: FolderStore,
    llm: FakeLLMServer,
    opened: list[ConversationSession],
    *,
    api_key: str | None = None,
    **kwargs: Any,
) -> ConversationSession:
    backend = OpenAIBackend(llm.url + "/v1", "fake-model", api_key=api_key)
    kwargs.setdefault("system", SYSTEM)
    s = ConversationSession.create(store, backend, model="fake-model", base_url=llm.url + "/v1", **kwargs)
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=10.0)
    opened.append(s)
    return s


def ollama_session(
    store: FolderStore, llm: FakeLLMServer, opened: list[ConversationSession]
) -> ConversationSession:
    backend = OllamaBackend(llm.url, "fake-model")
    s = ConversationSession.create(store, backend, model="fake-model", system=SYSTEM, base_url=llm.url)
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=10.0)
    opened.append(s)
    return s


def on_disk(session: ConversationSession) -> dict[str, Any]:
    return json.loads(session.store.path_for(session.id).read_bytes())


def sent_messages(llm: FakeLLMServer, n: int = -1) -> list[dict[str, str]]:
    return llm.requests[n]["json"]["messages"]


# --------------------------------------------------------------------------------- the normal turn


def test_create_writes_an_empty_snapshot(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(
        store, fake_llm, opened, title="my title", params=GenerationParams(temperature=0.2, max_tokens=99)
    )
    snap = on_disk(s)
    assert snap["format"] == FORMAT and snap["version"] == VERSION
    assert snap["id"] == s.id
    assert snap["messages"] == [] and snap["context_start"] == 0
    assert snap["backend"] == "openai" and snap["model"] == "fake-model"
    assert snap["system"] == SYSTEM and snap["title"] == "my title"
    assert snap["params"] == {"temperature": 0.2, "max_tokens": 99}
    assert snap["base_url"] == fake_llm.url + "/v1"


def test_user_message_is_on_disk_when_the_request_arrives(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    seen: list[dict[str, Any]] = []
    fake_llm.on_request = lambda record: seen.append(on_disk(s))
    fake_llm.enqueue(Reply(text="Hello back"))

    reply = s.send("hello there")

    assert len(seen) == 1
    assert [(m["role"], m["content"], m["status"]) for m in seen[0]["messages"]] == [
        ("user", "hello there", "ok")
    ]
    assert seen[0]["title"] == "hello there"
    assert reply.content == "Hello back"
    assert [(m["role"], m["content"], m["status"]) for m in on_disk(s)["messages"]] == [
        ("user", "hello there", "ok"),
        ("assistant", "Hello back", "ok"),
    ]
    assert fake_llm.hook_errors == []


def test_completed_reply_is_saved_with_usage_and_timings(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(
        Reply(
            text="One two three", usage=(40, 3, 8), delay_first=0.15, delay_each=0.05, finish_reason="length"
        )
    )
    deltas: list[str] = []

    reply = s.send("count", on_delta=deltas.append)

    assert deltas == ["One ", "two ", "three"]
    assert reply.status == "ok" and reply.finish_reason == "length" and reply.model == "fake-model"
    saved = on_disk(s)["messages"][-1]
    assert saved["content"] == "One two three"
    assert saved["status"] == "ok"
    assert saved["finish_reason"] == "length"
    assert saved["model"] == "fake-model"
    assert saved["usage"] == {"prompt_tokens": 40, "completion_tokens": 3, "cached_tokens": 8}
    t = saved["timings"]
    assert 0.15 <= t["ttft_s"] < 2.0
    # two 0.05 s gaps after the first token (less what a late first chunk takes off: this is not a timer test)
    assert t["duration_s"] >= t["ttft_s"] + 0.05
    # no server timings: chatcli's own rate = completion tokens / generation time (>= 0.1 s here)
    assert 0 < t["tokens_per_second"] <= 30.0
    assert t["server"] is None
    assert "error" not in saved


def test_llamacpp_timings_are_stored_under_server(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="a b c d", usage=(20, 4, 0), timings=True, delay_each=0.01))
    s.send("go")
    t = on_disk(s)["messages"][-1]["timings"]
    server = t["server"]
    assert server["predicted_n"] == 4 and server["cache_n"] == 0 and server["prompt_n"] == 20
    assert server["predicted_ms"] > 0
    assert t["tokens_per_second"] == round(server["predicted_per_second"], 2)
    assert t["ttft_s"] is not None and t["duration_s"] is not None


def test_llamacpp_cache_n_fills_cached_tokens(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="x y", usage=(30, 2, 12), timings=True))
    s.send("go")
    assert on_disk(s)["messages"][-1]["usage"] == {
        "prompt_tokens": 30,
        "completion_tokens": 2,
        "cached_tokens": 12,
    }


def test_ollama_counts_and_nanosecond_durations(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = ollama_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="Hi there friend", usage=(12, 3, 0), delay_each=0.02))
    reply = s.send("hello")
    assert reply.content == "Hi there friend"
    assert fake_llm.requests[-1]["path"] == "/api/chat"
    saved = on_disk(s)["messages"][-1]
    assert saved["status"] == "ok" and saved["finish_reason"] == "stop"
    assert saved["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "cached_tokens": None}
    server = saved["timings"]["server"]
    assert server["load_duration"] == 1_000_000
    assert server["eval_count"] == 3 and server["prompt_eval_count"] == 12
    for key in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(server[key], int) and server[key] > 0
    assert server["eval_duration"] >= 40_000_000  # two 20 ms gaps, in nanoseconds
    assert server["total_duration"] == (
        server["load_duration"] + server["prompt_eval_duration"] + server["eval_duration"]
    )
    assert saved["timings"]["tokens_per_second"] == round(3 / (server["eval_duration"] / 1e9), 2)


def test_checkpoint_saves_partial_reply_as_streaming(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.policy = TurnPolicy(checkpoint_seconds=0.0, checkpoint_cost_ratio=0.0)  # save after every token
    fake_llm.enqueue(Reply(text="alpha beta gamma", delay_each=0.02))
    mid: list[dict[str, Any]] = []

    def on_delta(text: str) -> None:
        if text == "gamma":  # the checkpoint of "beta " was written after its on_delta
            mid.append(on_disk(s)["messages"][-1])

    s.send("go", on_delta=on_delta)
    assert mid == [{**mid[0], "role": "assistant", "content": "alpha beta ", "status": "streaming"}]
    assert on_disk(s)["messages"][-1]["status"] == "ok"


class _Clock:
    """A monotonic clock the test moves: each streamed token takes 0.1 s, each save ``save_cost`` s."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t


class _TickingBackend:
    name, model, base_url = "openai", "ticking", "http://127.0.0.1:9/v1"

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock

    def stream_chat(self, messages: Any, params: Any, timeouts: Any, deadline: float) -> Iterator[Any]:
        from chatcli.backends.base import StreamEvent

        for i in range(40):  # 4 s of reply
            self.clock.t += 0.1
            yield StreamEvent(text=f"t{i} ")
        yield StreamEvent(finish_reason="stop")

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        pass

    def context_window(self, timeouts: Any) -> int | None:
        return None  # unknown: every message is sent

    def count_tokens(self, messages: Any, timeouts: Any) -> int | None:
        return None

    def recorded(self) -> dict[str, str]:
        return {"base_url": self.base_url}


@pytest.mark.parametrize("save_cost", [0.001, 0.2])
def test_checkpoints_every_quarter_second_unless_saving_is_slow(
    store: FolderStore, opened: list[ConversationSession], monkeypatch: pytest.MonkeyPatch, save_cost: float
) -> None:
    """kill -9 loses at most the last 0.25 s of a reply; a session whose save is slow saves less often,
    spending at most a tenth of the streaming time on saves."""
    import types

    import chatcli.turn as turn_mod

    clock = _Clock()
    monkeypatch.setattr(turn_mod, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    s = ConversationSession.create(store, _TickingBackend(clock), model="ticking")
    opened.append(s)
    checkpoints: list[tuple[float, str]] = []
    real_save = s.store.save

    def timed_save(conv: Conversation, **kw: Any) -> Any:
        last = conv.messages[-1]
        if last.status == "streaming":
            checkpoints.append((clock.t, last.content))
        clock.t += save_cost
        return real_save(conv, **kw)

    monkeypatch.setattr(s.store, "save", timed_save)
    s.send("go")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(checkpoints)]
    least = max(0.25, 10 * save_cost)
    assert checkpoints and all(g >= least - 1e-9 for g in gaps), gaps
    if save_cost < 0.01:  # a small session: a save every quarter second (the next token after 0.25 s)
        assert len(checkpoints) >= 10 and all(g <= 0.3 + save_cost + 1e-9 for g in gaps), gaps
    else:
        assert len(checkpoints) <= 3, gaps
    texts = [t for _, t in checkpoints]
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(texts))  # each one further
    assert on_disk(s)["messages"][-1]["status"] == "ok"


# --------------------------------------------------------------------------------------- timeouts


def test_idle_stall_keeps_partial_text_as_timeout(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.timeouts = Timeouts(connect=2.0, idle=0.3, total=10.0)
    fake_llm.enqueue(Reply(text="part one then more", stall_after=2, stall_seconds=3.0))

    with pytest.raises(SessionTimeoutError) as info:
        s.send("tell me")

    assert info.value.partial == "part one "
    assert info.value.cause is not None and info.value.cause.kind == "idle"
    assert info.value.cause.seconds == pytest.approx(0.3)
    assert "0.3 s" in str(info.value)
    msgs = on_disk(s)["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in msgs] == [
        ("user", "tell me", "ok"),
        ("assistant", "part one ", "timeout"),
    ]
    assert "idle" in msgs[-1]["error"]

    fake_llm.enqueue(Reply(text="recovered"))
    reply = s.send("go on")
    assert reply.content == "recovered" and reply.status == "ok"
    assert sent_messages(fake_llm) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "tell me"},
        {"role": "assistant", "content": "part one "},
        {"role": "user", "content": "go on"},
    ]


def test_trickle_past_the_total_deadline_is_a_timeout(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=0.5)
    text = " ".join(f"w{i}" for i in range(20))
    fake_llm.enqueue(Reply(text=text, delay_each=0.2))

    with pytest.raises(SessionTimeoutError) as info:
        s.send("slowly")

    assert info.value.cause is not None and info.value.cause.kind == "total"
    assert "0.5 s" in str(info.value)
    partial = info.value.partial
    assert partial.startswith("w0 ") and len(partial) < len(text)
    saved = on_disk(s)["messages"][-1]
    assert saved["status"] == "timeout" and saved["content"] == partial

    fake_llm.enqueue(Reply(text="fast"))
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=10.0)
    assert s.send("again").content == "fast"


def test_timeout_before_the_first_token(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.timeouts = Timeouts(connect=2.0, idle=0.2, total=10.0)
    fake_llm.enqueue(Reply(text="late", delay_first=2.0))
    with pytest.raises(SessionTimeoutError) as info:
        s.send("hi")
    assert info.value.partial == ""
    msgs = on_disk(s)["messages"]
    assert msgs[-1]["status"] == "timeout" and msgs[-1]["content"] == ""
    fake_llm.enqueue(Reply(text="ok now"))
    assert s.send("hi again").content == "ok now"
    # the empty timed-out reply is not sent back to the model
    assert sent_messages(fake_llm) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "hi again"},
    ]


# ------------------------------------------------------------------------------------------ errors


ERRORS: list[tuple[str, Reply, type[BackendError], str, str]] = [
    # name, reply, error class, a phrase of the message, the partial text kept
    (
        "500",
        Reply(status=500, error_message="CUDA out of memory"),
        BackendHTTPError,
        "CUDA out of memory",
        "",
    ),
    ("401", Reply(status=401, error_message="Incorrect API key"), AuthenticationError, "API key", ""),
    ("404", Reply(status=404, error_message="no such model"), ModelNotFound, "fake-model", ""),
    ("cut", Reply(text="a b c d", cut_after=2), StreamError, "closed in the middle", "a b "),
    (
        "in-stream",
        Reply(text="a b c d", error_after=3, error_message="backend exploded"),
        StreamError,
        "backend exploded",
        "a b c ",
    ),
    ("malformed", Reply(text="a b c d", malformed_after=1), StreamError, "malformed", "a "),
]


@pytest.mark.parametrize(("name", "reply", "cls", "phrase", "partial"), ERRORS, ids=[e[0] for e in ERRORS])
def test_backend_errors_keep_the_turn_and_the_session_goes_on(
    store: FolderStore,
    fake_llm: FakeLLMServer,
    opened: list[ConversationSession],
    name: str,
    reply: Reply,
    cls: type[BackendError],
    phrase: str,
    partial: str,
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(reply)

    with pytest.raises(cls) as info:
        s.send("question")

    assert type(info.value) is cls
    assert phrase in str(info.value)
    msgs = on_disk(s)["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in msgs] == [
        ("user", "question", "ok"),
        ("assistant", partial, "error"),
    ]
    assert msgs[-1]["error"] == str(info.value)

    fake_llm.enqueue(Reply(text="back to normal"))
    assert s.send("next").content == "back to normal"
    expected = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "question"}]
    if partial:
        expected.append({"role": "assistant", "content": partial})
    expected.append({"role": "user", "content": "next"})
    assert sent_messages(fake_llm) == expected
    assert on_disk(s)["messages"][-1]["status"] == "ok"


def test_ollama_in_stream_error_keeps_partial(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = ollama_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="x y z", error_after=1, error_message="model crashed"))
    with pytest.raises(StreamError, match="model crashed"):
        s.send("q")
    saved = on_disk(s)["messages"][-1]
    assert (saved["content"], saved["status"]) == ("x ", "error")


def test_unexpected_exception_in_callback_still_saves(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="one two"))

    def broken(text: str) -> None:
        raise ValueError("renderer bug")

    with pytest.raises(ValueError):
        s.send("q", on_delta=broken)
    saved = on_disk(s)["messages"][-1]
    assert saved["status"] == "error" and saved["content"] == "one "
    assert saved["error"] == "ValueError: renderer bug"


def test_ctrl_c_during_the_reply_keeps_it_as_interrupted(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="one two three four five six", delay_each=0.05))
    got: list[str] = []

    def on_delta(text: str) -> None:
        got.append(text)
        if len(got) == 2:
            raise KeyboardInterrupt

    reply = s.send("long answer please", on_delta=on_delta)

    assert reply.status == "interrupted"
    assert reply.content == "one two "
    saved = on_disk(s)["messages"][-1]
    assert (saved["content"], saved["status"]) == ("one two ", "interrupted")
    fake_llm.enqueue(Reply(text="short"))
    assert s.send("shorter then").content == "short"
    assert {"role": "assistant", "content": "one two "} in sent_messages(fake_llm)


# -------------------------------------------------------------------------------------- rate limits


def test_429_with_retry_after_zero_is_retried_once(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(
        Reply(status=429, error_message="slow down", headers={"Retry-After": "0"}), Reply(text="made it")
    )
    notices: list[str] = []

    reply = s.send("hi", on_notice=notices.append)

    assert reply.content == "made it" and reply.status == "ok"
    assert len(fake_llm.requests) == 2
    assert fake_llm.requests[0]["json"] == fake_llm.requests[1]["json"]
    assert len(notices) == 1
    assert "rate limited" in notices[0] and "retrying in 0 s" in notices[0] and "attempt 2 of 3" in notices[0]
    assert [m["status"] for m in on_disk(s)["messages"]] == ["ok", "ok"]


def test_429_beyond_max_retries_raises_rate_limited(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.policy = TurnPolicy(max_retries=2)
    limited = Reply(status=429, error_message="quota", headers={"Retry-After": "0"})
    fake_llm.enqueue(limited, limited, limited, Reply(text="never reached"))
    notices: list[str] = []

    with pytest.raises(RateLimited) as info:
        s.send("hi", on_notice=notices.append)

    assert info.value.retry_after == 0.0 and info.value.status == 429
    assert len(fake_llm.requests) == 3
    assert len(notices) == 2
    assert fake_llm.pending == 1
    assert on_disk(s)["messages"][-1]["status"] == "error"


def test_429_with_a_long_retry_after_is_not_waited_for(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(status=429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as info:
        s.send("hi")
    assert info.value.retry_after == 3600.0
    assert len(fake_llm.requests) == 1


# ---------------------------------------------------------------------------------- resume, clear


def test_resume_restores_everything_and_sends_the_whole_context(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(
        store, fake_llm, opened, title="Trip plan", params=GenerationParams(temperature=0.4, max_tokens=77)
    )
    fake_llm.enqueue(Reply(text="A1"), Reply(text="A2"))
    s.send("Q1")
    s.send("Q2")
    sid = s.id
    s.close()

    built: list[tuple[str, str]] = []

    def factory(session: ConversationSession) -> OpenAIBackend:
        built.append((session.header.model, session.header.base_url))
        return OpenAIBackend(session.header.base_url, session.header.model)

    r = ConversationSession.resume(store, sid, backend_factory=factory)
    opened.append(r)
    assert built == [("fake-model", fake_llm.url + "/v1")]
    assert r.header.title == "Trip plan" and r.header.system == SYSTEM and r.header.model == "fake-model"
    assert r.params == GenerationParams(temperature=0.4, max_tokens=77)
    assert [(m.role, m.content, m.status) for m in r.messages] == [
        ("user", "Q1", "ok"),
        ("assistant", "A1", "ok"),
        ("user", "Q2", "ok"),
        ("assistant", "A2", "ok"),
    ]

    fake_llm.enqueue(Reply(text="A3"))
    r.send("Q3")
    body = fake_llm.requests[-1]["json"]
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"},
    ]
    assert body["temperature"] == 0.4 and body["max_tokens"] == 77 and body["model"] == "fake-model"
    assert len(on_disk(r)["messages"]) == 6


def test_resume_of_a_locked_session_is_refused(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    calls: list[str] = []
    with pytest.raises(SessionLocked):
        ConversationSession.resume(store, s.id, backend_factory=lambda x: calls.append("x"))  # type: ignore
    assert calls == []
    s.close()
    r = ConversationSession.resume(store, s.id)
    opened.append(r)
    assert r.backend is None
    with pytest.raises(BackendError, match="no backend"):
        r.send("hi")


def test_resume_releases_the_lock_when_the_factory_fails(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.close()

    def factory(session: ConversationSession) -> OpenAIBackend:
        raise RuntimeError("no backend today")

    with pytest.raises(RuntimeError):
        ConversationSession.resume(store, s.id, backend_factory=factory)
    store.lock(s.id).release()  # not left held


def test_clear_and_unclear(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="A1"), Reply(text="A2"), Reply(text="A3"), Reply(text="A4"))
    s.send("Q1")
    s.send("Q2")

    assert s.clear() == 4
    assert s.clear() == 0  # nothing left to clear: no second entry
    snap = on_disk(s)
    assert snap["context_start"] == 4 and snap["clears"] == [0]
    assert len(snap["messages"]) == 4

    s.send("fresh start")
    assert sent_messages(fake_llm) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "fresh start"},
    ]
    snap = on_disk(s)
    assert [m["content"] for m in snap["messages"]] == ["Q1", "A1", "Q2", "A2", "fresh start", "A3"]
    assert s.stats().context_messages == 2

    assert s.unclear() == 4
    assert s.unclear() == 0
    snap = on_disk(s)
    assert snap["context_start"] == 0 and "clears" not in snap

    s.send("all of it")
    assert [m["content"] for m in sent_messages(fake_llm)] == [
        SYSTEM,
        "Q1",
        "A1",
        "Q2",
        "A2",
        "fresh start",
        "A3",
        "all of it",
    ]


def test_clear_survives_resume(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    fake_llm.enqueue(Reply(text="A1"), Reply(text="A2"))
    s.send("Q1")
    s.clear()
    s.close()
    r = ConversationSession.resume(
        store, s.id, backend_factory=lambda x: OpenAIBackend(x.header.base_url or "", x.header.model)
    )
    opened.append(r)
    r.send("Q2")
    assert [m["content"] for m in sent_messages(fake_llm)] == [SYSTEM, "Q2"]
    assert r.unclear() == 2
    assert r.header.context_start == 0


def test_streaming_status_on_disk_loads_as_interrupted(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.close()
    snap = json.loads(store.path_for(s.id).read_bytes())
    snap["messages"] = [
        {"role": "user", "content": "q", "created_at": "2026-01-01T00:00:00.000Z", "status": "ok"},
        {
            "role": "assistant",
            "content": "half an ans",
            "created_at": "2026-01-01T00:00:01.000Z",
            "status": "streaming",
        },
        {"role": "user", "content": "odd", "status": "weird-status"},
    ]
    store.save(Conversation.from_json(snap))
    r = ConversationSession.resume(store, s.id)
    opened.append(r)
    assert [m.status for m in r.messages] == ["ok", "interrupted", "ok"]
    assert r.messages[1].content == "half an ans"
    assert r.messages[2].created_at == ""


def test_message_json_round_trip() -> None:
    m = Message.from_json(
        {
            "role": "assistant",
            "content": "x",
            "status": "timeout",
            "finish_reason": 3,
            "usage": {"prompt_tokens": True, "completion_tokens": 5},
            "timings": {"ttft_s": "fast", "duration_s": 2, "server": [1]},
        }
    )
    assert m.finish_reason is None
    assert m.usage is not None and m.usage.prompt_tokens is None and m.usage.completion_tokens == 5
    assert m.timings is not None and m.timings.ttft_s is None and m.timings.duration_s == 2.0
    assert m.timings.server is None
    assert Message.from_json(m.to_json()) == m


# ------------------------------------------------------------------------------------ stats, secrets


def test_stats(store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]) -> None:
    s = openai_session(store, fake_llm, opened)
    empty = s.stats()
    assert empty.turns == 0 and empty.mean_ttft_s is None and empty.last_tokens_per_second is None

    fake_llm.enqueue(Reply(text="abc de", usage=(10, 2, 4)), Reply(text="fgh", usage=(20, 1, 0)))
    s.send("12345")
    s.send("67")
    st = s.stats()

    assert st.turns == 2
    assert st.messages_by_role == {"user": 2, "assistant": 2}
    assert st.characters == 5 + 6 + 2 + 3
    assert (st.prompt_tokens, st.completion_tokens, st.cached_tokens) == (30, 3, 4)
    ttfts = [m.timings.ttft_s for m in s.messages if m.timings]
    rates = [m.timings.tokens_per_second for m in s.messages if m.timings]
    assert len(ttfts) == 2 and all(t is not None for t in ttfts)
    assert st.last_ttft_s == ttfts[-1]
    assert st.mean_ttft_s == pytest.approx(sum(ttfts) / 2)  # type: ignore[arg-type]
    assert st.last_tokens_per_second == rates[-1]
    assert st.mean_tokens_per_second == pytest.approx(sum(rates) / 2)  # type: ignore[arg-type]
    path = store.path_for(s.id)
    assert st.location == str(path)
    assert st.stored_bytes == path.stat().st_size
    assert s.last_save is not None and st.last_saved_at == s.last_save.saved_at
    assert st.context_messages == 4


def test_api_key_is_sent_but_never_saved(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession], tmp_path: Path
) -> None:
    canary = "sk-CANARY-7f3a9e1d"
    s = openai_session(store, fake_llm, opened, api_key=canary)
    fake_llm.enqueue(Reply(text="fine"))
    s.send("hello")
    assert fake_llm.requests[-1]["headers"]["authorization"] == f"Bearer {canary}"
    s.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert store.path_for(s.id) in files
    for p in files:
        assert b"CANARY" not in p.read_bytes(), p


def test_no_authorization_header_without_a_key(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.send("hello")
    assert "authorization" not in fake_llm.requests[-1]["headers"]


def test_close_releases_the_lock_and_closes_the_backend(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.send("hello")
    with pytest.raises(SessionLocked):
        store.lock(s.id)
    s.close()
    assert s.backend is not None and s.backend._client is None  # type: ignore[attr-defined]
    store.lock(s.id).release()
    s.close()  # twice is harmless


def test_close_saves_what_is_unsaved(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    s.messages.append(Message(role="user", content="kept in memory only"))
    s.unsaved = True
    s.close()
    assert on_disk(s)["messages"][-1]["content"] == "kept in memory only"


def test_title_comes_from_the_first_message(
    store: FolderStore, fake_llm: FakeLLMServer, opened: list[ConversationSession]
) -> None:
    s = openai_session(store, fake_llm, opened)
    long = "word " * 30 + "\x1b[31m"
    s.send("  first\tline\nsecond  ")
    assert s.header.title == "first line second"
    s.send(long)
    assert s.header.title == "first line second"  # only the first message names it
    t = openai_session(store, fake_llm, opened)
    t.send(long)
    assert t.header.title.endswith("…") and len(t.header.title) <= 61 and "\x1b" not in t.header.title
    assert on_disk(t)["title"] == t.header.title
