"""The summary ``/compact`` asks the model for: every turn but the newest few (``compact_keep``), and
always the turns a request leaves out, summarised in as many requests as the window needs, so that the
summary can be sent in their place (``chatcli.session`` inserts and saves it; ``chatcli.planner`` chooses
what it covers). No UI; the backend does the I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from chatcli.context import MARGIN, active_summary, estimate
from chatcli.errors import BackendError, NothingToDo
from chatcli.messages import BYTES_PER_TOKEN
from chatcli.model import Conversation, Message
from chatcli.reasoning import ThinkSplitter
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.messages import GenerationParams, Timeouts, Usage
    from chatcli.planner import ContextPlanner

SUMMARY_MAX_TOKENS = 400  # the longest summary asked for (less in a small window: an eighth of it)
SUMMARY_INSTRUCTIONS = (
    "You write summaries of conversations. Summarise the conversation you are given so that the summary can "
    "stand in for it: keep names, facts, numbers, code identifiers, decisions and open questions, and what the "
    "user asked for. Write plain sentences, no preamble."
)


def taken_back(conv: Conversation) -> int:
    """``/compact undo``: mark the newest summary in effect ``undone``; its index. Raises NothingToDo."""
    at = active_summary(conv.messages, conv.header.context_start, len(conv.messages))
    if at is None:
        raise NothingToDo("there is no summary to take back")
    conv.messages[at].dropped = "undone"
    return at


def or_trimmed(compact: Callable[[], object], notice: Callable[[str], None]) -> bool:
    """Run ``compact``; False (with a notice for the user) when the earlier turns are to be left out
    plainly instead: nothing to summarise, the model could not write the summary, or Ctrl-C."""
    try:
        compact()
    except NothingToDo:
        return False
    except BackendError as e:
        notice(f"could not summarise the earlier turns ({e}); they are left out instead")
        return False
    except KeyboardInterrupt:
        notice("summarising stopped (Ctrl-C): the earlier turns are left out instead")
        return False
    return True


def summary(
    planner: ContextPlanner, params: GenerationParams, end: int, on_progress: Callable[[str], None] | None
) -> Message:
    """The summary message (role ``system``, ``summary_of`` its span) of the turns before ``end`` but the
    newest few (``ContextPlanner.to_summarise``), written by the planner's backend with
    ``params``; ``on_progress`` is told what is summarised. Raises NothingToDo, BackendError."""
    todo, first, keep = planner.to_summarise(params, end)
    backend, window = planner.backend, planner.window()
    if backend is None or window is None:
        raise BackendError("this session has no backend to talk to")
    view = planner.view
    messages, header = view.messages, view.header
    if on_progress:
        turns = sum(1 for i in todo if messages[i].role == "user")
        on_progress(f"summarising {count(turns, 'earlier turn')} with {header.model}…")
    before = active_summary(messages, header.context_start, end)
    earlier = messages[before].content if before is not None else ""
    picked = [messages[i] for i in todo]
    text, usage = summarise(backend, picked, earlier, window, params, planner.timeouts)
    return Message("system", text, model=header.model, usage=usage, summary_of=[first, keep])


def summarise(
    backend: Backend,
    messages: Sequence[Message],
    earlier: str,
    window: int,
    params: GenerationParams,
    timeouts: Timeouts,
) -> tuple[str, Usage | None]:
    """A summary of ``messages`` (going on from an ``earlier`` summary, "" for none) for a model whose
    context window is ``window`` tokens, asked for in as many requests as it needs, each holding what fits
    (a message larger than a whole request is summarised from its beginning). Returns its text and the
    last request's usage. Raises what ``Backend.stream_chat`` raises."""
    answer = min(SUMMARY_MAX_TOKENS, max(32, window // 8))
    room = int((window - answer) / MARGIN) - estimate(SUMMARY_INSTRUCTIONS) - 32
    summary, usage = earlier, None
    pending = list(messages)
    while pending:
        chunk: list[str] = []
        used = estimate(summary)
        while pending:
            m = pending[0]
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
        request = replace(params, max_tokens=answer)
        summary, usage = _ask(backend, summary, "\n\n".join(chunk), request, timeouts)
    return summary.strip() or "(the model wrote an empty summary)", usage


def _ask(
    backend: Backend, earlier: str, transcript: str, params: GenerationParams, timeouts: Timeouts
) -> tuple[str, Usage | None]:
    """One summary request: the instructions, the summary so far and the next part of the transcript; the
    reply's text without its reasoning."""
    so_far = (
        f"Summary so far:\n{earlier}\n\nThe conversation goes on:\n" if earlier else "The conversation:\n"
    )
    messages = [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS},
        {"role": "user", "content": f"{so_far}{transcript}\n\nWrite the summary now."},
    ]
    parts: list[str] = []
    usage = None
    splitter = ThinkSplitter()  # a reasoning model's <think> is not part of the summary
    deadline = time.monotonic() + timeouts.total
    stream = backend.stream_chat(messages, params, timeouts, deadline)
    try:
        for event in stream:
            parts.append(splitter.feed(event.text)[1])
            if event.usage is not None:
                usage = event.usage
    finally:
        stream.close()
    parts.append(splitter.flush()[1])
    return "".join(parts), usage
