"""Running the tool calls a model makes: which tool a call names, whether its arguments can be sent, whether
the user allows it, and the result that goes back (``ToolResultPart``). The tools come from a ``ToolSource``
(``chatcli.mcp_client.MCPServers``). No UI: asking the user is the caller's ``ask`` callback.

What a call gets back, without running anything, as an error result the model reads:
- a tool no server offers; arguments that are not a JSON object, or longer than MAX_ARGUMENT_BYTES;
- a call the user refused, or one that needs approval when nothing can ask (a pipe, a script).
A call runs within ``timeout`` seconds; Ctrl-C cancels it and the model is told so. Approval: patterns of
``server.tool`` (``fnmatch``: ``time.*``) approve ahead; the user's "always" approves a tool for the rest of
the session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any, Literal, Protocol

import orjson

from chatcli.mcp_client import ToolOutcome, ToolSpec
from chatcli.model import ToolCallPart, ToolResultPart

MAX_ARGUMENT_BYTES = 64 * 1024  # a call's arguments (UTF-8 JSON) above this are not sent to the tool

Answer = Literal["yes", "no", "always"]
#: asks the user about a call of a tool (its spec) with its decoded arguments
Ask = Callable[[ToolCallPart, ToolSpec, dict[str, Any]], Answer]
#: shows a call before it runs or is asked about (the same arguments)
Shown = Callable[[ToolCallPart, ToolSpec, dict[str, Any]], None]


class ToolSource(Protocol):
    """Where tools come from (``MCPServers``)."""

    def tools(self) -> list[ToolSpec]:
        """The tools offered now."""
        ...

    def call(self, server: str, tool: str, arguments: dict[str, Any], timeout: float) -> ToolOutcome:
        """Run a tool (seconds); failures are outcomes with ``is_error``; KeyboardInterrupt is raised."""
        ...


class ToolRunner:
    """Runs a session's tool calls on ``source``: ``approve`` holds the ``server.tool`` patterns allowed
    without asking, ``timeout`` the seconds a call may take, ``max_rounds`` how many requests of one turn
    may follow tool results."""

    def __init__(
        self, source: ToolSource, approve: Sequence[str] = (), timeout: float = 60.0, max_rounds: int = 10
    ) -> None:
        self.source = source
        self.patterns = list(approve)
        self.timeout = timeout
        self.max_rounds = max_rounds  # requests of one turn that may answer tool calls
        self.always: set[str] = set()  # server.tool the user allowed for the rest of the session

    def functions(self) -> list[dict[str, Any]]:
        """The request's ``tools``: one function per tool, the first server's where two offer one name."""
        return [t.function() for t in self._by_name().values()]

    def _by_name(self) -> dict[str, ToolSpec]:
        found: dict[str, ToolSpec] = {}
        for t in self.source.tools():
            found.setdefault(t.name, t)
        return found

    def approved(self, spec: ToolSpec) -> bool:
        """Whether a call of ``spec`` runs without asking."""
        key = f"{spec.server}.{spec.name}"
        return key in self.always or any(fnmatchcase(key, p) for p in self.patterns)

    def run(self, call: ToolCallPart, ask: Ask | None, shown: Shown | None = None) -> ToolResultPart:
        """The result of ``call``: run when it may be (asking through ``ask``; None: nothing can ask), else
        an error result saying why. ``shown(call, spec, arguments)`` is called first for a call that names
        a tool and has valid arguments. Never raises for a call or a tool; Ctrl-C during the call cancels
        it (its result says so); what ``ask`` raises (Ctrl-C at the question) is raised."""
        spec = self._by_name().get(call.name)
        if spec is None:
            offered = ", ".join(sorted(self._by_name())) or "none"
            return _error(call, f"no tool named {call.name!r} is offered (tools: {offered}); nothing was run")
        arguments = _arguments(call)
        if isinstance(arguments, str):
            return _error(call, arguments)
        if shown is not None:
            shown(call, spec, arguments)
        refused = self._refusal(call, spec, arguments, ask)
        if refused is not None:
            return _error(call, refused)
        start = time.monotonic()
        try:
            got = self.source.call(spec.server, spec.name, arguments, self.timeout)
        except KeyboardInterrupt:
            text = "the user cancelled this call (Ctrl-C) while it ran"
            return ToolResultPart(call.id, text, None, True, _since(start))
        return ToolResultPart(call.id, got.text, got.raw, got.is_error, _since(start))

    def _refusal(
        self, call: ToolCallPart, spec: ToolSpec, arguments: dict[str, Any], ask: Ask | None
    ) -> str | None:
        """Why the call may not run (None: it may)."""
        if self.approved(spec):
            return None
        key = f"{spec.server}.{spec.name}"
        if ask is None:
            return f"{key} needs the user's approval and nothing could ask for it (--approve {key}); not run"
        answer = ask(call, spec, arguments)
        if answer == "always":
            self.always.add(key)
        return None if answer in ("yes", "always") else "the user refused this call; it was not run"


def _since(start: float) -> float:
    """Seconds since ``start`` (``time.monotonic``), to the millisecond."""
    return round(time.monotonic() - start, 3)


def _error(call: ToolCallPart, text: str) -> ToolResultPart:
    return ToolResultPart(call.id, text, None, True)


def _arguments(call: ToolCallPart) -> dict[str, Any] | str:
    """The call's arguments decoded (an empty text is no arguments), or why they cannot be sent."""
    size = len(call.arguments.encode("utf-8", "surrogatepass"))
    if size > MAX_ARGUMENT_BYTES:
        return (
            f"the arguments are {size:,} bytes, more than the {MAX_ARGUMENT_BYTES:,} a call may have; not run"
        )
    if not call.arguments.strip():
        return {}
    try:
        decoded = orjson.loads(call.arguments)
    except orjson.JSONDecodeError as e:
        return f"the arguments are not valid JSON ({e}); not run"
    if not isinstance(decoded, dict):
        return f"the arguments must be a JSON object, not {type(decoded).__name__}; not run"
    return decoded


__all__ = ["MAX_ARGUMENT_BYTES", "Answer", "Ask", "Shown", "ToolRunner", "ToolSource"]
