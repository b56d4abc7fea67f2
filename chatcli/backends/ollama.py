"""Ollama's native ``POST {base_url}/api/chat``: newline-delimited JSON (``application/x-ndjson``).

Each line: ``{"model", "created_at", "message": {"role": "assistant", "content": "..."}, "done": false}``;
a thinking model (with ``think``) sends its reasoning as ``message.thinking`` before its content.
The last line has ``"done": true``, ``done_reason`` (``stop``/``length``) and the counts and durations:
``prompt_eval_count``, ``eval_count``, ``total_duration``, ``load_duration``, ``prompt_eval_duration``,
``eval_duration`` (durations in **nanoseconds**; zero-valued fields may be absent). Errors come as
``{"error": "..."}`` with an HTTP status, or as such a line inside a 200 stream.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from chatcli.backends.base import HTTPBackend, ModelInfo, StreamEvent, ToolCallDelta, loads_chunk
from chatcli.errors import BackendError, BackendHTTPError, ModelNotFound, StreamError
from chatcli.messages import int_or_none

if TYPE_CHECKING:
    import httpx

    from chatcli.messages import GenerationParams, Timeouts

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_NUM_CTX = 4096  # tokens: Ollama's default window below 24 GiB of VRAM (its docs), the least it uses
_DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def base_url_from_host(host: str | None) -> str:
    """The base URL for an ``OLLAMA_HOST`` value such as ``0.0.0.0:11434``, ``myhost`` or
    ``http://box:11434`` (Ollama's own conventions: default port 11434, 0.0.0.0 means this machine)."""
    if not host:
        return DEFAULT_HOST
    host = host.strip().rstrip("/")
    scheme = "http"
    if "://" in host:
        scheme, host = host.split("://", 1)
    hostport, _, path = host.partition("/")
    has_port = "]:" in hostport if hostport.startswith("[") else ":" in hostport
    if not has_port:
        hostport += ":11434"
    if hostport.startswith("0.0.0.0:"):
        hostport = "127.0.0.1:" + hostport.split(":", 1)[1]
    return f"{scheme}://{hostport}" + (f"/{path}" if path else "")


