"""A small fake LLM server on 127.0.0.1 for chatcli's tests, spoken to through real HTTP.

It speaks two protocols:

* OpenAI-compatible ``POST /v1/chat/completions``: Server-Sent Events when ``"stream": true``
  (``data: <json>`` events, a ``: ping`` comment first, ``data: [DONE]`` last), a plain
  ``chat.completion`` JSON object otherwise. Errors are ``{"error": {"message", "type", "param", "code"}}``.
* Ollama's native ``POST /api/chat``: NDJSON, one object per line, the last one with ``"done": true``
  and integer nanosecond durations. Errors are ``{"error": "message"}``.

plus ``GET /health``, ``GET /v1/models`` and ``GET /api/tags``. Streams use HTTP/1.1 chunked framing
and every event is written (and flushed) on its own, so a client sees the tokens one by one.

A context window can be set (``context_window=N`` tokens, counted as ``prompt_chars // 4``, the same count
as the default usage): a longer request is refused with HTTP 400 in the shape of ``overflow``: ``llamacpp``
(``exceed_context_size_error`` with ``n_prompt_tokens``, ``n_ctx``; the prompt alone counts), ``openai``
(``context_length_exceeded``, "maximum context length is N tokens ... M in the messages"; prompt plus
``max_tokens`` counts) or ``ollama`` (``{"error": "<llama.cpp's error as a JSON string>"}``; the request's
``options.num_ctx`` wins over the window). In ``llamacpp`` mode it also serves llama.cpp's ``GET /props``
(``default_generation_settings.n_ctx``), ``POST /apply-template`` (the contents joined) and ``POST
/tokenize`` (one token per 4 characters); Ollama's ``POST /api/show`` always answers, with
``model_info["llama.context_length"]``. Those side requests are recorded in ``probes``, not ``requests``.

Each chat POST consumes one scripted :class:`Reply` from a FIFO queue (``enqueue``); when the queue
is empty the server's default reply is used, which echoes the last user message unless told otherwise.
A reply longer than the request's ``max_tokens`` (Ollama: ``options.num_predict``) is cut there, with
finish reason ``length``.
A reply can be slow (``delay_first``, ``delay_each``), fail with an HTTP status, or break mid-stream
(``cut_after``, ``stall_after``, ``error_after``, ``malformed_after``).

A reply can reason first (``reasoning``: its tokens, streamed before the text): OpenAI-style as
``delta.reasoning_content`` or ``delta.reasoning`` (``reasoning_field``), Ollama-style as
``message.thinking`` (not when the request says ``"think": false``), with
``usage.completion_tokens_details.reasoning_tokens`` when ``reasoning_tokens`` is set. Inline ``<think>``
tags are just text: put them in ``tokens``. ``reasoning_rule`` plays DeepSeek's two rules on earlier
replies: ``"thinking"`` refuses (400) a request whose assistant messages with ``tool_calls`` lack
``reasoning_content``; ``"reasoner"`` refuses one where any message carries it.

A reply can call tools (``tool_calls``: (name, arguments JSON text) pairs, after its text). OpenAI-style
each call comes as ``delta.tool_calls`` pieces: the first with ``index``, ``id`` (``call_<k>``), ``type`` and
the name, then ``tool_call_piece`` characters of arguments at a time, the calls' pieces interleaved, and
``finish_reason: tool_calls``; Ollama-style each call whole on a line of its own, its arguments an object,
with no id. Like real servers, the fake refuses (400) a request holding a ``tool`` message whose call is not
before it, or an assistant call left without its result.

Usage::

    with FakeLLMServer() as llm:
        llm.enqueue(Reply(text="Hi there", delay_each=0.01))
        ...  # point the client at llm.url
        assert llm.requests[0]["json"]["messages"][-1]["content"] == "hello"

Standalone, for tests that need the server in another process::

    python tests/fakellm.py [--port N] [--reply-text T] [--delay-each S] [--delay-first S]

prints ``READY http://127.0.0.1:PORT`` once listening and serves until killed.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODEL_NAME = "fake-model"
CHAT_ID = "chatcmpl-fake"
OLLAMA_CREATED_AT = "2026-01-01T00:00:00Z"

# OpenAI's "code" for the statuses a client is likely to treat specially; anything else gets null.
_OPENAI_ERROR_CODES = {
    401: "invalid_api_key",
    404: "model_not_found",
    429: "rate_limit_exceeded",
}

_TOKEN_RE = re.compile(r"\S+\s*|\s+")


@dataclass
class Reply:
    """One scripted answer. ``*_after`` counts are numbers of tokens sent before the event (reasoning
    tokens first, then content)."""

    text: str = "Hello from the fake model."
    tokens: list[str] | None = None
    finish_reason: str = "stop"
    delay_first: float = 0.0
    delay_each: float = 0.0
    status: int = 200
    error_message: str = "fake error"
    error_type: str = "server_error"
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 30.0
    error_after: int | None = None
    malformed_after: int | None = None
    usage: tuple[int, int, int] | None = None
    timings: bool = False
    reasoning: list[str] | None = None
    reasoning_field: str = "reasoning_content"
    reasoning_tokens: int | None = None
    tool_calls: list[tuple[str, str]] | None = None
    tool_call_piece: int = 4

    def token_list(self) -> list[str]:
        """The tokens to stream: ``tokens`` when given, else ``text`` split into words with their spaces."""
        if self.tokens is not None:
            return list(self.tokens)
        return _TOKEN_RE.findall(self.text)

    @property
    def full_text(self) -> str:
        """What a client should end up with after a complete stream."""
        return "".join(self.token_list())


DefaultReply = Reply | Callable[[dict], Reply] | None


# --------------------------------------------------------------------------- request helpers


def _messages(body: Any) -> list[dict]:
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return [m for m in body["messages"] if isinstance(m, dict)]
    return []


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of an OpenAI content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
        return "".join(pieces)
    return str(content)


def prompt_chars(body: Any) -> int:
    """Total characters of the request's message contents (the default usage is this // 4)."""
    return sum(len(_content_text(m.get("content"))) for m in _messages(body))


