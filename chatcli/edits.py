"""The edits a user makes to a conversation between turns: undo and redo a turn, change the model, the system
prompt or the title (each recorded at its point of the conversation), clear the context and bring it back.
Functions of a ``chatcli.model.Conversation``: each changes it in memory and says what changed; the session
(``chatcli.session``) saves. Each raises NothingToDo when there is nothing to change (``clear`` and
``unclear`` return 0 instead)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatcli.backends import check_model_change
from chatcli.clock import utc_now
from chatcli.errors import NothingToDo
from chatcli.messages import check_size

if TYPE_CHECKING:
    from chatcli.model import Conversation, Message


def _live(conv: Conversation) -> list[int]:
    """Indexes of the messages since the clear that are in the conversation (not dropped)."""
    msgs = conv.messages
    return [i for i in range(conv.header.context_start, len(msgs)) if msgs[i].dropped is None]


def undo(conv: Conversation) -> tuple[Message, int]:
    """Take back the last turn since the clear (its user message and all after it): they stay, marked
    ``dropped="undone"``, and ``redo`` brings them back. Returns the user message taken back and the index
    of the first message changed."""
    live = _live(conv)
    users = [i for i in live if conv.messages[i].role == "user"]
    if not users:
        raise NothingToDo(
            "there is no turn to undo" + (" since the last clear" if conv.header.context_start else "")
        )
    for i in live:
        if i >= users[-1]:
            conv.messages[i].dropped = "undone"
    return conv.messages[users[-1]], users[-1]


def redo(conv: Conversation) -> tuple[Message, int]:
    """Bring back the turn the last ``undo`` took back, if nothing was said after it. Returns its user
    message and the index of the first message changed."""
    tail: list[Message] = []
    for m in reversed(conv.messages[conv.header.context_start :]):
        if m.dropped is None:
            break
        tail.append(m)
    start = next((k for k, m in enumerate(tail) if m.role == "user" and m.dropped == "undone"), None)
    if start is None:
        raise NothingToDo(
            "there is no undone turn to bring back (after new turns it stays readable with `chatcli show`)"
        )
    turn = list(reversed(tail[: start + 1]))
    for m in turn:
        if m.dropped == "undone":
            m.dropped = None
    return turn[0], len(conv.messages) - start - 1


def retry(conv: Conversation) -> int | None:
    """Make way for a new reply to the last user message: what answered it (its reply, and with tool
    rounds every call, result and reply after it) stays, marked ``dropped="retried"``. Returns the index
    of the first message so marked (None: the turn had no reply yet)."""
    live = _live(conv)
    users = [i for i in live if conv.messages[i].role == "user"]
    if not users:
        raise NothingToDo("there is no turn to retry")
    after = [i for i in live if i > users[-1]]
    if not after:
        return None
    if conv.messages[after[0]].role != "assistant":
        raise NothingToDo("there is no turn to retry")
    for i in after:
        conv.messages[i].dropped = "retried"
    return after[0]


def mark_unsent(conv: Conversation, error: str) -> int | None:
    """Mark the newest turn's user message as not sent (``dropped="unsent"``, with ``error``: why); it stays
    in the session. Returns its index (None: there is none)."""
    for i in range(len(conv.messages) - 1, -1, -1):
        m = conv.messages[i]
        if m.starts_turn:
            m.dropped, m.error = "unsent", error
            return i
    return None


def set_model(conv: Conversation, name: str) -> str:
    """Use model ``name`` (stripped) from the next turn on, recorded at this point of the conversation;
    returns it. Raises NothingToDo (the same model, or an empty name), ConfigError (a backend that serves
    one model)."""
    name = name.strip()
    if not name or name == conv.header.model:
        raise NothingToDo(f"the model is already {conv.header.model}")
    check_model_change(conv.header.backend)
    _record_change(conv, "model", conv.header.model, name)
    conv.header.model = name
    return name


def set_system(conv: Conversation, text: str) -> None:
    """Use system prompt ``text`` (stripped; empty: none) from the next turn on, recorded at this point.
    Raises NothingToDo (the same prompt), SizeLimitError."""
    text = text.strip()
    check_size(text, "the system prompt")
    if text == conv.header.system:
        raise NothingToDo("the system prompt is already that")
    _record_change(conv, "system", conv.header.system, text)
    conv.header.system = text


def set_title(conv: Conversation, title: str) -> None:
    """Rename the session (``title`` already checked by the caller), recorded at this point. Raises
    NothingToDo (the same title)."""
    if title == conv.header.title:
        raise NothingToDo("the title is already that")
    _record_change(conv, "title", conv.header.title, title)
    conv.header.title = title


def _record_change(conv: Conversation, what: str, old: str, new: str) -> None:
    change = {"at": len(conv.messages), "what": what, "from": old, "to": new, "created_at": utc_now()}
    conv.header.changes = [*(conv.header.changes or []), change]


def clear(conv: Conversation) -> int:
    """Start the next turn from an empty context (system prompt kept); ``unclear`` brings the earlier
    messages back. Returns how many messages left the context (0: it was already empty)."""
    n = len(conv.messages) - conv.header.context_start
    if n:
        conv.header.clears = [*(conv.header.clears or []), conv.header.context_start]
        conv.header.context_start = len(conv.messages)
    return n


def unclear(conv: Conversation) -> int:
    """Undo the last ``clear``: its messages rejoin the context. Returns how many came back (0: there was
    no clear)."""
    if not conv.header.clears:
        return 0
    before = conv.header.context_start
    *rest, conv.header.context_start = conv.header.clear_list()
    conv.header.clears = rest or None
    return before - conv.header.context_start
