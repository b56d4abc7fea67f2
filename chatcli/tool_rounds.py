"""The tool rounds of a turn: a reply that calls tools has its calls run (``chatcli.tools.ToolRunner``), each
result saved before the next request, and the model asked again, until a reply calls none, the user stops
the turn, ``max_rounds`` requests were made, or the newest round no longer fits the context window (then
a notice). The session (``chatcli.session``) hands
over what it owns as a ``ToolHost``: its messages, how a changed message is saved, how a reply is asked
for. No I/O of its own and no UI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatcli.errors import MessageTooLarge
from chatcli.model import Message

if TYPE_CHECKING:
    from chatcli.tools import ToolRunner
    from chatcli.turn import Sink, Sinks


@dataclass(frozen=True)
class ToolHost:
    """What the rounds need of the session: ``messages`` (appended to), ``saved(index, notice)`` (message
    ``index`` changed: save it, telling a failure to ``notice``), ``ask(sinks)`` (one more request and its
    reply, appended and saved as any reply)."""

    messages: list[Message]
    saved: Callable[[int, Sink | None], None]
    ask: Callable[[Sinks], Message]


def tool_rounds(reply: Message, runner: ToolRunner, sinks: Sinks, host: ToolHost) -> Message:
    """The last reply of the turn whose first reply is ``reply`` (see the module docstring)."""
    notice = sinks.notice
    rounds = 1
    while reply.status == "ok" and reply.tool_calls:
        if rounds >= runner.max_rounds:
            if notice is not None:
                notice(f"stopped after {rounds} requests in this turn (max_tool_rounds {runner.max_rounds})")
            break
        if not answer(reply, runner, sinks, host):
            break
        rounds += 1
        try:
            reply = host.ask(sinks)
        except MessageTooLarge as e:  # even the newest round alone leaves no room
            if notice is not None:
                notice(
                    f"the tool results no longer fit the model's context (about {e.tokens:,} tokens for "
                    f"{e.room:,}): the turn stops here; its calls and results stay in the session"
                )
            break
    return reply


def answer(reply: Message, runner: ToolRunner, sinks: Sinks, host: ToolHost) -> bool:
    """Run the calls of ``reply`` into a tool message after it, saved after each result; False when the
    user stopped the turn (Ctrl-C at a question: the calls left have no result, and requests answer them as
    not run, ``chatcli.wire.paired``)."""
    answers = Message("tool", parts=[])
    host.messages.append(answers)
    at = len(host.messages) - 1
    try:
        for call in reply.tool_calls:
            result = runner.run(call, sinks.ask, sinks.shown)
            answers.parts = [*answers.parts, result]
            if sinks.done is not None:
                sinks.done(call, result)
            host.saved(at, sinks.notice)
    except KeyboardInterrupt:
        return False
    finally:
        if not answers.parts:
            host.messages.remove(answers)
    return True
