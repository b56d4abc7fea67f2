"""The context window: which messages of a session one request holds, and how many tokens they are.

A request holds the system prompt (and, after ``/compact``, a summary of earlier turns), then the newest
turns that fit in the window less the room kept for the reply. The oldest turns are left out first, whole
turns at a time; the newest turn is always sent, and a message that cannot fit even alone is refused
(MessageTooLarge). A newest turn that does not fit because of its tool rounds is sent with its user message
and its newest rounds that fit (a call always with its results); its oldest rounds are left out. Nothing
is removed from the session: this only decides what one request carries.

**Room for the reply**: ``max_tokens`` when it is set, but at most half the window; otherwise a quarter of
the window, at most MAX_RESERVE tokens.

**Counting.** Every message has an estimate (``Message.estimated_tokens``: UTF-8 bytes / 3, rounded up, plus
4 for the chat template's role markers; 3 more prime the reply). When the newest reply came back with
``usage.prompt_tokens``, the estimate is calibrated: scaled by the ratio of that measured size to the
estimate of the very request it measured, so the previous turn's usage plus an estimate of what is new
decides the window, without an extra request. An estimate must come in under the limit with a margin
(15 % uncalibrated, 5 % calibrated). When the backend can count exactly (llama.cpp's ``/apply-template``
and ``/tokenize``) and an uncalibrated estimate comes near the limit (above NEAR of it), or no turn fits by
the estimate, the planned request is counted exactly and moved on by a turn while it does not fit (at most
EXACT_TRIES counts). The window itself comes from the backend or the settings (see
``chatcli.planner``); when it is unknown, everything since the last ``clear`` is sent and a server's overflow
error teaches it.

No I/O here: the exact count is a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatcli.errors import MessageTooLarge
from chatcli.messages import BYTES_PER_TOKEN, MESSAGE_OVERHEAD
from chatcli.model import Message
from chatcli.wire import ReasoningRule, never, paired, to_openai

REPLY_PRIMING = 3  # tokens a chat template adds to start the reply (``<|im_start|>assistant\n``)
MAX_RESERVE = 4096  # the most tokens kept for a reply when max_tokens is not set
MARGIN = 1.15  # an uncalibrated estimate must fit this many times over
CALIBRATED_MARGIN = 1.05  # ... and a calibrated one
NEAR = 0.7  # an estimate above this share of the limit is counted exactly (when the backend can)
EXACT_TRIES = 4  # exact counts per request at most
CALIBRATE_FROM = 64  # tokens: a smaller request does not calibrate the estimate

#: the exact count of a request's messages (role/content dicts), or None when the server cannot say
Counter = Callable[[list[dict[str, Any]]], "int | None"]

SUMMARY_HEADER = "Summary of the earlier part of this conversation (those turns are not shown):"


def estimate(text: str) -> int:
    """The estimated size of ``text`` as one message, in tokens (see the module docstring); 0 for ""
    (an empty system prompt is not sent)."""
    if not text:
        return 0
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD


def reserve_for(window: int, max_tokens: int | None) -> int:
    """Tokens of ``window`` (tokens) kept for the reply: ``max_tokens`` (when above 0), at most half the
    window; else a quarter of it, at most MAX_RESERVE."""
    if max_tokens is not None and max_tokens > 0:
        return min(max_tokens, window // 2)
    return min(window // 4, MAX_RESERVE)


def system_text(system: str, summary: Message | None) -> str:
    """The system message's text a request starts with: the system prompt, then a blank line and the
    summary under SUMMARY_HEADER (if any); "" when there is neither."""
    if summary is None:
        return system
    block = f"{SUMMARY_HEADER}\n{summary.content}"
    return f"{system}\n\n{block}" if system else block


def is_summary(m: Message) -> bool:
    """Whether ``m`` is a summary written by ``/compact`` (it has ``summary_of``)."""
    return m.summary_of is not None


@dataclass
class Plan:
    """One request, decided: the messages from index ``start`` on (``indexes``: the ones sent, in order),
    ``messages`` the request's role/content dicts (the system message first), ``tokens`` their size as
    counted (``exact``: by the server; None when the window is unknown and nothing was counted),
    ``window`` and ``reserve`` (tokens; window None: unknown), ``summary`` the index of the summary sent
    (None: none), ``left_out`` the turns since the last clear that were not sent, ``summarised`` how
    many of those the summary stands for, ``calibration`` the measured/estimated factor the estimate
    was scaled by (None: not calibrated; see ``calibration``), and when the newest turn's oldest tool
    rounds were left out, ``rounds_from`` (the index its rounds are sent from) and ``rounds_left_out``
    (how many rounds)."""

    start: int
    indexes: list[int]
    messages: list[dict[str, Any]]
    tokens: int | None
    exact: bool
    window: int | None
    reserve: int
    summary: int | None = None
    left_out: int = 0
    summarised: int = 0
    calibration: float | None = field(default=None, repr=False)
    rounds_from: int | None = None
    rounds_left_out: int = 0

    @property
    def reply_room(self) -> int | None:
        """Tokens the window leaves for the reply (None: unknown)."""
        if self.window is None or self.tokens is None:
            return None
        return max(1, self.window - self.tokens)


def candidates(messages: Sequence[Message], context_start: int, end: int) -> list[int]:
    """Indexes, in order, of the messages a request may carry: those in ``messages[context_start:end]``
    that have something to send (``Message.sendable``) and were not dropped, summaries excluded (a summary
    goes in the system message)."""
    return [
        i
        for i in range(context_start, end)
        if messages[i].sendable and messages[i].dropped is None and messages[i].summary_of is None
    ]


def active_summary(messages: Sequence[Message], context_start: int, end: int) -> int | None:
    """The index of the newest summary before ``end`` (not dropped) whose span starts at or after
    ``context_start``, or None."""
    for i in range(end - 1, context_start - 1, -1):
        m = messages[i]
        if m.summary_of is not None and m.dropped is None and m.summary_of[0] >= context_start:
            return i
    return None


def calibration(messages: Sequence[Message], context_start: int, system: str, end: int) -> float | None:
    """Measured / estimated size of the request of the newest reply (not dropped) in
    ``messages[context_start:end]``: its ``usage.prompt_tokens`` (tokens) over the estimate of what it was
    sent (per its ``context``), clamped to 0.5-2. None when there is no such reply, the newest one reported
    no prompt size (older replies are not consulted), or its request is estimated under CALIBRATE_FROM."""
    for r in range(end - 1, context_start - 1, -1):
        m = messages[r]
        if m.role != "assistant" or m.dropped is not None:
            continue
        measured = m.usage.prompt_tokens if m.usage else None
        if not measured:
            return None
        start = m.context.start if m.context is not None else context_start
        summary = m.context.summary if m.context is not None else None
        summary_msg = messages[summary] if summary is not None and summary < len(messages) else None
        est = estimate(system_text(system, summary_msg)) + REPLY_PRIMING
        skipped = range(start + 1, m.context.rounds_from) if m.context and m.context.rounds_from else range(0)
        est += sum(
            messages[i].estimated_tokens()
            for i in candidates(messages, max(start, context_start), r)
            if i not in skipped
        )
        if est < CALIBRATE_FROM:  # too small a request to tell the tokenizer from the template's overhead
            return None
        return min(2.0, max(0.5, measured / est))
    return None


def plan(
    messages: Sequence[Message],
    *,
    context_start: int,
    system: str,
    window: int | None,
    max_tokens: int | None,
    end: int | None = None,
    count: Counter | None = None,
    min_start: int = 0,
    rule: ReasoningRule = never,
) -> Plan:
    """The request (a Plan) for a reply to the conversation ``messages[:end]`` (default: all of them).

    ``context_start``: the index after the last clear; ``system``: the system prompt (may be "");
    ``max_tokens``: the reply cap in tokens (None: not set; see ``reserve_for``);
    ``window``: the context window in tokens (None: unknown, everything since ``context_start`` is sent);
    ``count``: the backend's exact count, or None; ``min_start``: send nothing before this index (after an
    overflow, to send less than the refused request); ``rule``: which replies carry their reasoning
    (``chatcli.wire.reasoning_rule``). Raises MessageTooLarge when the newest turn cannot fit even alone
    (the caller marks it unsent)."""
    end = len(messages) if end is None else end
    if window is None:  # everything since the clear; after an overflow, the turns from min_start on
        sent = candidates(messages, context_start, end)
        start = context_start
        if min_start > context_start and sent:
            turns = [i for i in sent if messages[i].role == "user"]
            later = [i for i in turns if i >= min_start]
            start = later[0] if later else (turns[-1] if turns else sent[0])
            sent = [i for i in sent if i >= start]
        left = turns_between(messages, context_start, start)
        return Plan(
            start, sent, _request(messages, sent, system, None, rule), None, False, None, 0, left_out=left
        )
    reserve = reserve_for(window, max_tokens)
    limit = window - reserve
    # only the newest messages can be sent: look back no further than twice the window (the estimate is
    # never scaled below half), so a long session costs what its window holds, not what it has
    sent, complete = _recent(messages, context_start, end, 2 * limit)
    if not sent:
        size = estimate(system) + REPLY_PRIMING  # as the requests that send messages are counted
        return Plan(
            context_start, [], _request(messages, [], system, None, rule), size, False, window, reserve
        )
    factor = calibration(messages, context_start, system, end)
    newest = _newest_turn(messages, sent)
    fit = _Fit(messages, sent, newest, system, limit, factor, count, complete)
    summary = active_summary(messages, context_start, end)
    chosen: tuple[int, int, bool] | None = None
    if summary is not None:  # sent in place of the turns it stands for, even when they would fit
        span = messages[summary].summary_of
        assert span is not None
        chosen = fit(messages[summary], max(min_start, span[1]), must=False)
        if chosen is None:  # the summary itself does not fit: plain trimming
            summary = None
    if chosen is None:
        chosen = fit(None, min_start, must=False)
    if chosen is None:  # the newest turn does not fit whole: without its oldest tool rounds, or refused
        return _rounds_plan(fit, context_start, window, reserve, min_start, rule)
    start, tokens, exact = chosen
    indexes = [i for i in sent if i >= start]
    covered = 0
    if summary is not None:
        span = messages[summary].summary_of
        assert span is not None
        covered = turns_between(messages, max(span[0], context_start), min(span[1], start))
    return Plan(
        start=start,
        indexes=indexes,
        messages=_request(
            messages, indexes, system, messages[summary] if summary is not None else None, rule
        ),
        tokens=tokens,
        exact=exact,
        window=window,
        reserve=reserve,
        summary=summary,
        left_out=turns_between(messages, context_start, start),
        summarised=covered,
        calibration=factor,
    )


class _Fit:
    """Finds the longest run of whole turns, ending with the newest, that fits ``limit`` tokens."""

    def __init__(
        self,
        messages: Sequence[Message],
        sent: list[int],
        newest: int,
        system: str,
        limit: int,
        factor: float | None,
        count: Counter | None,
        complete: bool = True,
    ) -> None:
        self.messages, self.sent, self.newest, self.system = messages, sent, newest, system
        self.limit, self.factor, self.count = limit, factor, count
        self.complete = complete  # sent reaches back to the clear (else only a turn may start a window)

    def __call__(self, summary: Message | None, floor: int, *, must: bool) -> tuple[int, int, bool] | None:
        """(start, tokens, exact) with nothing sent before ``floor`` (but the newest turn always), or None
        when even the newest turn does not fit (MessageTooLarge instead when ``must``)."""
        messages, sent, newest = self.messages, self.sent, self.newest
        fixed = estimate(system_text(self.system, summary)) + REPLY_PRIMING
        scale = self.factor if self.factor is not None else 1.0
        margin = CALIBRATED_MARGIN if self.factor is not None else MARGIN
        first = sent[0] if self.complete else -1
        starts = [i for i in sent if floor <= i <= newest and (i == first or messages[i].role == "user")]
        starts = starts or [newest]
        allowed = set(starts)
        total = fixed
        best: int | None = None
        best_tokens = 0
        for i in reversed(sent):  # from the newest message back, to the earliest start that fits
            if i < starts[0]:
                break
            total += messages[i].estimated_tokens()
            tokens = round(total * scale)
            if tokens * margin > self.limit:
                break
            if i in allowed:
                best, best_tokens = i, tokens
        if best is not None and (
            self.count is None or self.factor is not None or best_tokens <= NEAR * self.limit
        ):
            return best, best_tokens, False  # clear of the limit, or calibrated by the last reply's usage
        # near the limit with an estimate nothing has calibrated: count exactly where the server can
        count = self.count
        exact: int | None = None
        tried = [s for s in starts if s >= (best if best is not None else newest)][:EXACT_TRIES]
        for start in tried if count is not None else []:
            assert count is not None
            exact = count(_request(messages, [i for i in sent if i >= start], self.system, summary))
            if exact is None:
                break
            if exact <= self.limit:
                return start, exact, True
        newest_alone = round(
            (fixed + sum(messages[i].estimated_tokens() for i in sent if i >= newest)) * scale
        )
        if best is not None and (exact is None or tried[-1] != newest):
            # the server cannot count, or EXACT_TRIES counts were all over: the newest turn alone is left
            return (best, best_tokens, False) if exact is None else (newest, newest_alone, False)
        if not must:
            return None
        alone = exact if exact is not None else newest_alone
        _too_large(alone, self.limit, round(fixed * scale), summary is not None, exact=exact is not None)
        return None


def _rounds_plan(
    fit: _Fit, context_start: int, window: int, reserve: int, min_start: int, rule: ReasoningRule
) -> Plan:
    """The request for a newest turn that does not fit whole: without its oldest tool rounds
    (``_without_old_rounds``). Raises MessageTooLarge when that does not fit either."""
    trimmed = _without_old_rounds(fit)
    if trimmed is None:
        fit(None, min_start, must=True)  # raises MessageTooLarge
        raise AssertionError("the newest turn fits after all")  # (fit just said it does not)
    indexes, tokens, rounds = trimmed
    messages, newest = fit.messages, fit.newest
    return Plan(
        start=newest,
        indexes=indexes,
        messages=_request(messages, indexes, fit.system, None, rule),
        tokens=tokens,
        exact=False,
        window=window,
        reserve=reserve,
        left_out=turns_between(messages, context_start, newest),
        calibration=fit.factor,
        rounds_from=indexes[1],
        rounds_left_out=rounds,
    )


def _without_old_rounds(fit: _Fit) -> tuple[list[int], int, int] | None:
    """For a newest turn that does not fit whole: its user message and its newest tool rounds that fit by
    the estimate (a round: an assistant message with calls, its results and what follows; the oldest are
    left out first, the newest always kept). Returns (indexes sent, tokens, rounds left out), or None when
    the turn has no round to leave out or even its newest round does not fit."""
    messages, sent, newest = fit.messages, fit.sent, fit.newest
    if messages[newest].role != "user":
        return None
    rounds = [i for i in sent if i > newest and messages[i].role == "assistant" and messages[i].tool_calls]
    scale = fit.factor if fit.factor is not None else 1.0
    margin = CALIBRATED_MARGIN if fit.factor is not None else MARGIN
    fixed = estimate(fit.system) + REPLY_PRIMING + messages[newest].estimated_tokens()
    for left, r in enumerate(rounds[1:], 1):
        kept = [i for i in sent if i >= r]
        tokens = round((fixed + sum(messages[i].estimated_tokens() for i in kept)) * scale)
        if tokens * margin <= fit.limit:
            return [newest, *kept], tokens, left
    return None


def _too_large(tokens: int, limit: int, fixed: int, summary: bool, *, exact: bool) -> None:
    """Raise MessageTooLarge for a newest turn of ``tokens`` (with the ``fixed`` part: system prompt,
    summary, priming) against ``limit``."""
    room = max(0, limit - fixed)
    about = "" if exact else "about "
    if fixed >= limit:
        what = "the system prompt" + (" and the summary" if summary else "")
        raise MessageTooLarge(
            f"{what} ({about}{fixed:,} tokens) leaves no room in the model's context ({limit:,} tokens once "
            "the room for the reply is kept); shorten it (/system) or use a larger context",
            tokens,
            room,
        )
    size = tokens - fixed
    raise MessageTooLarge(
        f"this message is {about}{size:,} tokens, {size - room:,} more than the model's context leaves for it "
        f"({room:,} of {limit:,} tokens, after the system prompt and the room kept for the reply); it stays in "
        "the session, not sent: shorten it, or use a larger context (context_window, n_ctx)",
        tokens,
        room,
    )


def _newest_turn(messages: Sequence[Message], sent: list[int]) -> int:
    """The index where the newest turn starts: its user message (or the first message when none is)."""
    for i in reversed(sent):
        if messages[i].role == "user":
            return i
    return sent[0] if sent else 0


def turns_between(messages: Sequence[Message], first: int, end: int) -> int:
    """How many turns (user messages not dropped) ``messages[first:end]`` holds."""
    return sum(messages[i].starts_turn for i in range(first, end))


def _recent(messages: Sequence[Message], context_start: int, end: int, enough: int) -> tuple[list[int], bool]:
    """The candidates (see ``candidates``) from the newest back until their estimate passes ``enough``
    tokens and a turn begins, oldest first; and whether they reach back to ``context_start``."""
    out: list[int] = []
    total = 0
    i = end - 1
    while i >= context_start:
        m = messages[i]
        i -= 1
        if m.sendable and m.dropped is None and m.summary_of is None:
            out.append(i + 1)
            total += m.estimated_tokens()
            if total > enough and m.role == "user":
                break
    out.reverse()
    return out, i < context_start


def _request(
    messages: Sequence[Message],
    indexes: list[int],
    system: str,
    summary: Message | None,
    rule: ReasoningRule = never,
) -> list[dict[str, Any]]:
    """The request's messages in the OpenAI chat format (``chatcli.wire.to_openai``): the system message
    (when it has text), then the messages at ``indexes`` with their tool calls and results paired
    (``chatcli.wire.paired``), their reasoning where ``rule`` says."""
    head = system_text(system, summary)
    out = [{"role": "system", "content": head}] if head else []
    out.extend(to_openai(paired([messages[i] for i in indexes]), rule))
    return out
