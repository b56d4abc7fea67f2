"""The Backend protocol and what every HTTP backend shares: timeouts, error mapping, the stream loop.

A backend turns a list of messages into a stream of ``StreamEvent``. It knows its wire protocol and
nothing of sessions, files or the terminal. Every failure leaves as a ``BackendError`` subclass (see
``chatcli.errors``); httpx exceptions never escape.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from chatcli.errors import (
    AuthenticationError,
    BackendError,
    BackendHTTPError,
    BackendTimeout,
    BackendUnavailable,
    ContextOverflow,
    ModelNotFound,
    RateLimited,
    StreamError,
)
from chatcli.messages import int_or_none

if TYPE_CHECKING:
    import httpx

    from chatcli.messages import GenerationParams, Timeouts, Usage


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the ``index``-th tool call of a reply: its ``id`` and ``name`` (on its first piece; None
    on later ones) and more of its ``arguments`` (JSON text, possibly cut anywhere). OpenAI-compatible
    servers send a call in many such pieces (``delta.tool_calls``); Ollama sends each call whole, its
    arguments an object (written here as JSON text) and often without an id."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class StreamEvent:
    """One step of a streamed reply. ``text``: new reply text (may be empty); ``reasoning``: new reasoning
    text (OpenAI-compatible ``delta.reasoning_content`` or ``delta.reasoning``, Ollama ``message.thinking``;
    ``<think>`` tags inside ``text`` are the session's to split); ``finish_reason`` on the
    last choice (``stop``, ``length``, ...; the server's word); ``usage`` when the server sends token counts;
    ``server_timings``: the server's raw timing fields (llama.cpp ``timings`` in milliseconds, Ollama's
    ``*_duration`` in nanoseconds); ``tokens_per_second``: completion tokens per second of generation as
    the server measured it (llama.cpp ``predicted_per_second``, Ollama ``eval_count / eval_duration``);
    ``tool_calls``: pieces of the tool calls the model makes (joined by their ``index``)."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    server_timings: dict[str, Any] | None = None
    tokens_per_second: float | None = None


class Backend(Protocol):
    """What ConversationSession needs of a model server. Every method that can fail raises only
    BackendError subclasses (``chatcli.errors``); the ones that say "never raises" answer None instead."""

    name: str  # "openai", "ollama" or "local"
    model: str  # the model name sent in requests
    base_url: str  # where requests go; may hold user:password@ (``public_url`` before it is shown or saved)

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        timeouts: Timeouts,
        deadline: float,
        *,
        tools: Sequence[dict[str, Any]] = (),
    ) -> Generator[StreamEvent, None, None]:
        """Stream the reply to ``messages`` (OpenAI chat-format dicts, ``chatcli.wire.to_openai``; system
        message first) as StreamEvents; one carries ``finish_reason``, and usage and timings come when the
        server sends them (with it or in a later event). ``tools``: the functions the model may call, each
        ``{"type": "function", "function": {"name", "description", "parameters": <JSON Schema>}}`` (sent as
        the request's ``tools`` when there are any).
        ``params``: sampling (None fields are not sent); ``timeouts``: connect and idle limits in seconds;
        ``deadline``: a ``time.monotonic()`` value (seconds) for the whole reply. Raises, when called or while
        iterating: BackendUnavailable, BackendTimeout (``kind`` connect/idle/total), BackendHTTPError and its
        subclasses (ContextOverflow, RateLimited, ...), StreamError (cut short, malformed, error inside)."""
        ...

    def prepare(self) -> None:
        """Get ready in the background (start a local server, without waiting for it); never blocks for
        long and never raises: a problem is reported by the first turn."""
        ...

    def close(self) -> None:
        """Release connections and child processes. Safe to call twice."""
        ...

    def recorded(self) -> dict[str, str]:
        """What a session's snapshot records of where it runs, so a resume finds it again: a dict with
        ``base_url`` (as is: the caller strips credentials with ``public_url``; "" when it changes each
        run) and, for the local backend,
        ``model_path`` (the model file the user gave, "" for the bundled one)."""
        ...

    def list_models(self, timeouts: Timeouts) -> list[ModelInfo]:
        """The models the server offers, as ModelInfo (``details`` per backend: sizes in bytes, context
        lengths in tokens). Raises BackendUnavailable, BackendTimeout, BackendHTTPError, or StreamError
        when the answer lists no models."""
        ...

    def context_window(self, timeouts: Timeouts) -> int | None:
        """The model's context window in tokens as the server states it (llama.cpp ``GET /props``
        ``default_generation_settings.n_ctx``; Ollama: the ``num_ctx`` it is sent), or None when it cannot
        say. The answer is remembered: at most one request per backend. Never raises."""
        ...

    def count_tokens(self, messages: list[dict[str, Any]], timeouts: Timeouts) -> int | None:
        """The exact prompt size of a request holding ``messages`` (``{"role", "content"}`` dicts), in
        tokens, when the server can count it (llama.cpp's ``POST /apply-template`` then ``POST /tokenize``);
        else None. On llama.cpp two requests each call; never raises."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """A model a server offers: its ``name`` (what ``--model`` takes) and what else the server says of it
    (``details``: e.g. ``size`` in bytes, ``n_ctx`` in tokens; the keys each backend's ``list_models``
    names)."""

    name: str
    details: dict[str, Any]


def loads_chunk(data: str | bytes) -> Any:
    """One JSON chunk of a stream (orjson). A chunk orjson refuses only because it escapes a lone surrogate
    (``"\\ud83d"``: half an emoji a server cut in two) is read by the standard library instead, the
    half character as U+FFFD. Raises orjson.JSONDecodeError for what is not JSON."""
    import orjson

    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if "\\u" not in (data if isinstance(data, str) else data.decode("utf-8", "replace")):
            raise
    import json

    from chatcli.snapshot import valid_unicode

    try:
        return valid_unicode(json.loads(data))
    except ValueError:
        raise orjson.JSONDecodeError("not JSON", "", 0) from None


def public_url(url: str) -> str:
    """``url`` without ``user:password@`` (the rest unchanged), so credentials never reach a file."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def tls_verify(url: str) -> bool:
    """httpx's ``verify`` for a client that only ever asks ``url``'s server: True (the CA bundle) for
    https, False for plain http, where no TLS is negotiated and loading the bundle would only cost its
    20-odd ms of CPU (every request of a backend goes to its own base URL, and redirects are not
    followed)."""
    return not url.lower().startswith("http:")


