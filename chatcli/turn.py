"""A ``Turn``: one request and its reply. It streams the backend's events into the reply message (text and
reasoning parts, ``<think>`` tags split out), saves a checkpoint as it goes, retries what may be retried
(a 429 before any token; once, a request the server refused as longer than its context, with fewer turns)
and records the timings. What is kept when it fails, and the saves around it, are the session's
(``chatcli.session``); the turn reaches the session only through the ``TurnHooks`` it is given.

No I/O of its own and no UI: the caller's callbacks show the text.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatcli.errors import ContextOverflow, RateLimited, StreamError
from chatcli.messages import MAX_MESSAGE_BYTES, REPLY_OVER_LIMIT, ContextUsed, Timings, cut_to_fit, utf8_size
from chatcli.model import Message, Part, ReasoningPart, TextPart, ToolCallPart, ToolResultPart
from chatcli.reasoning import ThinkSplitter

if TYPE_CHECKING:
    from chatcli.backends.base import Backend, StreamEvent, ToolCallDelta
    from chatcli.context import Plan
    from chatcli.messages import GenerationParams, Timeouts
    from chatcli.tools import Ask, Shown

#: a callback that receives pieces of text as they arrive
Sink = Callable[[str], None]


@dataclass(frozen=True)
class TurnPolicy:
    """How a turn saves and retries. ``checkpoint_seconds``: the least time between two saves while a reply
    streams; ``checkpoint_cost_ratio``: ... and at least this many times the last such save took (a big
    session saves less often); ``max_retries``: retries of a 429 that came before any token;
    ``max_retry_wait``: seconds; a longer Retry-After is reported instead of waited for."""

    checkpoint_seconds: float = 0.25
    checkpoint_cost_ratio: float = 10.0
    max_retries: int = 2
    max_retry_wait: float = 30.0


@dataclass(frozen=True)
class TurnHooks:
    """What a turn needs of its session: ``params_for(plan)`` the sampling parameters of a request;
    ``replan(error, refused)`` the request to send after a context overflow (raises MessageTooLarge);
    ``checkpoint()`` a save mid-reply that never raises; ``notify(line)`` a notice to the user."""

    params_for: Callable[[Plan], GenerationParams]
    replan: Callable[[ContextOverflow, Plan], Plan]
    checkpoint: Callable[[], None]
    notify: Callable[[str], None]


@dataclass(frozen=True)
class Sinks:
    """Where one call's output goes: ``text`` and ``reasoning`` pieces of the reply as they arrive,
    one-line ``notice`` s (None: the session's ``on_notice``), and for tool calls (``chatcli.tools``):
    ``shown`` before each call, ``ask`` for one not approved ahead (None: such calls are refused), ``done``
    with each call and its result."""

    text: Sink | None = None
    reasoning: Sink | None = None
    notice: Sink | None = None
    shown: Shown | None = None
    ask: Ask | None = None
    done: Callable[[ToolCallPart, ToolResultPart], None] | None = None


class ReplyParts:
    """The reply's parts as they stream: runs of reasoning and of text, in order, then its tool calls (their
    pieces joined by index, in index order), all within MAX_MESSAGE_BYTES (past it: what fits is kept and
    StreamError(REPLY_OVER_LIMIT) raised). A call the server gave no id gets ``call_<suffix>_<index>``, the
    suffix drawn once per reply."""

    def __init__(self) -> None:
        self._runs: list[tuple[type[TextPart | ReasoningPart], list[str]]] = []
        self._calls: dict[int, _CallPieces] = {}
        self._splitter = ThinkSplitter()
        self._suffix = secrets.token_hex(4)
        self.size = 0  # UTF-8 bytes
        self.pieces = 0  # pieces received, of text and reasoning

    def __bool__(self) -> bool:
        return bool(self._runs or self._calls)

    def add_calls(self, deltas: Sequence[ToolCallDelta]) -> None:
        """Take an event's tool-call pieces. Raises StreamError past the size limit."""
        for d in deltas:
            call = self._calls.setdefault(d.index, _CallPieces())
            call.id = call.id or d.id
            call.name = call.name or d.name
            size = utf8_size(d.arguments) + utf8_size(d.name or "")
            if self.size + size > MAX_MESSAGE_BYTES:
                raise StreamError(REPLY_OVER_LIMIT)
            self.size += size
            call.arguments.append(d.arguments)

    def add(self, reasoning: str, text: str) -> tuple[str, str]:
        """Take an event's reasoning and text (``<think>`` tags split out of it); returns the (reasoning,
        text) it adds, either possibly "". Raises StreamError past the size limit."""
        if text:
            inline, text = self._splitter.feed(text)
            reasoning += inline
        self.pieces += 1
        self._append(ReasoningPart, reasoning)
        self._append(TextPart, text)
        return reasoning, text

    def finish(self) -> tuple[str, str]:
        """The stream ended (or was cut): what the ``<think>`` splitter held back, added."""
        reasoning, text = self._splitter.flush()
        self._append(ReasoningPart, reasoning)
        self._append(TextPart, text)
        return reasoning, text

    def parts(self) -> list[Part]:
        """The parts so far, each run and each call joined."""
        parts: list[Part] = [kind("".join(run)) for kind, run in self._runs]
        for index in sorted(self._calls):
            call = self._calls[index]
            ident = call.id or f"call_{self._suffix}_{index}"
            parts.append(ToolCallPart(ident, call.name or "", "".join(call.arguments)))
        return parts

    def _append(self, kind: type[TextPart | ReasoningPart], piece: str) -> None:
        if not piece:
            return
        size = utf8_size(piece)
        over = self.size + size > MAX_MESSAGE_BYTES
        if over:
            piece = cut_to_fit(piece, MAX_MESSAGE_BYTES - self.size)
        self.size += size
        if self._runs and self._runs[-1][0] is kind:
            self._runs[-1][1].append(piece)
        else:
            self._runs.append((kind, [piece]))
        if over:
            raise StreamError(REPLY_OVER_LIMIT)


