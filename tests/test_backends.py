"""The openai and ollama backends alone, against the fake server: parsing, request bodies, error mapping."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from chatcli.backends import make_backend
from chatcli.backends.base import HTTPBackend, StreamEvent, _retry_after
from chatcli.backends.ollama import DEFAULT_HOST, OllamaBackend, base_url_from_host
from chatcli.backends.openai import DEFAULT_BASE_URL, OpenAIBackend
from chatcli.errors import (
    AuthenticationError,
    BackendError,
    BackendHTTPError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ContextOverflow,
    ModelNotFound,
    RateLimited,
    StreamError,
)
from chatcli.session import GenerationParams, Timeouts, Usage

from fakellm import FakeLLMServer, Reply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
TIMEOUTS = Timeouts(connect=3.0, idle=5.0, total=10.0)


@pytest.fixture
def openai(fake_llm: FakeLLMServer) -> Iterator[OpenAIBackend]:
    backend = OpenAIBackend(fake_llm.url + "/v1", "fake-model")
    yield backend
    backend.close()


@pytest.fixture
def ollama(fake_llm: FakeLLMServer) -> Iterator[OllamaBackend]:
    backend = OllamaBackend(fake_llm.url, "fake-model")
    yield backend
    backend.close()


def run(
    backend: HTTPBackend,
    params: GenerationParams | None = None,
    timeouts: Timeouts = TIMEOUTS,
    messages: list[dict[str, str]] = MESSAGES,
) -> list[StreamEvent]:
    deadline = time.monotonic() + timeouts.total
    return list(backend.stream_chat(messages, params or GenerationParams(), timeouts, deadline))  # type: ignore


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------- openai: parsing


def test_openai_events(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="One two three", usage=(40, 3, 8)))
    events = run(openai)
    # the role-only first chunk and the ": ping" comment give no events
    assert [e.text for e in events] == ["One ", "two ", "three", "", ""]
    assert [e.finish_reason for e in events] == [None, None, None, "stop", None]
    assert events[-1].usage == Usage(prompt_tokens=40, completion_tokens=3, cached_tokens=8)
    assert all(e.usage is None for e in events[:-1])
    assert all(e.server_timings is None and e.tokens_per_second is None for e in events)


def test_openai_llamacpp_timings(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="a b", usage=(10, 2, 0), timings=True))
    last = run(openai)[-1]
    assert last.server_timings is not None
    assert last.server_timings["predicted_n"] == 2
    assert last.tokens_per_second == pytest.approx(last.server_timings["predicted_per_second"])
    assert last.usage == Usage(prompt_tokens=10, completion_tokens=2, cached_tokens=0)


def test_openai_request_body(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    run(openai)
    run(openai, GenerationParams(temperature=0.7, max_tokens=42))
    plain, tuned = (r["json"] for r in fake_llm.requests)
    assert fake_llm.requests[0]["path"] == "/v1/chat/completions"
    assert fake_llm.requests[0]["method"] == "POST"
    assert plain == {
        "model": "fake-model",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert tuned["temperature"] == 0.7 and tuned["max_tokens"] == 42


def test_openai_api_key_header(fake_llm: FakeLLMServer) -> None:
    backend = OpenAIBackend(fake_llm.url + "/v1/", "m", api_key="sk-test-123")
    try:
        assert backend.base_url == fake_llm.url + "/v1"  # trailing slash dropped
        run(backend)
    finally:
        backend.close()
    assert fake_llm.requests[0]["headers"]["authorization"] == "Bearer sk-test-123"
    assert fake_llm.requests[0]["path"] == "/v1/chat/completions"


def test_openai_finish_reason_length(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="cut", finish_reason="length"))
    assert [e.finish_reason for e in run(openai) if e.finish_reason] == ["length"]


def test_openai_empty_reply_is_complete(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(tokens=[]))
    events = run(openai)
    assert "".join(e.text for e in events) == ""
    assert events[0].finish_reason == "stop"


def test_openai_backend_is_reusable_after_an_error(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=500), Reply(text="fine"))
    with pytest.raises(BackendHTTPError):
        run(openai)
    assert "".join(e.text for e in run(openai)) == "fine"


# ---------------------------------------------------------------------------------- openai: errors


def test_openai_401_mentions_the_api_key(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=401, error_message="Incorrect API key provided: sk-abc***"))
    with pytest.raises(AuthenticationError) as info:
        run(openai)
    e = info.value
    assert e.status == 401
    assert e.server_message == "Incorrect API key provided: sk-abc***"
    assert "API key" in str(e) and "OPENAI_API_KEY" in str(e) and "(401)" in str(e)


def test_openai_403_is_an_authentication_error(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=403, error_message="forbidden"))
    with pytest.raises(AuthenticationError) as info:
        run(openai)
    assert info.value.status == 403


def test_openai_404_is_model_not_found(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=404, error_message="The model `fake-model` does not exist"))
    with pytest.raises(ModelNotFound) as info:
        run(openai)
    message = str(info.value)
    assert "'fake-model'" in message and "--model" in message and "--base-url" in message
    assert "does not exist" in message and info.value.status == 404


def test_wrong_base_url_path_is_model_not_found(fake_llm: FakeLLMServer) -> None:
    backend = OpenAIBackend(fake_llm.url + "/wrong", "m")
    try:
        with pytest.raises(ModelNotFound, match="no route"):
            run(backend)
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("header", "expected"), [("7", 7.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("soon", None), ("-3", 0.0)]
)
def test_openai_429_parses_retry_after(
    openai: OpenAIBackend, fake_llm: FakeLLMServer, header: str | None, expected: float | None
) -> None:
    fake_llm.enqueue(
        Reply(
            status=429,
            error_message="Rate limit reached",
            headers={"Retry-After": header} if header is not None else {},
        )
    )
    with pytest.raises(RateLimited) as info:
        run(openai)
    assert info.value.retry_after == expected
    assert info.value.status == 429
    assert "Rate limit reached" in str(info.value) and "429" in str(info.value)


def test_retry_after_as_an_http_date() -> None:
    value = _retry_after(formatdate(time.time() + 30, usegmt=True))
    assert value is not None and 25 <= value <= 31
    assert _retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_openai_500_carries_the_server_message(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=503, error_message="Loading model, try again"))
    with pytest.raises(BackendHTTPError) as info:
        run(openai)
    assert type(info.value) is BackendHTTPError
    assert info.value.status == 503
    assert info.value.server_message == "Loading model, try again"
    assert "server error (503): Loading model, try again" in str(info.value)


def test_a_context_error_without_numbers_is_still_an_overflow(
    openai: OpenAIBackend, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue(
        Reply(
            status=400,
            error_message="the request exceeds the available context size",
            error_type="exceed_context_size_error",
        )
    )
    with pytest.raises(ContextOverflow, match="did not fit the model's context") as info:
        run(openai)
    assert (info.value.status, info.value.window, info.value.prompt_tokens) == (400, None, None)


@pytest.mark.parametrize(
    ("style", "backend"), [("llamacpp", "openai"), ("openai", "openai"), ("ollama", "ollama")]
)
def test_overflow_errors_of_each_server_say_the_window_and_the_size(style: str, backend: str) -> None:
    with FakeLLMServer(context_window=100, overflow=style) as llm:
        b = (
            OpenAIBackend(llm.url + "/v1", "m")
            if backend == "openai"
            else OllamaBackend(llm.url, "m", num_ctx=100)
        )
        big = [{"role": "user", "content": "x" * 800}]  # 200 tokens as the fake counts
        with pytest.raises(ContextOverflow) as info:
            list(b.stream_chat(big, GenerationParams(max_tokens=10), Timeouts(), time.monotonic() + 10))
        b.close()
    assert info.value.window == 100
    assert info.value.prompt_tokens == 200
    assert "did not fit the model's context" in str(info.value)


def test_llama_cpp_states_its_window_and_counts_exactly() -> None:
    with FakeLLMServer(context_window=512, overflow="llamacpp") as llm:
        b = OpenAIBackend(llm.url + "/v1", "m")
        assert b.context_window(Timeouts()) == 512
        assert b.count_tokens([{"role": "user", "content": "y" * 40}], Timeouts()) == 10
        assert [r["path"] for r in llm.probes] == ["/props", "/apply-template", "/tokenize"]
        b.close()
    with FakeLLMServer() as other:  # a server without /props: no window, no exact count, asked once
        b = OpenAIBackend(other.url + "/v1", "m")
        assert b.context_window(Timeouts()) is None
        assert b.count_tokens([{"role": "user", "content": "y"}], Timeouts()) is None
        assert [r["path"] for r in other.probes] == ["/props"]
        b.close()


def test_ollama_window_is_the_setting_or_the_model_length_at_most_4096() -> None:
    with FakeLLMServer(model_context_length=2048) as llm:
        b = OllamaBackend(llm.url, "m")
        assert b.context_window(Timeouts()) == 2048
        b.close()
    with FakeLLMServer(model_context_length=131072) as llm:
        b = OllamaBackend(llm.url, "m")
        assert b.context_window(Timeouts()) == 4096
        reply = b.stream_chat(
            [{"role": "user", "content": "hi"}], GenerationParams(), Timeouts(), time.monotonic() + 10
        )
        list(reply)
        b.close()
        assert llm.requests[-1]["json"]["options"]["num_ctx"] == 4096  # sent, so the server runs with it
        assert OllamaBackend(llm.url, "m", num_ctx=16384).context_window(Timeouts()) == 16384


def test_openai_other_4xx(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=422, error_message="bad temperature"))
    with pytest.raises(BackendHTTPError, match=r"rejected the request \(422\): bad temperature"):
        run(openai)


def test_connection_refused_is_unavailable() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{closed_port()}/v1", "m")
    try:
        with pytest.raises(BackendUnavailable) as info:
            run(backend)
    finally:
        backend.close()
    message = str(info.value)
    assert "refused" in message.lower() and "is the server running?" in message
    assert "127.0.0.1" in message


def test_unknown_host_is_unavailable() -> None:
    backend = OpenAIBackend("http://nonexistent.invalid/v1", "m")
    try:
        with pytest.raises(BackendUnavailable) as info:
            run(backend)
    finally:
        backend.close()
    assert "unknown host" in str(info.value)
    assert "nonexistent.invalid" in str(info.value)


def test_a_200_that_is_not_an_event_stream(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="x", headers={"Content-Type": "application/json"}))
    with pytest.raises(
        StreamError, match=r"did not answer with a stream \(content type 'application/json'\)"
    ):
        run(openai)


@pytest.mark.parametrize(
    ("reply", "phrase"),
    [
        (Reply(text="a b c", cut_after=1), "closed in the middle of the reply"),
        (
            Reply(text="a b c", error_after=2, error_message="slot unavailable"),
            "reported an error during the reply: slot unavailable",
        ),
        (Reply(text="a b c", malformed_after=1), "malformed chunk"),
    ],
    ids=["cut", "in-stream-error", "malformed"],
)
def test_openai_broken_streams(
    openai: OpenAIBackend, fake_llm: FakeLLMServer, reply: Reply, phrase: str
) -> None:
    fake_llm.enqueue(reply)
    got: list[str] = []
    with pytest.raises(StreamError, match=phrase):
        for event in openai.stream_chat(MESSAGES, GenerationParams(), TIMEOUTS, time.monotonic() + 10):
            got.append(event.text)
    expected = {"cut": ["a "], "in-stream-error": ["a ", "b "], "malformed": ["a "]}
    key = "cut" if reply.cut_after else "in-stream-error" if reply.error_after else "malformed"
    assert got == expected[key]


def test_openai_idle_timeout(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="a b c", stall_after=1, stall_seconds=2.0))
    with pytest.raises(BackendTimeout) as info:
        run(openai, timeouts=Timeouts(connect=3.0, idle=0.2, total=10.0))
    assert info.value.kind == "idle" and info.value.seconds == pytest.approx(0.2)
    assert "sent nothing for 0.2 s" in str(info.value)


def test_openai_total_deadline(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text=" ".join(["w"] * 20), delay_each=0.1))
    started = time.monotonic()
    with pytest.raises(BackendTimeout) as info:
        run(openai, timeouts=Timeouts(connect=3.0, idle=5.0, total=0.4))
    assert info.value.kind == "total" and info.value.seconds == 0.4
    assert time.monotonic() - started < 1.5


def test_close_is_idempotent_and_the_backend_reopens(openai: OpenAIBackend, fake_llm: FakeLLMServer) -> None:
    run(openai)
    openai.close()
    openai.close()
    assert "".join(e.text for e in run(openai)) == "Echo: hello"


# ---------------------------------------------------------------------------------------- ollama


@pytest.mark.parametrize(
    ("host", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("myhost", "http://myhost:11434"),
        ("myhost:8080", "http://myhost:8080"),
        ("http://box:1234", "http://box:1234"),
        ("http://box:1234/", "http://box:1234"),
        ("https://box", "https://box:11434"),
        ("http://box:1234/ollama", "http://box:1234/ollama"),
        ("[::1]", "http://[::1]:11434"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("  myhost  ", "http://myhost:11434"),
    ],
)
def test_base_url_from_host(host: str | None, url: str) -> None:
    assert base_url_from_host(host) == url
    assert DEFAULT_HOST == "http://127.0.0.1:11434"


def test_ollama_events(ollama: OllamaBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="Hi there", usage=(12, 2, 0), delay_each=0.01))
    events = run(ollama)
    assert [e.text for e in events] == ["Hi ", "there", ""]
    final = events[-1]
    assert final.finish_reason == "stop"
    assert final.usage == Usage(prompt_tokens=12, completion_tokens=2, cached_tokens=None)
    assert final.server_timings is not None
    assert set(final.server_timings) == {
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
        "prompt_eval_count",
        "eval_count",
    }
    assert final.server_timings["load_duration"] == 1_000_000
    assert final.tokens_per_second == pytest.approx(2 / (final.server_timings["eval_duration"] / 1e9))
    assert all(e.finish_reason is None and e.usage is None for e in events[:-1])


def test_ollama_request_body(fake_llm: FakeLLMServer) -> None:
    plain = OllamaBackend(fake_llm.url, "llama3.2")
    tuned = OllamaBackend(fake_llm.url, "qwen", keep_alive="5m", num_ctx=4096)
    try:
        run(plain)
        run(tuned, GenerationParams(temperature=0.3, max_tokens=50))
    finally:
        plain.close()
        tuned.close()
    first, second = (r["json"] for r in fake_llm.requests)
    assert fake_llm.requests[0]["path"] == "/api/chat"
    assert first == {"model": "llama3.2", "messages": MESSAGES, "stream": True}
    assert second == {
        "model": "qwen",
        "messages": MESSAGES,
        "stream": True,
        "keep_alive": "5m",
        "options": {"temperature": 0.3, "num_predict": 50, "num_ctx": 4096},
    }


def test_ollama_done_reason_length(ollama: OllamaBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="a b", finish_reason="length"))
    assert run(ollama)[-1].finish_reason == "length"


def test_ollama_404_says_to_pull(ollama: OllamaBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=404, error_message="model 'fake-model' not found"))
    with pytest.raises(ModelNotFound) as info:
        run(ollama)
    assert "ollama pull fake-model" in str(info.value)
    assert info.value.status == 404 and info.value.server_message == "model 'fake-model' not found"


def test_ollama_500_carries_the_server_message(ollama: OllamaBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=500, error_message="llama runner process has terminated"))
    with pytest.raises(BackendHTTPError) as info:
        run(ollama)
    assert type(info.value) is BackendHTTPError
    assert info.value.server_message == "llama runner process has terminated"
    assert "llama runner process has terminated" in str(info.value)


def test_ollama_429(ollama: OllamaBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(status=429, headers={"Retry-After": "2"}))
    with pytest.raises(RateLimited) as info:
        run(ollama)
    assert info.value.retry_after == 2.0


@pytest.mark.parametrize(
    ("reply", "phrase"),
    [
        (Reply(text="a b c", cut_after=1), "closed in the middle of the reply"),
        (
            Reply(text="a b c", error_after=1, error_message="out of memory"),
            "reported an error during the reply: out of memory",
        ),
        (Reply(text="a b c", malformed_after=2), "malformed line"),
    ],
    ids=["cut", "in-stream-error", "malformed"],
)
def test_ollama_broken_streams(
    ollama: OllamaBackend, fake_llm: FakeLLMServer, reply: Reply, phrase: str
) -> None:
    fake_llm.enqueue(reply)
    with pytest.raises(StreamError, match=phrase):
        run(ollama)


def test_ollama_connection_refused() -> None:
    backend = OllamaBackend(f"http://127.0.0.1:{closed_port()}", "m")
    try:
        with pytest.raises(BackendUnavailable, match=r"(?i)refused"):
            run(backend)
    finally:
        backend.close()


def test_ollama_idle_timeout(ollama: OllamaBackend, fake_llm: FakeLLMServer) -> None:
    fake_llm.enqueue(Reply(text="a b", delay_first=2.0))
    with pytest.raises(BackendTimeout) as info:
        run(ollama, timeouts=Timeouts(connect=3.0, idle=0.2, total=10.0))
    assert info.value.kind == "idle"


# -------------------------------------------------------------------------------------- make_backend


def test_make_backend() -> None:
    o = make_backend("openai", api_key="k")
    try:
        assert isinstance(o, OpenAIBackend)
        assert (o.name, o.base_url, o.model) == ("openai", DEFAULT_BASE_URL, "gpt-4o-mini")
    finally:
        o.close()
    ol = make_backend("ollama", model="qwen2.5", base_url="http://box:1/", keep_alive="1m")
    try:
        assert isinstance(ol, OllamaBackend)
        assert (ol.name, ol.base_url, ol.model, ol.keep_alive) == ("ollama", "http://box:1", "qwen2.5", "1m")
    finally:
        ol.close()
    with pytest.raises(ConfigError, match="unknown backend 'gemini'"):
        make_backend("gemini")
    assert issubclass(StreamError, BackendError)


# ------------------------------------------------------------------------------- timeouts, local model


def test_a_server_that_connects_but_never_answers_reports_the_read_limit() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # the kernel completes the connection; nobody ever answers
        backend = OpenAIBackend(f"http://127.0.0.1:{s.getsockname()[1]}/v1", "m")
        try:
            with pytest.raises(BackendTimeout) as info:
                backend.list_models(Timeouts(connect=3.0, idle=0.2, total=10.0))
        finally:
            backend.close()
    assert info.value.kind == "idle" and info.value.seconds == pytest.approx(0.2)
    assert "did not answer within 0.2 s" in str(info.value)


def test_a_local_server_log_that_cannot_be_opened_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatcli.backends.local import LocalBackend

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(LocalBackend, "_check_installed", lambda self: model)
    backend = LocalBackend(model, n_ctx=1024, log_path=tmp_path / "no-such-folder" / "server.log")
    try:
        backend.prepare()  # never raises: the turn reports it
        assert backend.context_window(TIMEOUTS) == 1024  # never raises either
        with pytest.raises(BackendUnavailable, match="could not open the embedded model server's log"):
            backend.wait_ready()
    finally:
        backend.close()


def test_a_password_in_the_base_url_stays_out_of_error_messages(fake_llm: FakeLLMServer) -> None:
    refused = OpenAIBackend(f"http://me:s3cret-pw@127.0.0.1:{closed_port()}/v1", "m")
    try:
        with pytest.raises(BackendUnavailable) as info:
            run(refused)
    finally:
        refused.close()
    assert "s3cret" not in str(info.value) and "http://127.0.0.1:" in str(info.value)
    fake_llm.enqueue(Reply(status=500, error_message="boom"))
    backend = OpenAIBackend(fake_llm.url.replace("http://", "http://me:s3cret-pw@") + "/v1", "m")
    try:
        with pytest.raises(BackendHTTPError) as http:
            run(backend)
    finally:
        backend.close()
    assert "s3cret" not in str(http.value) and "boom" in str(http.value)


def test_a_plain_http_server_costs_no_ca_bundle_and_https_keeps_it(
    fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    loads: list[object] = []
    real = ssl.SSLContext.load_verify_locations

    def counted(ctx: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        real(ctx, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    for backend in (OpenAIBackend(fake_llm.url + "/v1", "m"), OllamaBackend(fake_llm.url.upper(), "m")):
        assert "".join(e.text for e in run(backend))
        backend.close()
    assert loads == []
    secure = OpenAIBackend("https://127.0.0.1:9/v1", "m")
    with pytest.raises(BackendUnavailable):
        run(secure)
    secure.close()
    assert len(loads) == 1  # https: certificates verified against the bundle, as before
