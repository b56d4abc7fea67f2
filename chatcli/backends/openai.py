"""OpenAI-compatible ``POST {base_url}/chat/completions`` with ``stream: true`` (OpenAI, llama.cpp, vLLM,
LM Studio, Ollama's /v1).

The stream is Server-Sent Events read with httpx-sse: ``data: <chat.completion.chunk JSON>`` events and
``data: [DONE]`` at the end. Reply text is ``choices[0].delta.content``; ``finish_reason`` comes on the last
choice chunk (``tool_calls`` when the model calls tools: the calls come as ``delta.tool_calls`` pieces joined
by ``index``); with ``stream_options.include_usage`` a final chunk with ``choices: []`` carries ``usage``
(``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details.cached_tokens``). llama.cpp adds
``timings`` (milliseconds; ``predicted_per_second`` in tokens/s). An error may come as an HTTP status with
``{"error": {"message", "type", "code"}}`` or inside the stream as ``data: {"error": {...}}``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from chatcli.backends.base import HTTPBackend, ModelInfo, StreamEvent, ToolCallDelta, loads_chunk
from chatcli.errors import BackendError, StreamError
from chatcli.messages import int_or_none

if TYPE_CHECKING:
    import httpx

    from chatcli.messages import GenerationParams, Timeouts

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIBackend(HTTPBackend):
    """Streams from an OpenAI-compatible server. ``base_url`` ends before ``/chat/completions``
    (e.g. ``https://api.openai.com/v1``); ``api_key`` is sent as a Bearer token and stored nowhere else."""

    name = "openai"

    def __init__(
        self, base_url: str = DEFAULT_BASE_URL, model: str = "gpt-4o-mini", api_key: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(base_url, model, headers)

    def request_body(
        self, messages: list[dict[str, Any]], params: GenerationParams, tools: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """The ``/chat/completions`` JSON body: ``model``, ``messages`` (OpenAI chat-format dicts),
        ``stream`` with ``stream_options.include_usage``, ``tools`` when there are any, and ``temperature``,
        ``top_p``, ``max_tokens`` (tokens) when set; ``repeat_penalty`` is not an OpenAI field and is left
        out here."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = list(tools)
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
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
        """Stream ``POST /chat/completions`` (see ``Backend.stream_chat``; fields as in the OpenAI
        chat.completion.chunk). Raises, while iterating, the errors of ``Backend.stream_chat``; StreamError
        when the answer is not ``text/event-stream``, a chunk is not JSON, a chunk holds ``error``, or the
        stream ends with neither ``[DONE]`` nor a ``finish_reason``."""
        body = self.request_body(messages, params, tools)

        def parse(response: httpx.Response, deadline: float) -> Generator[StreamEvent, None, None]:
            return self._parse_sse(response, deadline, timeouts)

        return self._stream("POST", "/chat/completions", body, timeouts, deadline, parse)

    def _parse_sse(
        self, response: httpx.Response, deadline: float, timeouts: Timeouts
    ) -> Generator[StreamEvent, None, None]:
        from httpx_sse import EventSource

        ctype = response.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            raise StreamError(
                f"{self.display_url} did not answer with a stream (content type {ctype or 'none'!r}); "
                f"is it an OpenAI-compatible server?"
            )
        done = finished = False
        for sse in EventSource(response).iter_sse():
            self.check_deadline(deadline, timeouts)
            data = sse.data
            if not data:
                continue
            if data.strip() == "[DONE]":
                done = True
                break
            try:
                chunk = loads_chunk(data)
            except orjson.JSONDecodeError:
                raise StreamError(f"{self.display_url} sent a malformed chunk: {data[:80]!r}") from None
            if not isinstance(chunk, dict):
                raise StreamError(f"{self.display_url} sent a malformed chunk: {data[:80]!r}")
            if "error" in chunk:
                msg, _ = self.error_message(chunk, data)
                raise StreamError(f"{self.display_url} reported an error during the reply: {msg}")
            event = _event_from_chunk(chunk)
            if event.finish_reason:
                finished = True
            if (
                event.text
                or event.reasoning
                or event.tool_calls
                or event.finish_reason
                or event.usage
                or event.server_timings
            ):
                yield event
        if not done and not finished:
            raise StreamError(f"the reply from {self.display_url} ended before it was complete")

    # -- llama.cpp's own endpoints, when the server is llama.cpp (it serves them beside /v1) ---------------
    _props: dict[str, Any] | None = None  # GET /props, once; {} when the server has none

    def _root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _llama_props(self, timeouts: Timeouts) -> dict[str, Any]:
        if self._props is None:
            from chatcli.messages import Timeouts

            quick = Timeouts(connect=min(timeouts.connect, 3.0), idle=min(timeouts.idle, 3.0), total=5.0)
            try:
                props = self.get_json("", quick, url=self._root() + "/props")
            except BackendError:
                props = None
            self._props = props if isinstance(props, dict) else {}
        return self._props

    def context_window(self, timeouts: Timeouts) -> int | None:
        """llama.cpp's ``GET /props`` ``default_generation_settings.n_ctx`` in tokens (asked once, with at
        most 5 s for the answer); None from any other server or on any failure."""
        settings = self._llama_props(timeouts).get("default_generation_settings")
        n_ctx = int_or_none(settings.get("n_ctx")) if isinstance(settings, dict) else None
        return n_ctx if n_ctx and n_ctx > 0 else None

    def count_tokens(self, messages: list[dict[str, Any]], timeouts: Timeouts) -> int | None:
        """On llama.cpp: ``POST /apply-template`` (the exact prompt the chat template makes of ``messages``),
        then ``POST /tokenize``; the number of tokens. None from any other server, or on any failure."""
        if self.context_window(timeouts) is None:
            return None
        root = self._root()
        try:
            prompt = self.get_json("", timeouts, {"messages": messages}, url=root + "/apply-template")
            if not isinstance(prompt, dict) or not isinstance(prompt.get("prompt"), str):
                return None
            tokens = self.get_json("", timeouts, {"content": prompt["prompt"]}, url=root + "/tokenize")
        except BackendError:
            return None
        found = tokens.get("tokens") if isinstance(tokens, dict) else None
        return len(found) if isinstance(found, list) else None

    def list_models(self, timeouts: Timeouts) -> list[ModelInfo]:
        """``GET /models`` (see the module-level ``list_models``)."""
        return list_models(self, timeouts)

    def error_message(self, payload: Any, text: str) -> tuple[str, str]:
        """(message, type) from an OpenAI error body ``{"error": {"message", "type", ...}}``; also takes
        ``{"error": "..."}`` and ``{"message": "..."}`` as other compatible servers send, else the raw text.
        The message is cut to 300 characters."""
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):
                return str(err.get("message") or "").strip()[:300], str(err.get("type") or "")
            if isinstance(err, str):
                return err.strip()[:300], ""
            if isinstance(payload.get("message"), str):
                return payload["message"].strip()[:300], ""
        return text.strip()[:300], ""


def _event_from_chunk(chunk: dict[str, Any]) -> StreamEvent:
    """The StreamEvent of one chat.completion.chunk: ``choices[0].delta.content``, its reasoning
    (``delta.reasoning_content``: llama.cpp, DeepSeek, vLLM; ``delta.reasoning``: OpenRouter, newer vLLM) and
    ``finish_reason``, ``usage`` (``prompt_tokens_details.cached_tokens``, else llama.cpp's
    ``timings.cache_n``; ``completion_tokens_details.reasoning_tokens``) and llama.cpp's ``timings``
    (``predicted_per_second``: tokens/s)."""
    from chatcli.messages import Usage

    event = StreamEvent()
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                event.text = delta["content"]
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str):
                event.reasoning = thought
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                event.tool_calls = tuple(d for d in map(_call_delta, calls) if d is not None)
        if isinstance(choice.get("finish_reason"), str):
            event.finish_reason = choice["finish_reason"]
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        out = usage.get("completion_tokens_details")
        reasoning = out.get("reasoning_tokens") if isinstance(out, dict) else None
        event.usage = Usage(
            prompt_tokens=int_or_none(usage.get("prompt_tokens")),
            completion_tokens=int_or_none(usage.get("completion_tokens")),
            cached_tokens=int_or_none(cached),
            reasoning_tokens=int_or_none(reasoning),
        )
    timings = chunk.get("timings")
    if isinstance(timings, dict):
        event.server_timings = timings
        rate = timings.get("predicted_per_second")
        if isinstance(rate, (int, float)) and rate > 0:
            event.tokens_per_second = float(rate)
        if (
            event.usage is not None
            and event.usage.cached_tokens is None
            and int_or_none(timings.get("cache_n")) is not None
        ):
            event.usage.cached_tokens = int_or_none(timings.get("cache_n"))
    return event


def _call_delta(piece: Any) -> ToolCallDelta | None:
    """A ``delta.tool_calls[]`` piece: ``{"index", "id", "type", "function": {"name", "arguments"}}``, all
    but ``index`` optional (None for a piece with no integer ``index``)."""
    if not isinstance(piece, dict) or int_or_none(piece.get("index")) is None:
        return None
    fn = piece.get("function")
    fn = fn if isinstance(fn, dict) else {}
    ident, name, arguments = piece.get("id"), fn.get("name"), fn.get("arguments")
    return ToolCallDelta(
        piece["index"],
        ident if isinstance(ident, str) and ident else None,
        name if isinstance(name, str) and name else None,
        arguments if isinstance(arguments, str) else "",
    )


def list_models(backend: HTTPBackend, timeouts: Timeouts) -> list[ModelInfo]:
    """``GET /models`` of an OpenAI-compatible server: one ModelInfo per ``data[].id``, ``details`` from
    ``owned_by``, ``created`` (Unix seconds) and llama.cpp's ``meta`` (``n_ctx``, ``n_ctx_train`` in tokens,
    ``n_params``, ``size`` in bytes). Raises as ``HTTPBackend.get_json``, and StreamError when the answer
    holds no ``data`` list."""
    payload = backend.get_json("/models", timeouts)
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise StreamError(f"{backend.display_url}/models did not list models")
    out = []
    for m in data:
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            meta: dict[str, Any] = m["meta"] if isinstance(m.get("meta"), dict) else {}
            details = {k: m[k] for k in ("owned_by", "created") if k in m}
            details.update({k: meta[k] for k in ("n_ctx", "n_ctx_train", "n_params", "size") if k in meta})
            out.append(ModelInfo(m["id"], details))
    return out
