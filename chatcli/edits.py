"""The edits a user makes to a session between turns: undo and redo a turn, change the model, the system
prompt or the title (each recorded at its point of the conversation), clear the context and bring it back.
A mixin of ConversationSession (``session.py``): these work on its messages and save through it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatcli.backends import check_model_change
from chatcli.clock import utc_now
from chatcli.errors import NothingToDo
from chatcli.messages import check_size

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.messages import Message
    from chatcli.stores.base import SaveInfo


class SessionEdits:
    """Undo/redo, model/system/title changes, clear/unclear. Each saves the session when it changes
    something, and raises what the store's save raises when it fails (SaveError, StoreUnavailable,
    StoreConflict, SessionLocked: "the save's errors" below); undo, redo and the ``set_*`` raise
    NothingToDo when there is nothing to change, clear and unclear return 0 instead."""

    messages: list[Message]
    context_start: int
    clears: list[int]
    changes: list[dict[str, Any]]
    model: str
    system: str
    title: str
    backend_name: str
    backend: Backend | None

    def save(self, *, checkpoint: bool = False) -> SaveInfo:
        """Provided by ConversationSession: write the session to its store."""
        raise NotImplementedError

    def _touch(self, index: int) -> None:
        raise NotImplementedError

    def undo(self) -> Message:
        """Take back the last turn since the clear (its user message and all after it): they stay in the
        file, marked ``dropped="undone"``, and ``redo`` brings them back. Returns the user message taken
        back. Raises NothingToDo, the save's errors."""
        live = [i for i in range(self.context_start, len(self.messages)) if self.messages[i].dropped is None]
        users = [i for i in live if self.messages[i].role == "user"]
        if not users:
            raise NothingToDo(
                "there is no turn to undo" + (" since the last clear" if self.context_start else "")
            )
        for i in live:
            if i >= users[-1]:
                self.messages[i].dropped = "undone"
        self._touch(users[-1])
        self.save()
        return self.messages[users[-1]]

    def redo(self) -> Message:
        """Bring back the turn the last ``undo`` took back, if nothing was said after it. Returns its user
        message. Raises NothingToDo, the save's errors."""
        tail: list[Message] = []
        for m in reversed(self.messages[self.context_start :]):
            if m.dropped is None:
                break
            tail.append(m)
        start = next((k for k, m in enumerate(tail) if m.role == "user" and m.dropped == "undone"), None)
        if start is None:
            raise NothingToDo(
                "there is no undone turn to bring back (after new turns it stays readable with "
                "`chatcli show`)"
            )
        turn = list(reversed(tail[: start + 1]))
        for m in turn:
            if m.dropped == "undone":
                m.dropped = None
        self._touch(len(self.messages) - start - 1)
        self.save()
        return turn[0]

    def set_model(self, name: str) -> None:
        """Use model ``name`` from the next turn on; the change is recorded at this point of the
        conversation. Raises NothingToDo (the same model, or an empty name), ConfigError (a backend that
        serves one model), the save's errors."""
        name = name.strip()
        if not name or name == self.model:
            raise NothingToDo(f"the model is already {self.model}")
        check_model_change(self.backend_name)
        if self.backend is not None:
            self.backend.model = name
        self._record_change("model", self.model, name)
        self.model = name
        self.save()

    def set_system(self, text: str) -> None:
        """Use system prompt ``text`` (stripped; empty: none) from the next turn on; recorded at this
        point. Raises NothingToDo (the same prompt), SizeLimitError, the save's errors."""
        text = text.strip()
        check_size(text, "the system prompt")
        if text == self.system:
            raise NothingToDo("the system prompt is already that")
        self._record_change("system", self.system, text)
        self.system = text
        self.save()

    def set_title(self, title: str) -> None:
        """Rename the session (``title`` already checked by the caller); recorded at this point. Raises
        NothingToDo (the same title), the save's errors."""
        if title == self.title:
            raise NothingToDo("the title is already that")
        self._record_change("title", self.title, title)
        self.title = title
        self.save()

    def _record_change(self, what: str, old: str, new: str) -> None:
        self.changes.append(
            {"at": len(self.messages), "what": what, "from": old, "to": new, "created_at": utc_now()}
        )

    def clear(self) -> int:
        """Start the next turn from an empty context (system prompt kept). Earlier messages stay in the
        snapshot and ``unclear`` brings them back. Returns how many messages left the context (0: it was
        already empty, nothing saved)."""
        n = len(self.messages) - self.context_start
        if n:
            self.clears.append(self.context_start)
            self.context_start = len(self.messages)
            self.save()
        return n

    def unclear(self) -> int:
        """Undo the last ``clear``: its messages rejoin the context. Returns how many came back (0: there
        was no clear, nothing saved)."""
        if not self.clears:
            return 0
        before = self.context_start
        self.context_start = self.clears.pop()
        self.save()
        return before - self.context_start