@dataclass
class _CallPieces:
    """A tool call as its pieces arrive."""

    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class Turn:
    """One request and its reply, on ``backend`` within ``timeouts`` (seconds), as ``policy`` says, talking
    to its session through ``hooks``. ``on_text`` and ``on_reasoning`` receive the reply's pieces as they
    arrive; ``tools`` (OpenAI function specs, see ``Backend.stream_chat``) go with the request when there
    are any. Use once: ``run``."""

    def __init__(
        self,
        backend: Backend,
        timeouts: Timeouts,
        policy: TurnPolicy,
        hooks: TurnHooks,
        on_text: Sink | None = None,
        on_reasoning: Sink | None = None,
        tools: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.backend, self.timeouts, self.policy, self.hooks = backend, timeouts, policy, hooks
        self.on_text, self.on_reasoning, self.tools = on_text, on_reasoning, tools
        self.started = time.monotonic()
        self.deadline = self.started + timeouts.total
        self.got = ReplyParts()
        self.first: float | None = None  # monotonic time of the first token (reasoning or text)
        self.first_reasoning: float | None = None
        self.first_text: float | None = None
        self._last_save = self.started
        self._interval = policy.checkpoint_seconds

    def run(self, reply: Message, plan: Plan) -> None:
        """Stream the reply to ``plan`` into ``reply`` (its parts, ``finish_reason``, ``usage``, ``timings``,
        ``context``) and set status ``ok``. What arrived is in ``reply`` also when it raises: what the
        backend raises (BackendTimeout, BackendError, RateLimited, ContextOverflow), MessageTooLarge,
        StreamError past the size limit, KeyboardInterrupt."""
        try:
            self._attempts(reply, plan)
        finally:  # also on Ctrl-C, a timeout or an error: what arrived is kept (then shown)
            held = self.got.finish()
            reply.parts = self.got.parts()
            self._reasoning_time(reply)
            self._show(*held)
        end = time.monotonic()
        reply.status = "ok"
        t = reply.timings = reply.timings or Timings()
        t.duration_s = round(end - self.started, 4)
        if t.tokens_per_second is None and self.first is not None and end > self.first:
            usage = reply.usage
            n = usage.completion_tokens if usage and usage.completion_tokens else self.got.pieces
            t.tokens_per_second = round(n / (end - self.first), 2)

    def _attempts(self, reply: Message, plan: Plan) -> None:
        overflowed = False
        for attempt in range(self.policy.max_retries + 1):
            reply.context = ContextUsed(
                plan.start, plan.tokens, plan.exact, plan.window, plan.summary, plan.rounds_from
            )
            params = self.hooks.params_for(plan)
            with_tools: dict[str, Any] = {"tools": self.tools} if self.tools else {}
            stream = self.backend.stream_chat(
                plan.messages, params, self.timeouts, self.deadline, **with_tools
            )
            try:
                for event in stream:
                    self._take(reply, event)
                return
            except ContextOverflow as e:
                if self.got or overflowed or attempt >= self.policy.max_retries:
                    raise
                overflowed = True
                plan = self.hooks.replan(e, plan)
            except RateLimited as e:
                wait = self._retry_wait(e, attempt)
                self.hooks.notify(
                    f"{e}; retrying in {wait:g} s (attempt {attempt + 2} of {self.policy.max_retries + 1})"
                )
                time.sleep(wait)
            finally:
                stream.close()  # closes the HTTP response at once, also on Ctrl-C

    def _retry_wait(self, e: RateLimited, attempt: int) -> float:
        """Seconds to wait before retrying after ``e``; re-raises ``e`` when it is not to be retried."""
        wait = e.retry_after if e.retry_after is not None else 2.0**attempt
        if (
            self.got
            or attempt >= self.policy.max_retries
            or wait > self.policy.max_retry_wait
            or time.monotonic() + wait > self.deadline
        ):
            raise e
        return wait

    def _take(self, reply: Message, event: StreamEvent) -> None:
        """One stream event into the reply: its pieces shown and kept, then its metadata."""
        if event.text or event.reasoning or event.tool_calls:
            now = time.monotonic()
            if self.first is None:
                self.first = now
                reply.timings = Timings(ttft_s=round(now - self.started, 4))
            self._show(*self.got.add(event.reasoning, event.text))
            self.got.add_calls(event.tool_calls)
            if now - self._last_save >= self._interval:
                self._checkpoint(reply)
        if event.finish_reason:
            reply.finish_reason = event.finish_reason
        if event.usage is not None:
            reply.usage = event.usage
        if event.server_timings is not None:
            reply.timings = reply.timings or Timings()
            reply.timings.server = event.server_timings
            if event.tokens_per_second is not None:
                reply.timings.tokens_per_second = round(event.tokens_per_second, 2)

    def _show(self, reasoning: str, text: str) -> None:
        now = time.monotonic()
        if reasoning:
            self.first_reasoning = self.first_reasoning or now
            if self.on_reasoning:
                self.on_reasoning(reasoning)
        if text:
            self.first_text = self.first_text or now
            if self.on_text:
                self.on_text(text)

    def _reasoning_time(self, reply: Message) -> None:
        """``timings.reasoning_s``: seconds from the first reasoning to the first text (or to now)."""
        if self.first_reasoning is not None and reply.timings is not None:
            end = self.first_text or time.monotonic()
            reply.timings.reasoning_s = round(end - self.first_reasoning, 4)

    def _checkpoint(self, reply: Message) -> None:
        reply.parts = self.got.parts()
        self._reasoning_time(reply)
        saving = time.monotonic()
        self.hooks.checkpoint()
        self._last_save = time.monotonic()
        self._interval = max(
            self.policy.checkpoint_seconds, self.policy.checkpoint_cost_ratio * (self._last_save - saving)
        )