class OllamaBackend(HTTPBackend):
    """Streams from Ollama's native chat API. ``keep_alive`` (a duration such as ``"5m"``, Ollama's
    format) is passed through when set; ``num_ctx``: the context window in tokens sent as
    ``options.num_ctx`` (None: decided by ``context_window``, and not sent before that); ``think``: Ollama's
    ``think`` request field (True: a thinking model reasons and streams it as ``message.thinking``; False:
    it answers without; None: not sent, the model's default)."""

    name = "ollama"

    def __init__(
        self,
        base_url: str = DEFAULT_HOST,
        model: str = "llama3.2",
        keep_alive: str | None = None,
        num_ctx: int | None = None,
        think: bool | None = None,
    ) -> None:
        super().__init__(base_url, model)
        self.keep_alive = keep_alive
        self.num_ctx = num_ctx
        self.think = think

    def request_body(
        self, messages: list[dict[str, Any]], params: GenerationParams, tools: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """The ``/api/chat`` JSON body: ``model``, ``messages`` (``ollama_messages``), ``stream``, ``tools``
        (in the OpenAI shape, which Ollama takes) when there are any, ``think`` and ``keep_alive`` when set,
        and
        ``options`` holding what is set of ``temperature``, ``top_p``, ``repeat_penalty``, ``num_predict``
        (``max_tokens``, tokens) and ``num_ctx`` (tokens)."""
        options: dict[str, Any] = {}
        if params.temperature is not None:
            options["temperature"] = params.temperature
        if params.max_tokens is not None:
            options["num_predict"] = params.max_tokens
        if params.top_p is not None:
            options["top_p"] = params.top_p
        if params.repeat_penalty is not None:
            options["repeat_penalty"] = params.repeat_penalty
        if self.num_ctx is not None:
            options["num_ctx"] = self.num_ctx
        body: dict[str, Any] = {"model": self.model, "messages": ollama_messages(messages), "stream": True}
        if tools:
            body["tools"] = list(tools)
        if self.think is not None:
            body["think"] = self.think
        if options:
            body["options"] = options
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        timeouts: Timeouts,
        deadline: float,
        *,
        tools: Sequence[dict[str, Any]] = (),
    ) -> Generator[StreamEvent, None, None]:
        """Stream ``POST /api/chat`` (see ``Backend.stream_chat``; Ollama /api/chat NDJSON lines). The
        last event has ``done_reason`` (``stop`` when absent), usage from ``prompt_eval_count`` and
        ``eval_count``, the ``*_duration`` fields (nanoseconds) and tokens/s from ``eval_count /
        eval_duration``; ``message.tool_calls`` (each call whole) as ToolCallDeltas numbered across the
        stream. Raises, while iterating, the errors of ``Backend.stream_chat``; StreamError for a
        line that is not a JSON object, an ``error`` line, or a stream that ends before ``"done": true``."""
        body = self.request_body(messages, params, tools)

        def parse(response: httpx.Response, deadline: float) -> Generator[StreamEvent, None, None]:
            return self._parse_ndjson(response, deadline, timeouts)

        return self._stream("POST", "/api/chat", body, timeouts, deadline, parse)

    def _parse_ndjson(
        self, response: httpx.Response, deadline: float, timeouts: Timeouts
    ) -> Generator[StreamEvent, None, None]:
        from chatcli.messages import Usage

        done, calls = False, 0
        for line in response.iter_lines():
            self.check_deadline(deadline, timeouts)
            if not line.strip():
                continue
            try:
                obj = loads_chunk(line)
            except orjson.JSONDecodeError:
                raise StreamError(f"{self.display_url} sent a malformed line: {line[:80]!r}") from None
            if not isinstance(obj, dict):
                raise StreamError(f"{self.display_url} sent a malformed line: {line[:80]!r}")
            if "error" in obj:
                raise StreamError(f"{self.display_url} reported an error during the reply: {obj['error']}")
            message = obj.get("message")
            message = message if isinstance(message, dict) else {}
            text, thinking = message.get("content"), message.get("thinking")
            event = StreamEvent(
                text=text if isinstance(text, str) else "",
                reasoning=thinking if isinstance(thinking, str) else "",
                tool_calls=_calls(message.get("tool_calls"), calls),
            )
            calls += len(event.tool_calls)
            if obj.get("done") is True:
                done = True
                event.finish_reason = (
                    obj.get("done_reason") if isinstance(obj.get("done_reason"), str) else "stop"
                )
                event.usage = Usage(
                    prompt_tokens=int_or_none(obj.get("prompt_eval_count")),
                    completion_tokens=int_or_none(obj.get("eval_count")),
                )
                server = {k: obj[k] for k in _DURATIONS if int_or_none(obj.get(k)) is not None}
                server.update(
                    {
                        k: obj[k]
                        for k in ("prompt_eval_count", "eval_count")
                        if int_or_none(obj.get(k)) is not None
                    }
                )
                event.server_timings = server
                n, ns = int_or_none(obj.get("eval_count")), int_or_none(obj.get("eval_duration"))
                if n and ns:
                    event.tokens_per_second = n / (ns / 1e9)
                yield event
                break
            if event.text or event.reasoning or event.tool_calls:
                yield event
        if not done:
            raise StreamError(f"the reply from {self.display_url} ended before it was complete")

    def context_window(self, timeouts: Timeouts) -> int | None:
        """The window in tokens: ``num_ctx`` when set (``context_window``); else the model's own context
        length (``POST /api/show``, ``model_info["<arch>.context_length"]``) but at most DEFAULT_NUM_CTX,
        Ollama's smallest default (DEFAULT_NUM_CTX when ``/api/show`` fails or says none). Either way it is
        kept as ``num_ctx`` and sent as ``options.num_ctx``, so the server runs with the window chatcli sizes
        requests for (Ollama would otherwise cut a longer prompt silently). Never None; never raises."""
        if self.num_ctx is None:
            try:
                shown = self.get_json("/api/show", timeouts, {"model": self.model})
            except BackendError:
                shown = None
            info = shown.get("model_info") if isinstance(shown, dict) else None
            lengths = [
                v
                for k, v in (info.items() if isinstance(info, dict) else ())
                if k.endswith(".context_length") and int_or_none(v)
            ]
            self.num_ctx = min([DEFAULT_NUM_CTX, *lengths])
        return self.num_ctx

    def list_models(self, timeouts: Timeouts) -> list[ModelInfo]:
        """``GET /api/tags``: the models pulled into this Ollama, ``details`` from ``size`` (bytes),
        ``modified_at`` and ``details.{parameter_size, quantization_level, family}``. Raises as
        ``HTTPBackend.get_json``, and StreamError when the answer holds no ``models`` list."""
        payload = self.get_json("/api/tags", timeouts)
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise StreamError(f"{self.display_url}/api/tags did not list models")
        out = []
        for m in models:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                details = {k: m[k] for k in ("size", "modified_at") if k in m}
                extra: dict[str, Any] = m["details"] if isinstance(m.get("details"), dict) else {}
                details.update(
                    {k: extra[k] for k in ("parameter_size", "quantization_level", "family") if k in extra}
                )
                out.append(ModelInfo(m["name"], details))
        return out

    def error_message(self, payload: Any, text: str) -> tuple[str, str]:
        """(message, "") from Ollama's ``{"error": "..."}``, else the raw text; cut to 300 characters."""
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"].strip()[:300], ""
        return text.strip()[:300], ""

    def http_error(self, response: httpx.Response) -> BackendHTTPError:
        """As ``HTTPBackend.http_error``, but a 404 is Ollama's "model not found": ModelNotFound saying to
        ``ollama pull`` it."""
        err = super().http_error(response)
        if response.status_code == 404:
            return ModelNotFound(
                f"Ollama at {self.display_url} has no model {self.model!r} (404): pull it with "
                f"`ollama pull {self.model}` or pick another with --model",
                err.status,
                err.server_message,
            )
        return err


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat-format dicts (``chatcli.wire.to_openai``) as ``/api/chat`` takes them: reasoning as
    ``thinking``, a tool call's ``arguments`` as an object (``{"function": {"name", "arguments"}}``), a
    tool result with the ``tool_name`` of its call, a ``null`` content as "". Plain ``{"role", "content"}``
    dicts pass as they are."""
    out = []
    names: dict[str, str] = {}  # call id -> tool name, for the results
    for m in messages:
        if len(m) == 2 and isinstance(m.get("content"), str):
            out.append(m)
            continue
        d = {k: v for k, v in m.items() if k not in ("reasoning_content", "tool_calls", "tool_call_id")}
        if m.get("role") == "tool" and m.get("tool_call_id") in names:
            d["tool_name"] = names[m["tool_call_id"]]
        d["content"] = m.get("content") or ""
        if m.get("reasoning_content"):
            d["thinking"] = m["reasoning_content"]
        if m.get("tool_calls"):
            names.update((c["id"], c["function"]["name"]) for c in m["tool_calls"])
            d["tool_calls"] = [
                {
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": _arguments(c["function"]["arguments"]),
                    }
                }
                for c in m["tool_calls"]
            ]
        out.append(d)
    return out


def _calls(found: Any, first: int) -> tuple[ToolCallDelta, ...]:
    """``message.tool_calls`` (``[{"function": {"name", "arguments": {...}}, "id"?}]``) as whole
    ToolCallDeltas numbered from ``first``; entries without a name are left out."""
    if not isinstance(found, list):
        return ()
    out: list[ToolCallDelta] = []
    for call in found:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            continue
        args = fn.get("arguments")
        text = args if isinstance(args, str) else orjson.dumps({} if args is None else args).decode()
        ident = call.get("id")
        out.append(
            ToolCallDelta(
                first + len(out), ident if isinstance(ident, str) and ident else None, fn["name"], text
            )
        )
    return tuple(out)


def _arguments(text: str) -> Any:
    """A tool call's JSON arguments as an object (Ollama's form); text that is not JSON as it is."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
