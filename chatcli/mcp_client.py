"""Tools from MCP servers, through the official MCP Python SDK (PyPI ``mcp``, 2.x; the ``tools`` extra).

``MCPServers`` starts the configured servers in the background, on an asyncio event loop in a thread of its
own (the SDK is async; chatcli's REPL and its per-token path are not), so nothing of it runs before the
prompt: the SDK is imported by that thread. Each server is one task holding its connection: stdio servers
are child processes (``command``, ``args``, ``env``, ``cwd``; their stderr goes to ``<log_dir>/<name>.log``,
never to the screen), streamable HTTP servers are reached at ``url`` with ``headers``. A server that does
not start, crashes or does not answer in ``start_timeout`` seconds is ``failed`` with one line saying why;
the others go on. ``call`` runs a tool from the caller's thread and waits for it (``timeout`` seconds).

No UI: states, tools and results are data (``ServerState``, ``ToolSpec``, ``ToolOutcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.errors import ConfigError

#: the keys of one ``[mcp.servers.NAME]`` table, as the ``mcpServers`` convention names them
SERVER_KEYS = {
    "command": "string",
    "args": "list of strings",
    "env": "table of strings",
    "cwd": "string",
    "url": "string",
    "headers": "table of strings",
}


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server: a stdio ``command`` with ``args``, ``env`` (added to a minimal environment, as the
    SDK does) and ``cwd``; or a streamable HTTP ``url`` with ``headers``."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, name: str, table: Any, where: str = "mcp.servers") -> ServerConfig:
        """The server of a config table; ConfigError naming the key when the table is not one."""
        key = f"{where}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f'{key} must be a table (command = "..." or url = "...")')
        for k, v in table.items():
            kind = SERVER_KEYS.get(k)
            if kind is None:
                raise ConfigError(f"{key}.{k} is not a server setting (known: {', '.join(SERVER_KEYS)})")
            if not _is(v, kind):
                raise ConfigError(f"{key}.{k} must be a {kind}")
        if ("command" in table) == ("url" in table):
            raise ConfigError(f"{key} needs either command (a stdio server) or url (an HTTP server)")
        return cls(
            name,
            table.get("command"),
            tuple(table.get("args", ())),
            dict(table.get("env", {})),
            table.get("cwd"),
            table.get("url"),
            dict(table.get("headers", {})),
        )


def _is(value: Any, kind: str) -> bool:
    """Whether a config value is of the SERVER_KEYS ``kind``."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "list of strings":
        return isinstance(value, list) and all(isinstance(a, str) for a in value)
    return isinstance(value, dict) and all(isinstance(x, str) for x in value.values())


