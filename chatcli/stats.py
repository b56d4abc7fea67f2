"""The figures of the REPL's ``stats`` for one session (``Stats.of``). No I/O here: where the session is
stored and its context figures are given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chatcli.model import Message, ToolCallPart, ToolResultPart


@dataclass
class Stats:
    """Figures for the REPL's ``stats``: counts, characters, token sums (``reasoning_tokens``: of the
    completion tokens, those spent reasoning, where the server said), timings (seconds, tokens/s)."""

    turns: int
    messages_by_role: dict[str, int]
    characters: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    last_ttft_s: float | None
    mean_ttft_s: float | None
    last_tokens_per_second: float | None
    mean_tokens_per_second: float | None
    location: str  # where the session is kept: a file path, or a database and the id
    stored_bytes: int | None  # the snapshot file's size (None: a database keeps it in rows)
    last_saved_at: str | None
    context_messages: int
    #: the newest reply's request (``ContextPlanner.figures``): tokens, window, share, turns_sent,
    #: left_out, summarised, at
    context: dict[str, Any] = field(default_factory=dict)
    reasoning_tokens: int = 0
    reasoning_characters: int = 0
    #: tool calls by tool name (as the model called it), most called first
    tool_calls: dict[str, int] = field(default_factory=dict)
    tool_failures: int = 0  # results that are errors: the tool failed, or the call was refused or not run
    tool_seconds: float = 0.0  # seconds the calls ran, summed

    @classmethod
    def of(
        cls,
        messages: Sequence[Message],
        *,
        context_start: int,
        location: str,
        stored_bytes: int | None,
        last_saved_at: str | None,
        context: dict[str, Any],
    ) -> Stats:
        """The figures of ``messages`` (dropped ones left out: replaced or undone, they stay in the file but
        are not part of the conversation); the other arguments as the fields."""
        by_role: dict[str, int] = {}
        chars = thought = 0
        tokens = [0, 0, 0, 0]  # prompt, completion, cached, reasoning
        ttfts: list[float] = []
        rates: list[float] = []
        for m in messages:
            if m.dropped is not None:
                continue
            by_role[m.role] = by_role.get(m.role, 0) + 1
            chars += len(m.content)
            thought += len(m.reasoning)
            if u := m.usage:
                for k, n in enumerate(
                    (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens)
                ):
                    tokens[k] += n or 0
            if t := m.timings:
                if t.ttft_s is not None:
                    ttfts.append(t.ttft_s)
                if t.tokens_per_second is not None:
                    rates.append(t.tokens_per_second)
        calls, failures, seconds = _tool_figures(messages)
        return cls(
            tool_calls=calls,
            tool_failures=failures,
            tool_seconds=seconds,
            turns=by_role.get("user", 0),
            messages_by_role=by_role,
            characters=chars,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            cached_tokens=tokens[2],
            reasoning_tokens=tokens[3],
            reasoning_characters=thought,
            last_ttft_s=ttfts[-1] if ttfts else None,
            mean_ttft_s=sum(ttfts) / len(ttfts) if ttfts else None,
            last_tokens_per_second=rates[-1] if rates else None,
            mean_tokens_per_second=sum(rates) / len(rates) if rates else None,
            location=location,
            stored_bytes=stored_bytes,
            last_saved_at=last_saved_at,
            context_messages=sum(1 for m in messages[context_start:] if m.dropped is None),
            context=context,
        )


def _tool_figures(messages: Sequence[Message]) -> tuple[dict[str, int], int, float]:
    """Calls by tool name (most first), failed results, and seconds spent in tools, of the messages not
    dropped."""
    calls: dict[str, int] = {}
    failures, seconds = 0, 0.0
    for m in messages:
        if m.dropped is not None or m.role not in ("assistant", "tool"):
            continue
        for p in m.parts:
            if isinstance(p, ToolCallPart):
                calls[p.name] = calls.get(p.name, 0) + 1
            elif isinstance(p, ToolResultPart):
                failures += p.is_error
                seconds += p.duration_s or 0.0
    return dict(sorted(calls.items(), key=lambda kv: -kv[1])), failures, seconds
