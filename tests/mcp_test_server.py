"""An MCP server of the tests' own (stdio, the official SDK's ``MCPServer``), with the tools real servers
misbehave with: ``echo``, ``slow`` (sleeps), ``fail`` (raises: an error result with its message), ``huge`` (a long result),
``escapes`` (terminal escape sequences), ``crash`` (the process exits mid-call). It writes a line to stderr
at start, which a client must keep off the screen.

Run: ``python tests/mcp_test_server.py`` (stdio), or ``python tests/mcp_test_server.py --http PORT TOKEN``: the
same tools over streamable HTTP at ``http://127.0.0.1:PORT/mcp``, answering 401 to a request without the
header ``Authorization: Bearer TOKEN``."""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("chatcli-test")


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return text


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer (without holding up the server's other calls)."""
    await anyio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
def fail(why: str = "it went wrong") -> str:
    """Always fails (a ToolError: its message reaches the client)."""
    raise ToolError(why)


@server.tool()
def huge(lines: int) -> str:
    """A result of many lines."""
    return "\n".join(f"line {i}" for i in range(lines))


@server.tool()
def escapes() -> str:
    """A result holding terminal escape sequences."""
    return "\x1b[2J\x1b]0;owned\x07plain"


@server.tool()
def crash() -> str:
    """The server dies mid-call."""
    os._exit(3)


def serve_http(port: int, token: str) -> None:
    """The tools over streamable HTTP on 127.0.0.1:``port``, behind a bearer token."""
    import uvicorn

    app = server.streamable_http_app()
    wanted = f"Bearer {token}".encode()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != wanted:
            await send(
                {"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]}
            )
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    print("chatcli-test server starting (this is stderr)", file=sys.stderr, flush=True)
    if sys.argv[1:2] == ["--http"]:
        serve_http(int(sys.argv[2]), sys.argv[3])
    else:
        server.run(transport="stdio")