@dataclass(frozen=True)
class ToolSpec:
    """A tool a server offers: ``server``, ``name``, ``description`` and ``parameters`` (its input JSON
    Schema, MCP's ``inputSchema``)."""

    server: str
    name: str
    description: str
    parameters: dict[str, Any]

    def function(self) -> dict[str, Any]:
        """The tool as a request's ``tools`` entry (OpenAI's shape, which Ollama takes too)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolOutcome:
    """What a call gave: ``text`` (the result's text content joined, or what went wrong), ``raw`` (the
    MCP ``CallToolResult`` as JSON, images and resources included; None when the call did not run or
    failed before a result), ``is_error``."""

    text: str
    raw: Any = None
    is_error: bool = False


@dataclass
class ServerState:
    """A server's state: ``starting``, ``ready``, ``failed`` (``error`` says why) or ``stopped``; its
    ``tools`` once ready."""

    name: str
    state: str = "starting"
    error: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)


class MCPServers:
    """The MCP servers of a session (``configs``), started by ``start`` in the background. Use ``close``
    (or ``with``) to stop them."""

    def __init__(self, configs: list[ServerConfig], log_dir: Path, start_timeout: float = 30.0) -> None:
        self.configs = configs
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self.states = {c.name: ServerState(c.name) for c in configs}
        self._sessions: dict[str, Any] = {}
        self._ready = {c.name: threading.Event() for c in configs}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = {c.name: asyncio.Event() for c in configs}  # (set on the loop's thread only)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MCPServers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- life -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every server in the background; returns at once (never raises)."""
        if self._thread is None and self.configs:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._run, args=(self._loop,), name="chatcli-mcp", daemon=True
            )
            self._thread.start()

    def wait_ready(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every server to be ready or failed."""
        for event in self._ready.values():
            event.wait(timeout)

    def close(self) -> None:
        """Stop every server (their processes end with their connections) and the loop. Safe to call
        twice."""
        loop = self._loop
        if loop is not None:
            for stop in self._stop.values():
                with contextlib.suppress(RuntimeError):  # (the loop is closed: every server has ended)
                    loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve_all())
        finally:
            loop.close()
            for event in self._ready.values():
                event.set()

    async def _serve_all(self) -> None:
        await asyncio.gather(*(self._serve(c) for c in self.configs))

    async def _serve(self, config: ServerConfig) -> None:
        state = self.states[config.name]
        try:
            await self._connect(config, state)
        except Exception as e:  # the SDK's, the OS's, the server's: one line, the others go on
            state.state, state.error = "failed", _said(e)
        else:
            state.state = "stopped"
        finally:
            self._sessions.pop(config.name, None)
            self._ready[config.name].set()

    async def _connect(self, config: ServerConfig, state: ServerState) -> None:
        try:
            from mcp import ClientSession
        except ImportError:
            raise RuntimeError("the MCP SDK is not installed: pip install 'chatcli[tools]'") from None

        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        refused: list[str] = []  # an HTTP server's error statuses, which the SDK does not tell
        with open(self.log_dir / f"{config.name}.log", "a", encoding="utf-8") as log:
            try:
                await self._session(config, state, _transport(config, log, refused), ClientSession)
            except Exception as e:
                if refused:
                    raise ConnectionError(f"{refused[-1]} ({_said(e)})") from e
                raise
        if state.error is not None:  # (set by ``_gone``: the server died)
            raise ConnectionError(state.error)

    async def _session(
        self, config: ServerConfig, state: ServerState, transport: Any, session_type: Any
    ) -> None:
        """Open the MCP session over ``transport``, list the tools, be ready, and hold it until stopped."""
        async with transport as (read, write), session_type(read, write) as session:
            listed = await asyncio.wait_for(_start(session), self.start_timeout)
            state.tools = [
                ToolSpec(config.name, t.name, t.description or "", dict(t.input_schema or {})) for t in listed
            ]
            self._sessions[config.name] = session
            state.state = "ready"
            self._ready[config.name].set()
            await self._stop[config.name].wait()

    # -- tools ------------------------------------------------------------------------------------------
    def tools(self) -> list[ToolSpec]:
        """The tools of the servers that are ready, in the configured order of their servers."""
        return [
            t for c in self.configs for t in self.states[c.name].tools if self.states[c.name].state == "ready"
        ]

    def call(self, server: str, tool: str, arguments: dict[str, Any], timeout: float) -> ToolOutcome:
        """Run ``tool`` of ``server`` with ``arguments`` and wait up to ``timeout`` seconds. A tool error,
        an unknown tool, a server gone and a timeout are outcomes with ``is_error`` (never raised);
        KeyboardInterrupt cancels the call and is raised again."""
        session, loop = self._sessions.get(server), self._loop
        if session is None or loop is None:
            state = self.states.get(server)
            why = (
                state.error
                if state and state.error
                else f"it is {state.state if state else 'not configured'}"
            )
            return ToolOutcome(f"the tool server {server} is not available: {why}", is_error=True)
        future: Future[Any] = asyncio.run_coroutine_threadsafe(
            session.call_tool(tool, arguments, read_timeout_seconds=timeout), loop
        )
        late = ToolOutcome(f"{server}.{tool} did not answer within {timeout:g} s", is_error=True)
        try:
            result = future.result(timeout + 1)
        except FutureTimeout:
            future.cancel()
            return late
        except KeyboardInterrupt:
            future.cancel()
            raise
        except Exception as e:
            from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

            code = getattr(e, "code", None)  # (an MCPError: the SDK's error codes)
            if code == REQUEST_TIMEOUT:
                return late
            if code == CONNECTION_CLOSED:
                self._gone(server, loop)
                return ToolOutcome(f"the tool server {server} stopped during {tool}", is_error=True)
            return ToolOutcome(f"{server}.{tool} failed: {_said(e)}", is_error=True)
        return _outcome(result)

    def _gone(self, server: str, loop: asyncio.AbstractEventLoop) -> None:
        """The server's connection closed: it is failed, and its task ends (cleaning up its process)."""
        state = self.states[server]
        state.error = "it stopped (its log says why)"
        self._sessions.pop(server, None)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._stop[server].set)


async def _start(session: Any) -> list[Any]:
    await session.initialize()
    return list((await session.list_tools()).tools)


@contextlib.asynccontextmanager
async def _transport(config: ServerConfig, log: Any, refused: list[str]) -> Any:
    """The SDK's (read, write) streams for a server: stdio for a command, streamable HTTP for a url (each
    error status it answers is written to ``log`` and added to ``refused`` as a line that says what to
    check)."""
    if config.command is not None:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=config.command, args=list(config.args), env=dict(config.env) or None, cwd=config.cwd
        )
        async with stdio_client(params, errlog=log) as streams:
            yield streams[0], streams[1]
    else:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client  # (the SDK's own client, with headers)

        async def noted(response: Any) -> None:
            if response.status_code >= 400:
                said = _http_said(response.status_code, response.reason_phrase)
                refused.append(said)
                print(f"{config.url}: {said}", file=log, flush=True)

        async with create_mcp_http_client(headers=dict(config.headers)) as http:
            http.event_hooks["response"] = [noted]
            async with streamable_http_client(str(config.url), http_client=http) as streams:
                yield streams[0], streams[1]


def _http_said(status: int, reason: str) -> str:
    """An HTTP error status as a line that says what to check in the server's config entry."""
    check = {401: "its headers (a token?)", 403: "its headers (a token?)", 404: "its url"}.get(status)
    return f"the server answered HTTP {status} {reason}" + (f": check {check}" if check else "")


def _outcome(result: Any) -> ToolOutcome:
    """A ToolOutcome from what ``call_tool`` answered: a ``CallToolResult`` (its text content joined; the
    whole result as JSON in ``raw``), or another result type (an error: chatcli asks for no input)."""
    content = getattr(result, "content", None)
    if content is None:
        return ToolOutcome(f"the server answered with a {type(result).__name__}, not a result", is_error=True)
    texts = [c.text for c in content if getattr(c, "type", "") == "text" and isinstance(c.text, str)]
    others = [c.type for c in content if getattr(c, "type", "") != "text"]
    text = "\n".join(texts) + (f"\n[{', '.join(others)}]" if others else "")
    raw = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return ToolOutcome(text.strip("\n"), raw, bool(result.is_error))


def _said(e: BaseException) -> str:
    """An error in one line (the SDK wraps errors in exception groups: the first leaf is the cause)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
        text = "it did not answer in time"
    elif isinstance(e, FileNotFoundError):
        text = f"no such command: {e.filename or text}"
    return text[:300]


__all__ = ["MCPServers", "ServerConfig", "ServerState", "ToolOutcome", "ToolSpec"]
