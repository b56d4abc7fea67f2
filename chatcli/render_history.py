"""The REPL's ``history``: turns with their statuses, where ``clear`` cut the context, the model, system
prompt and title changes at their place, the summaries ``/compact`` wrote, messages too large to send,
and, on each reply, how many earlier turns its request left out; a turn's tool calls, their results
(folded) and the replies after them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from chatcli.attachments import folded
from chatcli.model import ToolResultPart
from chatcli.snapshot import clear_before, span_text, turn_span, turns_before
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.model import Message
    from chatcli.render import Renderer
    from chatcli.session import ConversationSession


def show_history(
    out: Renderer, session: ConversationSession, last: int | None, *, reasoning: bool = False
) -> None:
    """The last ``last`` turns (all when None) on ``out``'s console; each reply's reasoning folded to one
    line, or whole (dimmed) with ``reasoning``."""
    from chatcli.render import escape_markup, local_time, sanitize, status_tag

    console = out.console
    turns = session.turns()
    shown = turns if last is None else turns[-last:] if last > 0 else []
    if not shown:
        out.info("No turns yet.")
        return
    if len(shown) < len(turns):
        out.info(f"… {count(len(turns) - len(shown), 'earlier turn')} not shown (history N shows more)")
    messages = session.messages
    index = {id(m): i for i, m in enumerate(messages)}
    turn_at = turns_before(m.starts_turn for m in messages)
    first_system = next(
        (c.get("from") for c in session.header.change_list() if c.get("what") == "system"),
        session.header.system,
    )
    if first_system and isinstance(first_system, str):  # as it was at the start; changes show in place
        console.print(f"[dim]system:[/] {escape_markup(sanitize(first_system))}")
    cut_shown = False
    first_at = index[id(shown[0][0])]
    changes = [c for c in session.header.change_list() if isinstance(c.get("at"), int) and c["at"] > first_at]
    marks = [
        i
        for i, m in enumerate(messages)
        if i > first_at and (m.summary_of is not None or m.dropped == "unsent")
    ]
    for user, reply in shown:
        at = index[id(user)]
        while changes and changes[0]["at"] <= at:
            _change(out, changes.pop(0))
        while marks and marks[0] < at:
            _mark(out, messages[marks.pop(0)], turn_at)
        if not cut_shown and session.header.context_start and at >= session.header.context_start:
            if at == session.header.context_start or user is shown[0][0]:
                console.rule("[dim]context cleared here[/]", style="dim")
            cut_shown = True
        console.print(f"[bold cyan]you[/] [dim]{local_time(user.created_at)}[/]")
        console.print(sanitize(folded(user.content)), markup=False, highlight=False)
        if reply is not None:
            console.print(
                f"[bold green]model[/] [dim]{local_time(reply.created_at)}[/]"
                + status_tag(reply)
                + _left_out_tag(reply, turn_at, {*session.header.clear_list(), session.header.context_start})
            )
            out.reasoning(reply, unfold=reasoning)
            out.markdown(reply.content)
            _tool_rounds(out, messages, index[id(reply)], reasoning)
        console.print()
    for i in marks:
        _mark(out, messages[i], turn_at)
    for c in changes:
        _change(out, c)


def _tool_rounds(out: Renderer, messages: list[Message], at: int, reasoning: bool) -> None:
    """After the reply at ``at``: its tool calls, their results and the replies that followed, up to the
    next turn; a call that got no result (a kill or Ctrl-C stopped the turn) is said to have none."""
    from chatcli.render import local_time, status_tag

    pending: list[str] = []  # the names of the last reply's calls that have no result yet, by call id
    names: dict[str, str] = {}
    for i in range(at, len(messages)):
        m = messages[i]
        if i > at and (m.starts_turn or m.dropped is not None):
            break
        if m.role == "tool":
            for p in m.parts:
                if isinstance(p, ToolResultPart):
                    out.tool_result(p.text, p.is_error)
                    pending = [c for c in pending if c != p.call_id]
            continue
        _unanswered(out, pending, names)
        if i > at and m.role == "assistant":
            out.console.print(f"[bold green]model[/] [dim]{local_time(m.created_at)}[/]" + status_tag(m))
            out.reasoning(m, unfold=reasoning)
            out.markdown(m.content)
        for call in m.tool_calls:
            out.tool_call(call.name, _decoded(call.arguments))
        pending = [c.id for c in m.tool_calls]
        names.update((c.id, c.name) for c in m.tool_calls)
    _unanswered(out, pending, names)


def _unanswered(out: Renderer, pending: list[str], names: dict[str, str]) -> None:
    from chatcli.render import escape_markup, sanitize

    for call_id in pending:
        name = escape_markup(sanitize(names.get(call_id, "the call")))
        out.console.print(f"  [dim]{name}: no result (the turn stopped before it ran or finished)[/]")


def _decoded(arguments: str) -> Any:
    try:
        return orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return arguments


def _left_out_tag(reply: Message, turn_at: list[int], cuts: set[int]) -> str:
    """`` · turns 1–4 not sent`` when the reply's request left earlier turns out (counted from the clear
    before that request)."""
    ctx = reply.context
    span = turn_span(turn_at, clear_before(cuts, ctx.start), ctx.start) if ctx is not None else None
    if span is None:
        return ""
    how = " (as a summary)" if ctx is not None and ctx.summary is not None else ""
    return f" [dim]· {span_text(span)} not sent{how}[/]"


def _mark(out: Renderer, m: Message, turn_at: list[int]) -> None:
    from chatcli.render import escape_markup, local_time, sanitize

    if m.summary_of is not None:
        span = turn_span(turn_at, m.summary_of[0], m.summary_of[1])
        taken = " (taken back)" if m.dropped else ""
        what = span_text(span) if span else "earlier turns"
        out.console.rule(f"[dim]summary of {what}{taken}[/]", style="dim")
        out.console.print(f"[dim]{escape_markup(sanitize(m.content))}[/]")
        return
    out.console.print(f"[bold cyan]you[/] [dim]{local_time(m.created_at)}[/] [yellow]\\[not sent][/]")
    out.console.print(sanitize(folded(m.content))[:2000], markup=False, highlight=False)
    if m.error:
        out.console.print(f"[yellow]{escape_markup(sanitize(m.error))}[/]")
    out.console.print()


def _change(out: Renderer, c: dict[str, Any]) -> None:
    """One recorded change (``model``, ``system``, ``title``) as a dim rule in the history."""
    from chatcli.render import escape_markup, sanitize

    new = str(c.get("to", ""))
    text = f"{c.get('what', '')} changed to {new!r}" if new else f"{c.get('what', '')} removed"
    out.console.rule(f"[dim]{escape_markup(sanitize(text))}[/]", style="dim")
