"""The context window of a session: what each request holds when the conversation outgrows the model's
context, the notices that say what was left out, ``/compact`` (a summary sent in place of the turns left
out) and the figures ``stats`` shows. A mixin of ConversationSession (``session.py``); the decisions
themselves are in ``chatcli.context``.

The window, in tokens, is the first of: the ``context_window`` setting (config, ``--context-window``);
what a server's overflow error stated, remembered in the snapshot (``context_window``); what the backend
states (llama.cpp ``/props``, Ollama's ``num_ctx``); else unknown, and everything since the last ``clear``
is sent until an overflow error teaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from chatcli.context import (
    MARGIN,
    Plan,
    active_summary,
    candidates,
    estimate,
    plan,
    reserve_for,
    turns_between,
)
from chatcli.errors import BackendError, ContextOverflow, MessageTooLarge, NothingToDo
from chatcli.messages import (
    BYTES_PER_TOKEN,
    ContextUsed,
    GenerationParams,
    Message,
    Stats,
    Timeouts,
    Usage,
)
from chatcli.snapshot import clear_before
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.stores.base import SaveInfo, Store

SUMMARY_MAX_TOKENS = 400  # the longest summary asked for (less in a small window: an eighth of it)
SUMMARY_INSTRUCTIONS = (
    "You write summaries of conversations. Summarise the conversation you are given so that the summary can "
    "stand in for it: keep names, facts, numbers, code identifiers, decisions and open questions, and what the "
    "user asked for. Write plain sentences, no preamble."
)


class ContextMixin:
    """What a request holds, and compaction. Needs the session's messages, settings and save."""

    messages: list[Message]
    context_start: int
    clears: list[int]
    system: str
    model: str
    params: GenerationParams
    timeouts: Timeouts
    backend: Backend | None
    context_window: int | None  # learned from an overflow error, kept in the snapshot
    window_setting: int | None  # the context_window setting (config or flag), never saved
    compact_at: float | None  # share of the window at which /compact runs by itself (None: never)
    _backend_window: int | bool | None  # what the backend stated (False: not asked yet)
    store: Store
    id: str
    last_save: SaveInfo | None

    def save(self, *, checkpoint: bool = False) -> SaveInfo:
        """ConversationSession.save (this mixin is only used inside it)."""
        raise NotImplementedError

    def _touch(self, index: int) -> None:
        raise NotImplementedError

    def notify(self, message: str) -> None:
        """ConversationSession.notify: one line to the user (the REPL's notice callback)."""
        raise NotImplementedError

    # -- the window ------------------------------------------------------------------------------------
    def window(self) -> int | None:
        """The context window in tokens (see the module docstring), or None when unknown."""
        if self.window_setting:  # the setting, unless a server's overflow error stated less
            return min(self.window_setting, self.context_window or self.window_setting)
        if self.context_window:
            return self.context_window
        if self._backend_window is False:
            stated = self.backend.context_window(self.timeouts) if self.backend is not None else None
            self._backend_window = stated if stated and stated > 0 else None
        return self._backend_window if isinstance(self._backend_window, int) else None

    def context(self) -> list[dict[str, str]]:
        """The messages the next request sends (see ``plan_request``): the system prompt, then the messages
        since the last ``clear`` that have text (partial replies included: the user saw them) and fit the
        context window. Raises MessageTooLarge."""
        return self.plan_request().messages

    def plan_request(self, end: int | None = None, min_start: int = 0) -> Plan:
        """The request for a reply to ``messages[:end]``. Raises MessageTooLarge."""
        backend = self.backend
        counter = None
        if backend is not None:
            timeouts = self.timeouts

            def counter(msgs: list[dict[str, str]]) -> int | None:
                return backend.count_tokens(msgs, timeouts)

        return plan(
            self.messages,
            context_start=self.context_start,
            system=self.system,
            window=self.window(),
            max_tokens=self.params.max_tokens,
            end=end,
            count=counter,
            min_start=min_start,
        )

    def request_params(self, p: Plan) -> GenerationParams:
        """The sampling parameters for the request ``p``: ``max_tokens`` no more than the window leaves."""
        room = p.reply_room
        if room is None or self.params.max_tokens is None or self.params.max_tokens <= room:
            return self.params
        return replace(self.params, max_tokens=room)

    def plan_turn(self) -> Plan:
        """The request for the reply about to be asked for; compacts first when ``compact_at`` says so.
        Says in a notice when the window moved. A message too large for the window is marked ``unsent``
        (and saved) before MessageTooLarge is raised."""
        try:
            p = self.plan_request()
            if self.compact_at and p.window is not None and p.tokens is not None:
                full = p.tokens >= self.compact_at * (p.window - p.reserve)
                if p.left_out > p.summarised or (full and len(p.indexes) > 1):
                    p = self._compact_before_turn(p)
        except MessageTooLarge as e:
            self.mark_unsent(e)
            raise
        self._say_window(p)
        return p

    def replan_after_overflow(self, e: ContextOverflow, refused: Plan) -> Plan:
        """The request to send after the server refused ``refused`` as too long: the window it stated is
        remembered, and at least one turn fewer is sent. Raises MessageTooLarge (the message marked
        unsent) when only the newest turn was left."""
        if e.window:
            self.context_window = e.window
        try:
            again = self.plan_request(end=len(self.messages) - 1, min_start=refused.start + 1)
        except MessageTooLarge as too_large:
            self.mark_unsent(too_large)
            raise
        window = f" ({e.window:,} tokens)" if e.window else ""
        self.notify(
            f"the request did not fit the model's context{window}: sending it again with "
            f"{count(again.left_out, 'earlier turn')} left out ({'it stays' if again.left_out == 1 else 'they stay'} "
            "in the session)"
        )
        return again

    def mark_unsent(self, e: MessageTooLarge) -> None:
        """Mark the newest user message as not sent (it stays in the session), and save."""
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if m.starts_turn:
                m.dropped, m.error = "unsent", str(e)
                self._touch(i)
                break
        self.save()

    def _say_window(self, p: Plan) -> None:
        """A notice when this request's window starts elsewhere than the previous reply's did."""
        previous = self._previous_window()
        if p.window is None or previous == (p.start, p.summary):
            return
        if p.left_out == 0:
            if previous is not None and previous != (self.context_start, None):
                self.notify(f"every turn since the last clear is sent again (context {p.window:,} tokens)")
            return
        bare = p.left_out - p.summarised
        parts = []
        if p.summarised:
            parts.append(f"{count(p.summarised, 'earlier turn')} sent as their summary")
        if bare:
            parts.append(f"{count(bare, 'earlier turn')} not sent to the model")
        stay = "it stays" if p.left_out == 1 else "they stay"
        self.notify(f"{' and '.join(parts)} (context {p.window:,} tokens); {stay} in the session")

    def _previous_window(self) -> tuple[int, int | None] | None:
        """(start, summary) of the newest reply's request, None when no reply recorded one."""
        for i in range(len(self.messages) - 1, self.context_start - 1, -1):
            m = self.messages[i]
            if m.role == "assistant" and m.dropped is None and m.content:
                return (m.context.start, m.context.summary) if m.context is not None else None
        return None

    def _left_out_of(self, start: int, summary: int | None, since: int) -> tuple[int, int]:
        """(turns left out, of them summarised) by a request whose window began at ``start``, counted from
        the clear at ``since``."""
        left = [i for i in candidates(self.messages, since, start) if self.messages[i].role == "user"]
        if summary is None or summary >= len(self.messages) or self.messages[summary].summary_of is None:
            return len(left), 0
        a, b = self.messages[summary].summary_of or (0, 0)
        return len(left), sum(1 for i in left if a <= i < b)

    # -- compaction ------------------------------------------------------------------------------------
    def compact(
        self, on_progress: Callable[[str], None] | None = None, *, before: int | None = None
    ) -> Message:
        """Ask the model for a summary of the turns the next request leaves out (with the summary before
        it, and enough of the oldest turns still sent that the newest ones fill at most half the window),
        save it as a ``system`` message marked ``summary_of``, and send it in their place from now on. The
        turns themselves are untouched. ``before``: insert it at that index (default: at the end).
        Raises NothingToDo when there is nothing to summarise, BackendError when the model cannot write
        it, SaveError."""
        window = self.window()
        if window is None:
            raise NothingToDo(
                "the model's context window is unknown (set context_window): nothing to compact"
            )
        end = len(self.messages) if before is None else before
        limit = window - reserve_for(window, self.params.max_tokens)
        try:
            window_start = self.plan_request(end=end).start
        except MessageTooLarge:  # the newest turn (a message and its long reply) fills the window alone
            users = [
                i
                for i in candidates(self.messages, self.context_start, end)
                if self.messages[i].role == "user"
            ]
            window_start = users[-1] if users else end
        keep = self._keep_from(limit // 2, window_start, end)
        summary = active_summary(self.messages, self.context_start, end)
        span = self.messages[summary].summary_of if summary is not None else None
        first, after = (span[0], span[1]) if span is not None else (self.context_start, self.context_start)
        todo = candidates(self.messages, after, keep)
        if not todo:
            raise NothingToDo("every turn since the last clear is sent to the model: nothing to compact")
        turns = sum(1 for i in todo if self.messages[i].role == "user")
        if on_progress:
            on_progress(f"summarising {count(turns, 'earlier turn')} with {self.model}…")
        earlier = self.messages[summary].content if summary is not None else ""
        text, usage = self._summarise(todo, earlier, window)
        m = Message(role="system", content=text, model=self.model, usage=usage, summary_of=[first, keep])
        at = len(self.messages) if before is None else before
        self._touch(at)
        self.messages.insert(at, m)
        self.save()
        return m

    def uncompact(self) -> Message:
        """Take back the newest summary (``/compact undo``): it stays in the file, marked ``undone``, and
        the turns it stood for are left out plainly again (or an older summary stands for them)."""
        summary = active_summary(self.messages, self.context_start, len(self.messages))
        if summary is None:
            raise NothingToDo("there is no summary to take back")
        self.messages[summary].dropped = "undone"
        self._touch(summary)
        self.save()
        return self.messages[summary]

    def _compact_before_turn(self, p: Plan) -> Plan:
        """``compact_at``: compact the turns before the newest message now, then plan again (if the model
        cannot summarise, plain trimming and a notice)."""
        try:
            self.compact(self.notify, before=len(self.messages) - 1)
        except NothingToDo:
            return p
        except BackendError as e:
            self.notify(f"could not summarise the earlier turns ({e}); they are left out instead")
            return p
        except KeyboardInterrupt:
            self.notify("summarising stopped (Ctrl-C): the earlier turns are left out instead")
            return p
        return self.plan_request()

    def _keep_from(self, budget: int, window_start: int, end: int) -> int:
        """Where the turns to keep begin: the newest turns that fit in ``budget`` tokens (by estimate), but
        never after the newest turn and never before ``window_start`` (what the window leaves out is
        summarised whatever the budget)."""
        sent = candidates(self.messages, self.context_start, end)
        users = [i for i in sent if self.messages[i].role == "user"]
        newest = users[-1] if users else end
        keep, total = newest, 0
        for i in reversed(sent):
            total += self.messages[i].estimated_tokens()
            if total > budget:
                break
            if self.messages[i].role == "user":
                keep = i
        return min(max(keep, window_start), newest)

    def _summarise(self, indexes: list[int], earlier: str, window: int) -> tuple[str, Usage | None]:
        """A summary of the messages at ``indexes`` (going on from an ``earlier`` summary), asked for in as
        many requests as the window needs, each holding what fits (a message larger than a whole request
        is summarised from its beginning). Returns its text and the last request's usage."""
        answer = min(SUMMARY_MAX_TOKENS, max(32, window // 8))
        room = int((window - answer) / MARGIN) - estimate(SUMMARY_INSTRUCTIONS) - 32
        summary, usage = earlier, None
        pending = list(indexes)
        while pending:
            chunk: list[str] = []
            used = estimate(summary)
            while pending:
                m = self.messages[pending[0]]
                line = f"{m.role.capitalize()}: {m.content}"
                size = estimate(line)
                if chunk and used + size > room:
                    break
                if used + size > room:  # alone larger than a request: its beginning
                    line = line.encode()[: max(64, (room - used) * BYTES_PER_TOKEN)].decode("utf-8", "ignore")
                    size = room - used
                chunk.append(line)
                used += size
                pending.pop(0)
            summary, usage = self._ask_summary(summary, "\n\n".join(chunk), answer)
        return summary.strip() or "(the model wrote an empty summary)", usage

    def _ask_summary(self, earlier: str, transcript: str, max_tokens: int) -> tuple[str, Usage | None]:
        """One summary request: the instructions, the summary so far and the next part of the transcript."""
        assert self.backend is not None
        so_far = (
            f"Summary so far:\n{earlier}\n\nThe conversation goes on:\n" if earlier else "The conversation:\n"
        )
        params = replace(self.params, max_tokens=max_tokens)
        messages = [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": f"{so_far}{transcript}\n\nWrite the summary now."},
        ]
        parts: list[str] = []
        usage = None
        deadline = time.monotonic() + self.timeouts.total
        stream = self.backend.stream_chat(messages, params, self.timeouts, deadline)
        try:
            for event in stream:
                parts.append(event.text)
                if event.usage is not None:
                    usage = event.usage
        finally:
            stream.close()
        return "".join(parts), usage

    # -- what stats shows ------------------------------------------------------------------------------
    def context_figures(self) -> dict[str, Any]:
        """The context of the newest reply's request: ``tokens`` sent (the server's count when it gave one),
        ``window``, ``share`` (0-1), ``turns_sent``, ``left_out``, ``summarised``; None values when unknown."""
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if m.role == "assistant" and m.dropped is None and m.context is not None:
                ctx: ContextUsed = m.context
                tokens = m.usage.prompt_tokens if m.usage and m.usage.prompt_tokens else ctx.tokens
                window = ctx.window or self.window_setting or self.context_window
                # counted from the clear that came before that request (a later clear does not change it)
                since = clear_before((*self.clears, self.context_start), ctx.start)
                left, summarised = self._left_out_of(ctx.start, ctx.summary, since)
                sent = turns_between(self.messages, ctx.start, i)
                return {
                    "tokens": tokens,
                    "window": window,
                    "share": round(tokens / window, 3) if tokens and window else None,
                    "turns_sent": sent,
                    "left_out": left,
                    "summarised": summarised,
                    "at": m.created_at,
                }
        return {
            "tokens": None,
            "window": self.window_setting or self.context_window,
            "share": None,
            "turns_sent": None,
            "left_out": 0,
            "summarised": 0,
            "at": None,
        }

    def stats(self) -> Stats:
        """The figures of the REPL's ``stats``: counts, token sums, timings, where it is stored, the context."""
        by_role: dict[str, int] = {}
        chars = prompt = completion = cached = 0
        ttfts: list[float] = []
        rates: list[float] = []
        for m in self.messages:
            if m.dropped is not None:  # replaced or undone: kept in the file, not part of the conversation
                continue
            by_role[m.role] = by_role.get(m.role, 0) + 1
            chars += len(m.content)
            if m.usage:
                prompt += m.usage.prompt_tokens or 0
                completion += m.usage.completion_tokens or 0
                cached += m.usage.cached_tokens or 0
            if m.timings:
                if m.timings.ttft_s is not None:
                    ttfts.append(m.timings.ttft_s)
                if m.timings.tokens_per_second is not None:
                    rates.append(m.timings.tokens_per_second)
        return Stats(
            turns=by_role.get("user", 0),
            messages_by_role=by_role,
            characters=chars,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            last_ttft_s=ttfts[-1] if ttfts else None,
            mean_ttft_s=sum(ttfts) / len(ttfts) if ttfts else None,
            last_tokens_per_second=rates[-1] if rates else None,
            mean_tokens_per_second=sum(rates) / len(rates) if rates else None,
            location=self.store.location(self.id),
            stored_bytes=self.store.stored_size(self.id),
            last_saved_at=self.last_save.saved_at if self.last_save else None,
            context_messages=sum(1 for m in self.messages[self.context_start :] if m.dropped is None),
            context=self.context_figures(),
        )