def last_user_text(body: Any) -> str:
    """Content of the last ``user`` message of a chat request body, or "" when there is none."""
    for message in reversed(_messages(body)):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _capped(reply: Reply, max_tokens: Any) -> Reply:
    """``reply`` cut at ``max_tokens`` tokens (finish reason ``length``), as a server honours the limit."""
    tokens = reply.token_list()
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or len(tokens) <= max_tokens:
        return reply
    return replace(reply, tokens=tokens[: max(0, max_tokens)], finish_reason="length")


_PROBES = ("/props", "/apply-template", "/tokenize", "/api/show")


def echo_reply(request: dict) -> Reply:
    """The built-in default: ``Echo: `` followed by the last user message."""
    return Reply(text="Echo: " + last_user_text(request.get("json")))


def _dumps(obj: Any) -> bytes:
    """JSON as servers send it: UTF-8, except a lone surrogate (half an emoji), which only an escape can
    carry: then the whole object is escaped ASCII, as a server in Python would send it."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


# --------------------------------------------------------------------------- HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # (the default 5 resets connections when a team of chatcli connects at once)
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeLLMServer) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can take seconds with a slow resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return  # the client went away mid-reply: expected in tests that interrupt streams
        if isinstance(exc, OSError) and self.fake._stopping.is_set():
            return  # sockets closed under us by stop()
        sys.stderr.write(f"fakellm: error while handling a request from {client_address}:\n")
        traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeLLM/1.0"
    sys_version = ""
    server: _HTTPServer

    # ---- lifecycle

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- routing

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        self._t0 = time.monotonic()
        path = urlsplit(self.path).path
        raw = self._read_body()
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        record = {"path": path, "method": method, "headers": headers, "json": parsed}
        if path in _PROBES:
            fake.probes.append(record)
            self._probe(path, parsed)
            return
        fake._record(record)

        ollama_style = path.startswith("/api/")
        hook = fake.on_request
        if hook is not None:
            try:
                hook(record)
            except Exception as exc:  # surfaced to the client as a 500 and kept in hook_errors
                fake.hook_errors.append(exc)
                self._send_error(500, f"on_request hook raised {exc!r}", "server_error", ollama_style)
                return

        if method == "GET" and path == "/health":
            self._send_json(200, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            model = {"id": MODEL_NAME, "object": "model", "created": 1677610602, "owned_by": "openai"}
            self._send_json(200, {"object": "list", "data": [model]})  # (as OpenAI and LiteLLM answer)
        elif method == "GET" and path == "/api/tags":
            self._send_json(200, {"models": [{"name": MODEL_NAME}]})
        elif method == "POST" and path in ("/v1/chat/completions", "/api/chat"):
            if not isinstance(parsed, dict):
                self._send_error(
                    400, "request body is not a JSON object", "invalid_request_error", ollama_style
                )
                return
            if (
                self._overflows(parsed, ollama_style)
                or self._refuses_reasoning(parsed)
                or self._refuses_tool_messages(parsed, ollama_style)
            ):
                return
            reply = fake._next_reply(record)
            if ollama_style:
                self._ollama(parsed, reply)
            else:
                self._openai(parsed, reply)
        else:
            self._send_error(404, f"no route for {method} {path}", "invalid_request_error", ollama_style)

    # ---- the context window

    def _probe(self, path: str, body: Any) -> None:
        fake = self.server.fake
        if path == "/api/show":
            self._send_json(200, {"model_info": {"llama.context_length": fake.model_context_length}})
            return
        if fake.context_window is None or fake.overflow != "llamacpp":
            self._send_error(404, f"no route for {path}", "invalid_request_error", False)
        elif path == "/props":
            self._send_json(200, {"default_generation_settings": {"n_ctx": fake.context_window}})
        elif path == "/apply-template":
            text = "".join(_content_text(m.get("content")) for m in _messages(body))
            self._send_json(200, {"prompt": text})
        else:
            content = body.get("content") if isinstance(body, dict) else ""
            self._send_json(200, {"tokens": list(range(len(content or "") // 4))})

    def _refuses_reasoning(self, body: dict) -> bool:
        """DeepSeek's rules on reasoning sent back (``reasoning_rule``); True when the request was refused."""
        rule = self.server.fake.reasoning_rule
        msgs = _messages(body)
        if rule == "thinking" and any(
            m.get("role") == "assistant" and m.get("tool_calls") and not m.get("reasoning_content")
            for m in msgs
        ):
            message = "The reasoning_content in the thinking mode must be passed back to the API."
        elif rule == "reasoner" and any("reasoning_content" in m for m in msgs):
            message = "The reasoning_content is an intermediate result: remove it from the input messages."
        else:
            return False
        self._send_error(400, message, "invalid_request_error", False)
        return True

    def _refuses_tool_messages(self, body: dict, ollama_style: bool) -> bool:
        """A tool result whose call is not before it, or a call left without its result, as OpenAI refuses
        them (400); True when the request was refused. (Ollama results name the tool, not the call.)"""
        open_calls: list[tuple[str, str]] = []  # (id, name) of the calls not answered yet
        problem = None
        for m in _messages(body):
            if problem is None and open_calls and m.get("role") != "tool":
                problem = f"tool call {open_calls[0][0] or open_calls[0][1]} has no tool message answering it"
            if m.get("role") == "assistant":
                for c in m.get("tool_calls") or ():
                    open_calls.append((c.get("id") or "", c.get("function", {}).get("name", "")))
            elif m.get("role") == "tool":
                key = m.get("tool_name") if ollama_style else m.get("tool_call_id")
                found = next((k for k, (i, n) in enumerate(open_calls) if key in (i, n)), None)
                if found is None:
                    problem = problem or f"a tool message answers {key!r}, which is no call before it"
                else:
                    del open_calls[found]
        if open_calls and problem is None:
            problem = f"tool call {open_calls[0][0] or open_calls[0][1]} has no tool message answering it"
        if problem is None:
            return False
        self._send_error(400, problem, "invalid_request_error", ollama_style)
        return True

    def _overflows(self, body: dict, ollama_style: bool) -> bool:
        """Refuse a request longer than the window (in the configured shape); True when it did."""
        fake = self.server.fake
        window = fake.context_window
        if ollama_style:
            options = body.get("options") if isinstance(body.get("options"), dict) else {}
            window = options.get("num_ctx", window)  # type: ignore[union-attr]
        if window is None:
            return False
        prompt = prompt_chars(body) // 4
        if fake.overflow == "openai" and not ollama_style:
            asked = prompt + int(body.get("max_tokens") or 0)
            if asked <= window:
                return False
            message = (
                f"This model's maximum context length is {window} tokens. However, you requested {asked} "
                f"tokens ({prompt} in the messages, {asked - prompt} in the completion). Please reduce the "
                "length of the messages or completion."
            )
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
            self._send_json(400, {"error": error})
            return True
        if prompt <= window:
            return False
        inner = {
            "code": 400,
            "message": f"request ({prompt} tokens) exceeds the available context size ({window} tokens), "
            "try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": prompt,
            "n_ctx": window,
        }
        if ollama_style:
            self._send_json(400, {"error": json.dumps({"error": inner})})
        else:
            self._send_json(400, {"error": inner})
        return True

    # ---- low-level writers

    @staticmethod
    def _merge_headers(defaults: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
        overridden = {k.lower() for k in extra}
        merged = {k: v for k, v in defaults.items() if k.lower() not in overridden}
        merged.update(extra)
        return merged

    def _send_json(
        self, status: int, obj: Any, extra: dict[str, str] | None = None, *, body: bytes | None = None
    ) -> None:
        data = _dumps(obj) if body is None else body
        headers = self._merge_headers({"Content-Type": "application/json"}, extra or {})
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(
        self,
        status: int,
        message: str,
        error_type: str,
        ollama_style: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        if ollama_style:
            body: dict = {"error": message}
        else:
            body = {
                "error": {
                    "message": message,
                    "type": error_type,
                    "param": None,
                    "code": _OPENAI_ERROR_CODES.get(status),
                }
            }
        self._send_json(status, body, extra)

    def _start_stream(self, content_type: str, extra: dict[str, str]) -> None:
        defaults = {"Content-Type": content_type, "Cache-Control": "no-cache"}
        self.send_response(200)
        for key, value in self._merge_headers(defaults, extra).items():
            self.send_header(key, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        """Write one HTTP chunk and flush it (an empty chunk would end the body, so skip those)."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _abort(self) -> None:
        """Drop the connection without finishing the response (no terminating chunk)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- shared reply logic

    def _usage(self, body: dict, reply: Reply, tokens: list[str]) -> tuple[int, int, int]:
        if reply.usage is not None:
            prompt, completion, cached = reply.usage
            return int(prompt), int(completion), int(cached)
        return prompt_chars(body) // 4, len(tokens), 0

    def _emit_tokens(
        self,
        tokens: list[str],
        reply: Reply,
        send_token: Callable[[str], None],
        send_malformed: Callable[[], None],
        send_error: Callable[[], None],
    ) -> bool:
        """Send the tokens with their delays and scripted breakages; False when the stream ended early."""
        fake = self.server.fake
        n = len(tokens)

        def at(limit: int | None, i: int) -> bool:
            return limit is not None and min(max(limit, 0), n) == i

        for i in range(n + 1):
            if at(reply.malformed_after, i):
                send_malformed()
            if at(reply.error_after, i):
                send_error()
                self._end_chunks()
                return False
            if at(reply.cut_after, i):
                self._abort()
                return False
            if at(reply.stall_after, i):
                fake._sleep(reply.stall_seconds)
                self._abort()
                return False
            if i == n:
                break
            if i > 0 and not fake._sleep(reply.delay_each):
                self._abort()
                return False
            send_token(tokens[i])
        return True

    def _non_stream_breakage(self, reply: Reply, tokens: list[str], ollama_style: bool) -> bool:
        """Delays and breakages for a non-streaming request; True when a normal reply should follow."""
        fake = self.server.fake
        total_delay = reply.delay_first + reply.delay_each * max(len(tokens) - 1, 0)
        if not fake._sleep(total_delay):
            self._abort()
            return False
        if reply.cut_after is not None:
            self._abort()
            return False
        if reply.stall_after is not None:
            fake._sleep(reply.stall_seconds)
            self._abort()
            return False
        if reply.error_after is not None:
            self._send_error(500, reply.error_message, reply.error_type, ollama_style, reply.headers)
            return False
        if reply.malformed_after is not None:
            self._send_json(200, None, reply.headers, body=b'{"id": "chatcmpl-fake", "choices": [')
            return False
        return True

    # ---- OpenAI

    def _openai(self, body: dict, reply: Reply) -> None:
        fake = self.server.fake
        if reply.status != 200:
            self._send_error(reply.status, reply.error_message, reply.error_type, False, reply.headers)
            return
        reply = _capped(reply, body.get("max_tokens"))
        model = body.get("model") or MODEL_NAME
        tokens = reply.token_list()
        created = int(time.time())
        prompt, completion, cached = self._usage(body, reply, tokens)

        def usage_obj() -> dict:
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            if reply.reasoning_tokens is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
            return usage

        def timings_obj(t_first: float, t_end: float) -> dict:
            prompt_ms = max((t_first - self._t0) * 1000.0, 0.001)
            predicted_ms = max((t_end - t_first) * 1000.0, 0.001)
            prompt_n = max(prompt - cached, 0)
            return {
                "cache_n": cached,
                "prompt_n": prompt_n,
                "prompt_ms": prompt_ms,
                "prompt_per_second": prompt_n * 1000.0 / prompt_ms,
                "predicted_n": completion,
                "predicted_ms": predicted_ms,
                "predicted_per_second": completion * 1000.0 / predicted_ms,
            }

        if not body.get("stream"):
            if not self._non_stream_breakage(reply, tokens, False):
                return
            now = time.monotonic()
            result: dict = {
                "id": CHAT_ID,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": usage_obj(),
            }
            if reply.timings:
                result["timings"] = timings_obj(now, now)
            self._send_json(200, result, reply.headers)
            return

        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            obj: dict = {
                "id": CHAT_ID,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if include_usage:
                obj["usage"] = None  # as OpenAI does on every chunk but the last when usage is asked for
            return obj

        def event(obj: dict) -> None:
            self._chunk(b"data: " + _dumps(obj) + b"\n\n")

        def malformed() -> None:
            self._chunk(b'data: {"id":"chatcmpl-fake","choices":[{"delta":\n\n')

        def error_event() -> None:
            event(
                {
                    "error": {
                        "message": reply.error_message,
                        "type": reply.error_type,
                        "param": None,
                        "code": None,
                    }
                }
            )

        self._start_stream("text/event-stream", reply.headers)
        self._chunk(b": ping\n\n")
        if not fake._sleep(reply.delay_first):
            self._abort()
            return
        t_first = time.monotonic()
        event(chunk({"role": "assistant", "content": ""}))
        thought = ["\x00r" + t for t in reply.reasoning or ()]  # (marked: sent as reasoning)

        def send(tok: str) -> None:
            if tok.startswith("\x00r"):
                event(chunk({reply.reasoning_field: tok[2:]}))
            else:
                event(chunk({"content": tok}))

        if not self._emit_tokens([*thought, *tokens], reply, send, malformed, error_event):
            return
        for pieces in _openai_call_pieces(reply):
            event(chunk({"tool_calls": pieces}))
        t_end = time.monotonic()
        calls = reply.tool_calls and reply.finish_reason == "stop"
        event(chunk({}, "tool_calls" if calls else reply.finish_reason))
        if include_usage:
            final: dict = {
                "id": CHAT_ID,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage_obj(),
            }
            if reply.timings:
                final["timings"] = timings_obj(t_first, t_end)
            event(final)
        self._chunk(b"data: [DONE]\n\n")
        self._end_chunks()

    # ---- Ollama

    def _ollama(self, body: dict, reply: Reply) -> None:
        fake = self.server.fake
        if reply.status != 200:
            self._send_error(reply.status, reply.error_message, reply.error_type, True, reply.headers)
            return
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        reply = _capped(reply, options.get("num_predict"))  # type: ignore[union-attr]
        model = body.get("model") or MODEL_NAME
        tokens = reply.token_list()
        prompt, completion, _cached = self._usage(body, reply, tokens)

        def final_fields(t_first: float, t_end: float) -> dict:
            load_ns = 1_000_000
            prompt_ns = max(int((t_first - self._t0) * 1e9), 1)
            eval_ns = max(int((t_end - t_first) * 1e9), 1)
            return {
                "done": True,
                "done_reason": reply.finish_reason,
                "total_duration": load_ns + prompt_ns + eval_ns,
                "load_duration": load_ns,
                "prompt_eval_count": prompt,
                "prompt_eval_duration": prompt_ns,
                "eval_count": completion,
                "eval_duration": eval_ns,
            }

        if body.get("stream") is False:
            if not self._non_stream_breakage(reply, tokens, True):
                return
            now = time.monotonic()
            result = {
                "model": model,
                "created_at": OLLAMA_CREATED_AT,
                "message": {"role": "assistant", "content": "".join(tokens)},
            }
            result.update(final_fields(now, now))
            self._send_json(200, result, reply.headers)
            return

        def line(obj: dict) -> None:
            self._chunk(_dumps(obj) + b"\n")

        def token_line(tok: str) -> None:
            if tok.startswith("\x00r"):
                message = {"role": "assistant", "content": "", "thinking": tok[2:]}
            else:
                message = {"role": "assistant", "content": tok}
            line({"model": model, "created_at": OLLAMA_CREATED_AT, "message": message, "done": False})

        def malformed() -> None:
            self._chunk(b'{"model":"fake-model","message":{"role":\n')

        self._start_stream("application/x-ndjson", reply.headers)
        if not fake._sleep(reply.delay_first):
            self._abort()
            return
        t_first = time.monotonic()
        thinks = body.get("think") is not False
        thought = ["\x00r" + t for t in reply.reasoning or ()] if thinks else []
        if not self._emit_tokens(
            [*thought, *tokens], reply, token_line, malformed, lambda: line({"error": reply.error_message})
        ):
            return
        for name, arguments in reply.tool_calls or ():
            call = {"function": {"name": name, "arguments": json.loads(arguments)}}
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
            line({"model": model, "created_at": OLLAMA_CREATED_AT, "message": message, "done": False})
        final = {
            "model": model,
            "created_at": OLLAMA_CREATED_AT,
            "message": {"role": "assistant", "content": ""},
        }
        final.update(final_fields(t_first, time.monotonic()))
        line(final)
        self._end_chunks()


def _openai_call_pieces(reply: Reply) -> list[list[dict]]:
    """The ``delta.tool_calls`` of each chunk for the reply's calls: every call's first piece (index, id,
    type, name), then their arguments ``tool_call_piece`` characters at a time, one piece of each call in
    turn (so the calls interleave)."""
    calls = reply.tool_calls or []
    out: list[list[dict]] = [
        [{"index": k, "id": f"call_{k}", "type": "function", "function": {"name": name, "arguments": ""}}]
        for k, (name, _) in enumerate(calls)
    ]
    step = max(1, reply.tool_call_piece)
    longest = max((len(a) for _, a in calls), default=0)
    for at in range(0, longest, step):
        for k, (_, arguments) in enumerate(calls):
            if at < len(arguments):
                out.append([{"index": k, "function": {"arguments": arguments[at : at + step]}}])
    return out


# --------------------------------------------------------------------------- public server


class FakeLLMServer:
    """The fake server. ``start()`` (or ``with``) binds 127.0.0.1 and serves in a daemon thread."""

    def __init__(
        self,
        default: DefaultReply = None,
        *,
        port: int = 0,
        context_window: int | None = None,
        overflow: str = "llamacpp",
        model_context_length: int = 131072,
        reasoning_rule: str | None = None,
    ) -> None:
        # default: a Reply, or a callable taking the recorded request and returning one; None means echo.
        self.default = default
        self.context_window = context_window
        self.overflow = overflow
        self.reasoning_rule = reasoning_rule
        self.model_context_length = model_context_length
        self.on_request: Callable[[dict], None] | None = None
        self.requests: list[dict] = []
        self.probes: list[dict] = []  # /props, /tokenize, /apply-template, /api/show
        self.hook_errors: list[BaseException] = []
        self.port = 0
        self.url = ""
        self._wanted_port = port
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> FakeLLMServer:
        if self._httpd is not None:
            raise RuntimeError("FakeLLMServer is already running")
        self._stopping.clear()
        self._httpd = _HTTPServer(("127.0.0.1", self._wanted_port), self)
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakellm-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()  # wakes every delay and stall at once
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # unblocks handlers waiting on idle keep-alive sockets
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- scripting and inspection

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """How many enqueued replies have not been consumed yet."""
        with self._lock:
            return len(self._queue)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(
                    f"fake LLM got {len(self.requests)} request(s), expected {n} within {timeout}s"
                )

    # ---- used by the handler threads

    def _record(self, record: dict) -> None:
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()

    def _next_reply(self, record: dict) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        default = self.default
        if default is None:
            return echo_reply(record)
        if isinstance(default, Reply):
            return default
        return default(record)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; False when woken by stop()."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake LLM server (OpenAI SSE and Ollama NDJSON).")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--reply-text", default=None, help="text of every reply (default: echo the user)")
    parser.add_argument("--delay-each", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--delay-first", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--reasoning", default=None, help="reasoning streamed before every reply's text")
    parser.add_argument(
        "--reasoning-field", default="reasoning_content", help="its OpenAI delta field (or 'reasoning')"
    )
    parser.add_argument(
        "--tool-call",
        default=None,
        metavar="NAME=JSON",
        help="answer a user's message by calling tool NAME with these arguments, and a tool's result with "
        "'The tool said: <result>'",
    )
    args = parser.parse_args(argv)
    thought = _TOKEN_RE.findall(args.reasoning) if args.reasoning else None
    timing = {"delay_first": args.delay_first, "delay_each": args.delay_each}
    shape = {"reasoning": thought, "reasoning_field": args.reasoning_field, **timing}

    default: DefaultReply
    if args.tool_call is not None:
        name, _, arguments = args.tool_call.partition("=")

        def default(record: dict) -> Reply:
            sent = _messages(record.get("json"))
            if sent and sent[-1].get("role") == "tool":
                return Reply(text="The tool said: " + _content_text(sent[-1].get("content")), **shape)  # type: ignore[arg-type]
            return Reply(text="Let me look that up.", tool_calls=[(name, arguments or "{}")], **shape)  # type: ignore[arg-type]
    elif args.reply_text is None:

        def default(record: dict) -> Reply:
            return Reply(text="Echo: " + last_user_text(record.get("json")), **shape)  # type: ignore[arg-type]
    else:
        default = Reply(text=args.reply_text, **shape)  # type: ignore[arg-type]

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    server = FakeLLMServer(default, port=args.port).start()
    print(f"READY {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
