"""Self-tests for the fake LLM server in ``tests/fakellm.py``: it must be right before other tests lean on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakellm import FakeLLMServer, Reply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def openai_body(**extra: object) -> dict:
    body: dict = {"model": "m1", "messages": MESSAGES, "stream": True}
    body.update(extra)
    return body


def sse_data(lines: list[str]) -> list[str]:
    """The ``data:`` payloads of an SSE stream's lines, in order."""
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def stream_lines(url: str, body: dict, *, read_timeout: float = 5.0) -> tuple[httpx.Response, list[str]]:
    with (
        httpx.Client(timeout=httpx.Timeout(5.0, read=read_timeout)) as client,
        client.stream("POST", url, json=body) as response,
    ):
        return response, list(response.iter_lines())


def test_openai_stream_tokens_usage_and_done(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(text="One two three", usage=(40, 3, 8), timings=True))
    response, lines = stream_lines(
        f"{llm.url}/v1/chat/completions", openai_body(stream_options={"include_usage": True})
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers.get("transfer-encoding") == "chunked"
    assert lines[0] == ": ping"
    payloads = sse_data(lines)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == "chatcmpl-fake" and c["model"] == "m1" for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" and isinstance(c["created"], int) for c in chunks)
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert content == ["One ", "two ", "three"]
    finish = chunks[-2]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 40,
        "completion_tokens": 3,
        "total_tokens": 43,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    timings = usage_chunk["timings"]
    assert timings["cache_n"] == 8 and timings["prompt_n"] == 32 and timings["predicted_n"] == 3
    assert set(timings) == {
        "cache_n",
        "prompt_n",
        "prompt_ms",
        "prompt_per_second",
        "predicted_n",
        "predicted_ms",
        "predicted_per_second",
    }


def test_openai_stream_without_usage_request_has_no_usage_chunk(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(text="a b", finish_reason="length"))
    _, lines = stream_lines(f"{llm.url}/v1/chat/completions", openai_body())
    payloads = sse_data(lines)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == "[DONE]"
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_openai_stream_is_incremental(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b", "c"], delay_first=0.2, delay_each=0.1))
    arrivals = []
    start = time.monotonic()
    with (
        httpx.Client() as client,
        client.stream("POST", f"{llm.url}/v1/chat/completions", json=openai_body()) as response,
    ):
        headers_at = time.monotonic() - start
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    arrivals.append(time.monotonic() - start)
    assert headers_at < 0.15  # headers (and the ping) come before the first-token delay
    assert len(arrivals) == 3
    assert arrivals[0] >= 0.18
    assert arrivals[2] - arrivals[0] >= 0.18


def test_openai_non_streaming(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(text="Plain answer."))
    response = httpx.post(f"{llm.url}/v1/chat/completions", json=openai_body(stream=False))
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Plain answer."}
    assert data["choices"][0]["finish_reason"] == "stop"
    prompt = (len("Be brief.") + len("hello there")) // 4
    assert data["usage"]["prompt_tokens"] == prompt
    assert data["usage"]["completion_tokens"] == 2


def test_ollama_ndjson_final_line(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(text="Hi from ollama", usage=(12, 3, 0)))
    response, lines = stream_lines(f"{llm.url}/api/chat", {"model": "llama", "messages": MESSAGES})
    assert response.headers["content-type"] == "application/x-ndjson"
    objects = [json.loads(line) for line in lines if line]
    assert "".join(o["message"]["content"] for o in objects[:-1]) == "Hi from ollama"
    assert all(o["done"] is False and o["model"] == "llama" for o in objects[:-1])
    final = objects[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 12 and final["eval_count"] == 3
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0


def test_ollama_non_streaming(llm: FakeLLMServer) -> None:
    response = httpx.post(f"{llm.url}/api/chat", json={"model": "x", "messages": MESSAGES, "stream": False})
    data = response.json()
    assert data["done"] is True
    assert data["message"]["content"] == "Echo: hello there"


def test_openai_429_with_retry_after(llm: FakeLLMServer) -> None:
    llm.enqueue(
        Reply(
            status=429, error_message="slow down", error_type="rate_limit_error", headers={"Retry-After": "1"}
        )
    )
    response = httpx.post(f"{llm.url}/v1/chat/completions", json=openai_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_ollama_error_status(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(status=404, error_message='model "nope" not found'))
    response = httpx.post(f"{llm.url}/api/chat", json={"model": "nope", "messages": MESSAGES})
    assert response.status_code == 404
    assert response.json() == {"error": 'model "nope" not found'}


def test_cut_after_ends_stream_without_done(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b", "c", "d"], cut_after=2))
    lines: list[str] = []
    with (
        httpx.Client() as client,
        client.stream("POST", f"{llm.url}/v1/chat/completions", json=openai_body()) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        for line in response.iter_lines():
            lines.append(line)
    payloads = sse_data(lines)
    assert "[DONE]" not in payloads
    contents = [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads]
    assert contents == ["", "a", "b"]


def test_cut_after_ollama(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b", "c"], cut_after=1))
    lines: list[str] = []
    with (
        httpx.Client() as client,
        client.stream("POST", f"{llm.url}/api/chat", json={"model": "m", "messages": MESSAGES}) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        for line in response.iter_lines():
            lines.append(line)
    assert [json.loads(line)["message"]["content"] for line in lines if line] == ["a"]


def test_stall_after_gives_read_timeout(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b", "c"], stall_after=1, stall_seconds=1.0))
    lines: list[str] = []
    with (
        httpx.Client(timeout=httpx.Timeout(5.0, read=0.2)) as client,
        client.stream("POST", f"{llm.url}/v1/chat/completions", json=openai_body()) as response,
        pytest.raises(httpx.ReadTimeout),
    ):
        for line in response.iter_lines():
            lines.append(line)
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in sse_data(lines)] == ["", "a"]


def test_stop_does_not_hang_on_a_stalled_stream() -> None:
    server = FakeLLMServer(Reply(tokens=["a"], stall_after=1, stall_seconds=30.0)).start()
    with (
        httpx.Client(timeout=5.0) as client,
        client.stream("POST", f"{server.url}/v1/chat/completions", json=openai_body()) as response,
    ):
        lines = (line for line in response.iter_lines() if line)
        assert next(lines) == ": ping"
        assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
        assert json.loads(next(lines)[6:])["choices"][0]["delta"]["content"] == "a"
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.5
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in lines:
                pass


def test_error_after_yields_error_event(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b", "c"], error_after=2, error_message="model crashed"))
    _, lines = stream_lines(f"{llm.url}/v1/chat/completions", openai_body())
    payloads = [json.loads(p) for p in sse_data(lines)]  # every event is JSON: no [DONE]
    assert payloads[-1] == {
        "error": {"message": "model crashed", "type": "server_error", "param": None, "code": None}
    }
    assert [p["choices"][0]["delta"]["content"] for p in payloads[1:-1]] == ["a", "b"]


def test_error_after_ollama(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b"], error_after=1, error_message="out of memory"))
    _, lines = stream_lines(f"{llm.url}/api/chat", {"model": "m", "messages": MESSAGES})
    objects = [json.loads(line) for line in lines if line]
    assert objects[-1] == {"error": "out of memory"}
    assert len(objects) == 2


def test_malformed_after_then_continues(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(tokens=["a", "b"], malformed_after=1))
    _, lines = stream_lines(f"{llm.url}/v1/chat/completions", openai_body())
    payloads = sse_data(lines)
    assert payloads[-1] == "[DONE]"
    bad = []
    for payload in payloads[:-1]:
        try:
            json.loads(payload)
        except ValueError:
            bad.append(payload)
    assert len(bad) == 1
    assert payloads.index(bad[0]) == 2  # role chunk, "a", then the broken event


def test_requests_are_recorded_with_json_and_hook(llm: FakeLLMServer) -> None:
    seen: list[dict] = []
    llm.on_request = seen.append
    httpx.get(f"{llm.url}/health")
    httpx.post(
        f"{llm.url}/v1/chat/completions",
        json=openai_body(stream=False),
        headers={"Authorization": "Bearer sk-test"},
    )
    llm.wait_for_requests(2, timeout=2.0)
    assert [(r["method"], r["path"]) for r in llm.requests] == [
        ("GET", "/health"),
        ("POST", "/v1/chat/completions"),
    ]
    assert llm.requests[0]["json"] is None
    chat = llm.requests[1]
    assert chat["json"]["messages"] == MESSAGES
    assert chat["headers"]["authorization"] == "Bearer sk-test"
    assert seen == llm.requests
    with pytest.raises(TimeoutError):
        llm.wait_for_requests(3, timeout=0.05)


def test_echo_default_and_fifo(llm: FakeLLMServer) -> None:
    llm.enqueue(Reply(text="first"), Reply(text="second"))
    url = f"{llm.url}/v1/chat/completions"
    texts = [
        httpx.post(url, json=openai_body(stream=False)).json()["choices"][0]["message"]["content"]
        for _ in range(3)
    ]
    assert texts == ["first", "second", "Echo: hello there"]


def test_fixed_default_reply() -> None:
    with FakeLLMServer(Reply(text="always this")) as server:
        _, lines = stream_lines(f"{server.url}/api/chat", {"model": "m", "messages": MESSAGES})
    assert "".join(json.loads(line)["message"]["content"] for line in lines if line) == "always this"


def test_get_endpoints_and_404(llm: FakeLLMServer) -> None:
    assert httpx.get(f"{llm.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{llm.url}/v1/models").json() == {
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 1677610602, "owned_by": "openai"}],
    }
    assert httpx.get(f"{llm.url}/api/tags").json() == {"models": [{"name": "fake-model"}]}
    missing = httpx.get(f"{llm.url}/v1/nope")
    assert missing.status_code == 404
    assert "message" in missing.json()["error"]
    assert httpx.post(f"{llm.url}/api/nope", json={}).json()["error"].startswith("no route")


def test_standalone_process_prints_ready() -> None:
    script = Path(__file__).with_name("fakellm.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--reply-text", "from afar"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip()
        assert ready.startswith("READY http://127.0.0.1:")
        url = ready.split(" ", 1)[1]
        response = httpx.post(f"{url}/v1/chat/completions", json=openai_body(stream=False))
        assert response.json()["choices"][0]["message"]["content"] == "from afar"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