class HTTPBackend:
    """Shared machinery of the HTTP backends: one httpx.Client (opened on first use, no proxy from the
    environment), error mapping, deadline checks. ``base_url``: where requests go, without a trailing
    ``/``; ``headers``: sent with every request (e.g. ``Authorization``)."""

    name = "http"

    def __init__(self, base_url: str, model: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._headers = headers or {}
        self._client: httpx.Client | None = None

    @property
    def display_url(self) -> str:
        """``base_url`` as error messages show it: without ``user:password@`` (messages are shown and saved
        with the turn)."""
        return public_url(self.base_url)

    def prepare(self) -> None:
        """Nothing to do: a remote server is already running (or the first turn says it is not)."""

    def recorded(self) -> dict[str, str]:
        """``{"base_url": ...}``: the server's address."""
        return {"base_url": self.base_url}

    def context_window(self, timeouts: Timeouts) -> int | None:
        """None: a plain HTTP server states no window (subclasses that can, override)."""
        return None

    def count_tokens(self, messages: list[dict[str, Any]], timeouts: Timeouts) -> int | None:
        """None: a plain HTTP server cannot count tokens (subclasses that can, override)."""
        return None

    def get_json(self, path: str, timeouts: Timeouts, body: Any = None, *, url: str | None = None) -> Any:
        """GET ``base_url + path`` (POST ``body`` as JSON when given; ``url`` instead of ``base_url +
        path``) and return the decoded JSON answer (any shape: callers check it). Waits at most
        ``timeouts.connect`` seconds to connect and min(idle, total) for the answer. Raises BackendTimeout,
        BackendUnavailable, BackendHTTPError (as ``http_error`` maps it), BackendError (not JSON, or another
        transport failure)."""
        import httpx

        client = self._http(timeouts, time.monotonic() + timeouts.total)
        url = url or self.base_url + path
        try:
            if body is None:
                response = client.get(url, timeout=self._timeout_config())
            else:
                response = client.post(url, json=body, timeout=self._timeout_config())
            if response.status_code >= 400:
                raise self.http_error(response)
            return response.json()
        except BackendError as e:
            raise self._scrubbed(e) from None
        except httpx.ConnectTimeout:
            raise self._connect_timeout(timeouts) from None
        except httpx.TimeoutException:  # connected, but no answer within the read limit
            kind = "idle" if self._read_limit >= timeouts.idle else "total"
            raise BackendTimeout(
                f"{self.display_url} did not answer within {self._read_limit:g} s", kind, self._read_limit
            ) from None
        except httpx.ConnectError as e:
            raise self._unreachable(e) from None
        except (httpx.HTTPError, ValueError) as e:
            raise BackendError(f"{self.display_url} did not answer as expected: {_reason(e)}") from None

    def close(self) -> None:
        """Close the HTTP connections; the next request opens new ones. Safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self, timeouts: Timeouts, deadline: float) -> httpx.Client:
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                headers=self._headers, trust_env=False, verify=tls_verify(self.base_url)
            )
        self._read_limit = min(timeouts.idle, max(0.001, deadline - time.monotonic()))
        self._timeouts = timeouts
        return self._client

    def _timeout_config(self) -> httpx.Timeout:
        import httpx

        t = self._timeouts
        return httpx.Timeout(connect=t.connect, read=self._read_limit, write=self._read_limit, pool=t.connect)

    def _stream(
        self, method: str, path: str, body: dict[str, Any], timeouts: Timeouts, deadline: float, parse: Any
    ) -> Generator[StreamEvent, None, None]:
        """POST ``body`` and yield what ``parse(response, deadline)`` yields, mapping every transport
        failure to a BackendError."""
        import httpx

        client = self._http(timeouts, deadline)
        url = self.base_url + path
        try:
            with client.stream(method, url, json=body, timeout=self._timeout_config()) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self.http_error(response)
                yield from parse(response, deadline)
        except BackendError as e:
            raise self._scrubbed(e) from e.__cause__
        except httpx.ConnectTimeout:
            raise self._connect_timeout(timeouts) from None
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            if time.monotonic() >= deadline - 0.001:
                raise BackendTimeout(
                    f"the reply took longer than the {timeouts.total:g} s limit", "total", timeouts.total
                ) from None
            raise BackendTimeout(
                f"the model sent nothing for {self._read_limit:g} s (idle timeout)", "idle", self._read_limit
            ) from None
        except httpx.ConnectError as e:
            raise self._unreachable(e) from None
        except httpx.RemoteProtocolError:
            raise StreamError(
                f"the connection to {self.display_url} closed in the middle of the reply"
            ) from None
        except httpx.HTTPError as e:
            raise BackendError(f"request to {self.display_url} failed: {_reason(e)}") from None

    def _connect_timeout(self, timeouts: Timeouts) -> BackendTimeout:
        return BackendTimeout(
            f"could not connect to {self.display_url} within {timeouts.connect:g} s",
            "connect",
            timeouts.connect,
        )

    def _unreachable(self, e: Exception) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot connect to {self.display_url}: {_reason(e)}; is the server running?"
        )

    def _scrubbed(self, e: BackendError) -> BackendError:
        """``e`` with the API key blanked out of its message: a server may echo the key in an error, and
        error messages are shown and saved with the turn."""
        auth = self._headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        if len(key) >= 8:
            e.args = tuple(a.replace(key, "[API key]") if isinstance(a, str) else a for a in e.args)
            if isinstance(getattr(e, "server_message", None), str):
                e.server_message = e.server_message.replace(key, "[API key]")  # type: ignore[attr-defined]
        return e

    @staticmethod
    def check_deadline(deadline: float, timeouts: Timeouts) -> None:
        """Raise BackendTimeout(kind="total", seconds=``timeouts.total``) once ``deadline`` (a
        ``time.monotonic()`` value, seconds) has passed."""
        if time.monotonic() > deadline:
            raise BackendTimeout(
                f"the reply took longer than the {timeouts.total:g} s limit", "total", timeouts.total
            )

    def error_message(self, payload: Any, text: str) -> tuple[str, str]:
        """(message, type) from an error body: ``payload`` the decoded JSON (None when it was not JSON),
        ``text`` the raw body. The message is cut to 300 characters; type "" when none. This base reads
        the body as text; subclasses know their protocol's shape."""
        return text.strip()[:300], ""

    def http_error(self, response: httpx.Response) -> BackendHTTPError:
        """The BackendHTTPError (returned, not raised) for an HTTP error response, with a message a user
        can act on: 401/403 AuthenticationError, 404 ModelNotFound, 429 RateLimited (``retry_after`` seconds
        from the Retry-After header), an overflow ContextOverflow (see ``context_overflow``), else
        BackendHTTPError."""
        status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = None
        server_msg, err_type = self.error_message(payload, response.text)
        said = f": {server_msg}" if server_msg else ""
        where = self.display_url
        if status in (401, 403):
            return AuthenticationError(
                f"{where} refused the request ({status}){said}; check the API key (OPENAI_API_KEY)",
                status,
                server_msg,
            )
        if status == 404:
            return ModelNotFound(
                f"model {self.model!r} or the endpoint was not found at {where} (404){said}; "
                f"check --model and --base-url",
                status,
                server_msg,
            )
        if status == 429:
            return RateLimited(
                f"rate limited by {where} (429){said}",
                status,
                server_msg,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        overflow = context_overflow(status, payload, server_msg, err_type)
        if overflow is not None:
            window, prompt = overflow
            return ContextOverflow(
                f"the request did not fit the model's context{said}", status, server_msg, window, prompt
            )
        if status >= 500:
            return BackendHTTPError(f"{where} had a server error ({status}){said}", status, server_msg)
        return BackendHTTPError(f"{where} rejected the request ({status}){said}", status, server_msg)


_WINDOW_RES = (
    re.compile(r"maximum context length is (\d+) tokens"),  # OpenAI
    re.compile(r"available context size \((\d+) tokens\)"),  # llama.cpp, Ollama
    re.compile(r"context length (?:of|is) (\d+)"),
)
_PROMPT_RES = (
    re.compile(r"resulted in (\d+) tokens"),  # OpenAI, older
    re.compile(r"\((\d+) in the messages"),  # OpenAI
    re.compile(r"request \((\d+) tokens\) exceeds"),  # llama.cpp, Ollama
)


def context_overflow(
    status: int, payload: Any, message: str, err_type: str
) -> tuple[int | None, int | None] | None:
    """(window, prompt tokens), both in tokens, when an error response (HTTP 400, 413 or 500; ``payload``
    the decoded body, ``message``/``err_type`` as ``error_message`` gave them) says the request did not
    fit the context window, each None when not stated; None when it is another error. Shapes: llama.cpp
    400 ``{"error": {"type": "exceed_context_size_error", "n_ctx", "n_prompt_tokens"}}``; OpenAI 400 ``code``
    ``context_length_exceeded`` ("maximum context length is N tokens ... M in the messages"); Ollama 400
    ``{"error": "..."}`` holding llama.cpp's message (or its whole JSON as a string)."""
    if status not in (400, 413, 500):
        return None
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, str) and err.lstrip().startswith("{"):  # Ollama passes llama.cpp's body on as text
        import orjson

        try:
            inner = orjson.loads(err)
        except orjson.JSONDecodeError:
            inner = None
        if isinstance(inner, dict):
            err = inner.get("error", inner)
    window = prompt = None
    said = message
    if isinstance(err, dict):
        said = str(err.get("message") or message)
        kind = f"{err.get('type') or ''} {err.get('code') or ''} {err_type}"
        window, prompt = int_or_none(err.get("n_ctx")), int_or_none(err.get("n_prompt_tokens"))
        named = "exceed_context" in kind or "context_length_exceeded" in kind
    else:
        said = err if isinstance(err, str) else message
        named = False
    lowered = said.lower()
    stated = any(r.search(said) for r in (*_WINDOW_RES, *_PROMPT_RES))
    if not (named or stated or ("context" in lowered and "exceed" in lowered)):
        return None
    for r in _WINDOW_RES:
        if window is None and (m := r.search(said)):
            window = int(m.group(1))
    for r in _PROMPT_RES:
        if prompt is None and (m := r.search(said)):
            prompt = int(m.group(1))
    return window, prompt


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None if absent or odd."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(e: Exception) -> str:
    """The innermost cause of an httpx error, in words (e.g. 'Connection refused')."""
    while e.__cause__ is not None or e.__context__ is not None:
        nxt = e.__cause__ or e.__context__
        assert nxt is not None
        e = nxt  # type: ignore[assignment]
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    if "Name or service not known" in text or "nodename nor servname" in text or "-2]" in text:
        return "unknown host"
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


__all__ = ["Backend", "BackendError", "HTTPBackend", "StreamError", "StreamEvent"]
