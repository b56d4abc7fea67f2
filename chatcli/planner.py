"""The context planner of a session: what each request holds when the conversation outgrows the model's
context, the notices that say what was left out, what ``/compact`` summarises and the context figures
``stats`` shows. It reads the conversation and never changes it (``ConversationView``); the session makes
the changes (``chatcli.session``), and the decisions themselves are in ``chatcli.context``.

The window, in tokens, is the first of: the ``context_window`` setting (config, ``--context-window``);
what a server's overflow error stated, remembered in the snapshot (``context_window``); what the backend
states (llama.cpp ``/props``, Ollama's ``num_ctx``), asked once; else unknown, and everything since the
last ``clear`` is sent until an overflow error teaches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from chatcli.config import COMPACT_KEEP
from chatcli.context import Plan, active_summary, candidates, plan, reserve_for, turns_between
from chatcli.errors import MessageTooLarge, NothingToDo
from chatcli.messages import ContextUsed, GenerationParams, Timeouts
from chatcli.snapshot import clear_before
from chatcli.text import count
from chatcli.wire import reasoning_rule

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.model import Header, Message


class ConversationView(Protocol):
    """What the planner reads of a conversation (a ``chatcli.model.Conversation`` is one)."""

    @property
    def header(self) -> Header: ...

    @property
    def messages(self) -> Sequence[Message]: ...


class ContextPlanner:
    """Plans the requests of the conversation ``view`` for ``backend`` (None: no requests; set it when the
    backend changes). ``window_setting`` (tokens), ``compact_at`` (0-1, None: never) and ``compact_keep``
    (turns) are the ``context_window``, ``compact_at`` and ``compact_keep`` settings; ``timeouts`` bound the
    backend's answers about the window and token counts."""

    def __init__(self, view: ConversationView, backend: Backend | None, timeouts: Timeouts) -> None:
        self.view = view
        self.timeouts = timeouts
        self.window_setting: int | None = None
        self.compact_at: float | None = None
        self.compact_keep = COMPACT_KEEP
        self._backend = backend
        self._stated: int | None = None  # the window the backend stated
        self._asked = False  # ... once asked

    @property
    def backend(self) -> Backend | None:
        return self._backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self._backend, self._asked, self._stated = backend, False, None

    # -- the window ------------------------------------------------------------------------------------
    def window(self) -> int | None:
        """The context window in tokens (see the module docstring), or None when unknown."""
        header = self.view.header
        if self.window_setting:  # the setting, unless a server's overflow error stated less
            return min(self.window_setting, header.context_window or self.window_setting)
        if header.context_window:
            return header.context_window
        if not self._asked and self._backend is not None:
            stated = self._backend.context_window(self.timeouts)
            self._stated, self._asked = (stated if stated and stated > 0 else None), True
        return self._stated

    def plan(self, params: GenerationParams, end: int | None = None, min_start: int = 0) -> Plan:
        """The request for a reply to ``messages[:end]`` with sampling ``params``; from ``min_start`` on
        after an overflow. Raises MessageTooLarge."""
        backend, header = self._backend, self.view.header
        counter = None
        if backend is not None:
            timeouts = self.timeouts

            def counter(msgs: list[dict[str, Any]]) -> int | None:
                return backend.count_tokens(msgs, timeouts)

        return plan(
            self.view.messages,
            context_start=header.context_start,
            system=header.system,
            window=self.window(),
            max_tokens=params.max_tokens,
            end=end,
            count=counter,
            min_start=min_start,
            rule=reasoning_rule(header.backend, header.model),
        )

    @staticmethod
    def request_params(p: Plan, params: GenerationParams) -> GenerationParams:
        """``params`` for the request ``p``: ``max_tokens`` no more than the window leaves."""
        room = p.reply_room
        if room is None or params.max_tokens is None or params.max_tokens <= room:
            return params
        return replace(params, max_tokens=room)

    def wants_compaction(self, p: Plan) -> bool:
        """Whether ``compact_at`` asks for a summary before the request ``p``: turns are left out that no
        summary covers, or the request fills ``compact_at`` of the window with more than one message."""
        if not self.compact_at or p.window is None or p.tokens is None:
            return False
        full = p.tokens >= self.compact_at * (p.window - p.reserve)
        return p.left_out > p.summarised or (full and len(p.indexes) > 1)

    def after_overflow(self, refused: Plan, params: GenerationParams) -> tuple[Plan, str]:
        """The request to send after the server refused ``refused`` as too long (the window it stated
        already in the header): at least one turn fewer; with the notice that says so. Raises
        MessageTooLarge when only the newest turn was left."""
        again = self.plan(params, end=len(self.view.messages) - 1, min_start=refused.start + 1)
        stated = self.view.header.context_window
        window = f" ({stated:,} tokens)" if stated else ""
        stay = "it stays" if again.left_out == 1 else "they stay"
        return again, (
            f"the request did not fit the model's context{window}: sending it again with "
            f"{count(again.left_out, 'earlier turn')} left out ({stay} in the session)"
        )

    def window_notice(self, p: Plan) -> str | None:
        """The notice for the request ``p`` when what it leaves out differs from the previous reply's
        request in what a user would want told: turns start or stop being left out, the window holds a
        different number of turns, a summary stands in for other turns, or the newest turn's tool rounds
        start being left out. Not while the window slides on a turn at a time (the same number of turns
        sent, one more left out): ``stats`` has the figures of every request."""
        if p.window is None:
            return None
        previous, now = self._previous_request(), _Sent.of(p, self.view.messages)
        if p.left_out == 0 and p.rounds_left_out == 0:
            if previous is not None and (previous.left_out or previous.summary is not None):
                return f"every turn since the last clear is sent again (context {p.window:,} tokens)"
            return None
        if previous is not None and previous.left_out and previous.shape() == now.shape():
            return None
        bare = p.left_out - p.summarised
        parts = []
        if p.summarised:
            parts.append(f"{count(p.summarised, 'earlier turn')} sent as a summary")
        if bare:
            parts.append(f"{count(bare, 'earlier turn')} not sent to the model")
        if p.rounds_left_out:
            parts.append(f"{count(p.rounds_left_out, 'earlier tool round')} of this turn not sent")
        stay = "it stays" if p.left_out + p.rounds_left_out == 1 else "they stay"
        return f"{' and '.join(parts)} (context {p.window:,} tokens); {stay} in the session"

    def _previous_request(self) -> _Sent | None:
        """What the request of the newest reply since the last clear held (None when no reply recorded it)."""
        messages, since = self.view.messages, self.view.header.context_start
        for i in range(len(messages) - 1, since - 1, -1):
            m = messages[i]
            if m.role == "assistant" and m.dropped is None and m.sendable:
                c = m.context
                if c is None:
                    return None
                left, summarised = self._left_out_of(c.start, c.summary, since)
                return _Sent(turns_between(messages, c.start, i), left, c.summary, summarised, c.rounds_from)
        return None

    # -- what /compact summarises ----------------------------------------------------------------------
    def to_summarise(self, params: GenerationParams, end: int) -> tuple[list[int], int, int]:
        """What a summary of the turns before ``end`` covers: (indexes of the messages to summarise, its
        ``summary_of`` span ``first`` and ``keep``): every turn since the last clear (or the summary in
        effect) but the newest ``compact_keep``, even when they all fit the window; more when those fill
        over half the window (the newest turn is always kept), and always what the next request leaves
        out. Raises NothingToDo when the window is unknown or there is nothing to summarise."""
        window = self.window()
        if window is None:
            raise NothingToDo(
                "the model's context window is unknown (set context_window): nothing to compact"
            )
        messages, since = self.view.messages, self.view.header.context_start
        limit = window - reserve_for(window, params.max_tokens)
        users = [i for i in candidates(messages, since, end) if messages[i].role == "user"]
        try:
            window_start = self.plan(params, end=end).start
        except MessageTooLarge:  # the newest turn (a message and its long reply) fills the window alone
            window_start = users[-1] if users else end
        newest_kept = users[-self.compact_keep] if len(users) >= self.compact_keep else since
        keep = max(newest_kept, self._keep_from(limit // 2, window_start, end))
        summary = active_summary(messages, since, end)
        span = messages[summary].summary_of if summary is not None else None
        first, after = (span[0], span[1]) if span is not None else (since, since)
        todo = candidates(messages, after, keep)
        if not todo:
            n = turns_between(messages, after, end)
            raise NothingToDo(
                f"nothing to compact: {count(n, 'turn') if n else 'no turn'} since the "
                f"{'summary' if span is not None else 'last clear'}, and compact keeps the newest "
                f"{self.compact_keep} whole (compact_keep)"
            )
        return todo, first, keep

    def _keep_from(self, budget: int, window_start: int, end: int) -> int:
        """Where the turns to keep begin: the newest turns that fit in ``budget`` tokens (by estimate), but
        never after the newest turn and never before ``window_start`` (what the window leaves out is
        summarised whatever the budget)."""
        messages = self.view.messages
        sent = candidates(messages, self.view.header.context_start, end)
        users = [i for i in sent if messages[i].role == "user"]
        newest = users[-1] if users else end
        keep, total = newest, 0
        for i in reversed(sent):
            total += messages[i].estimated_tokens()
            if total > budget:
                break
            if messages[i].role == "user":
                keep = i
        return min(max(keep, window_start), newest)

    # -- what stats shows ------------------------------------------------------------------------------
    def figures(self) -> dict[str, Any]:
        """The context of the newest reply's request: ``tokens`` sent (the server's count when it gave one),
        ``window``, ``share`` (0-1), ``turns_sent``, ``left_out``, ``summarised``, ``at`` (when that reply
        was made); None values when unknown."""
        messages, header = self.view.messages, self.view.header
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if m.role == "assistant" and m.dropped is None and m.context is not None:
                ctx: ContextUsed = m.context
                tokens = m.usage.prompt_tokens if m.usage and m.usage.prompt_tokens else ctx.tokens
                window = ctx.window or self.window_setting or header.context_window
                # counted from the clear that came before that request (a later clear does not change it)
                since = clear_before((*header.clear_list(), header.context_start), ctx.start)
                left, summarised = self._left_out_of(ctx.start, ctx.summary, since)
                return {
                    "tokens": tokens,
                    "window": window,
                    "share": round(tokens / window, 3) if tokens and window else None,
                    "turns_sent": turns_between(messages, ctx.start, i),
                    "left_out": left,
                    "summarised": summarised,
                    "at": m.created_at,
                }
        return {
            "tokens": None,
            "window": self.window_setting or header.context_window,
            "share": None,
            "turns_sent": None,
            "left_out": 0,
            "summarised": 0,
            "at": None,
        }

    def _left_out_of(self, start: int, summary: int | None, since: int) -> tuple[int, int]:
        """(turns left out, of them summarised) by a request whose window began at ``start``, counted from
        the clear at ``since``."""
        messages = self.view.messages
        left = [i for i in candidates(messages, since, start) if messages[i].role == "user"]
        if summary is None or summary >= len(messages) or messages[summary].summary_of is None:
            return len(left), 0
        a, b = messages[summary].summary_of or (0, 0)
        return len(left), sum(1 for i in left if a <= i < b)


@dataclass(frozen=True)
class _Sent:
    """What one request held, as its notice tells it: the turns sent, the turns left out (of them
    ``summarised`` by the summary at index ``summary``), and where the newest turn's tool rounds were sent
    from (None: every round)."""

    turns: int
    left_out: int
    summary: int | None
    summarised: int
    rounds_from: int | None

    @classmethod
    def of(cls, p: Plan, messages: Sequence[Message]) -> _Sent:
        """What the request ``p`` for a reply to ``messages`` holds."""
        turns = turns_between(messages, p.start, len(messages))
        return cls(turns, p.left_out, p.summary, p.summarised, p.rounds_from)

    def shape(self) -> tuple[int | None, int | None, int, bool]:
        """What a notice is said again for when it changes: the turns sent while turns are left out with
        no summary for them (not the turns left out, one more each time the window slides on), the
        summary and what it stands for, whether tool rounds are left out."""
        trimmed = self.turns if self.left_out > self.summarised else None
        return trimmed, self.summary, self.summarised, self.rounds_from is not None
