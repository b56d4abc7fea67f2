"""ConversationSession: a conversation (``chatcli.model``) with a backend, kept in a store, saved at every
save point. It composes the parts that do the work: a ``ContextPlanner`` (``chatcli.planner``: what each
request holds), a ``Turn`` (``chatcli.turn``: one request and its reply), the edits (``chatcli.edits``)
and the summary of ``/compact`` (``chatcli.compaction``). The session does the changes and the saves.

A turn (``ConversationSession.send``):

1. the user message is appended and the snapshot saved **before** the request is sent;
2. the reply streams through the backend; every ``policy.checkpoint_seconds`` of streaming (longer for a
   session whose save is slow: ``policy.checkpoint_cost_ratio``) the reply so far is saved with status
   ``streaming`` (a later load reads that as ``interrupted``), so even ``kill -9`` loses only the last
   moment of a reply;
3. when the reply completes it is saved with ``finish_reason``, usage and timings;
4. on Ctrl-C (KeyboardInterrupt), a timeout or a backend error, what arrived (text and reasoning) is kept
   with status ``interrupted``, ``timeout`` or ``error`` and saved, and the conversation can go on.

Saves go to a store (``chatcli.stores``: a folder, SQLite, PostgreSQL or MySQL) through its protocol; the
session tells the store which messages changed since its last save, so a database writes only those.

This module imports neither typer, rich nor prompt_toolkit; the REPL passes callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from chatcli import edits
from chatcli.attachments import folded
from chatcli.backends.base import public_url
from chatcli.clock import utc_now
from chatcli.compaction import or_trimmed, summary, taken_back
from chatcli.errors import (
    BackendError,
    BackendTimeout,
    ContextOverflow,
    MessageTooLarge,
    SaveError,
    SessionTimeoutError,
    Terminated,
)
from chatcli.messages import (  # re-exported: the session's data types are part of its interface
    DROPPED,
    STATUSES,
    GenerationParams,
    Timeouts,
    Timings,
    Usage,
    check_size,
)
from chatcli.model import Conversation, Header, Message
from chatcli.planner import ContextPlanner
from chatcli.signals import signals_deferred
from chatcli.snapshot import new_session_id, title_from
from chatcli.stats import Stats
from chatcli.tool_rounds import ToolHost, tool_rounds
from chatcli.turn import Sink, Sinks, Turn, TurnHooks, TurnPolicy

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.context import Plan
    from chatcli.stores.base import SaveInfo, SessionLock, SessionStore
    from chatcli.tools import ToolRunner


class ConversationSession:
    """A conversation with one backend, persisted in a store.

    Create with ``ConversationSession.create`` or ``ConversationSession.resume``; both take the session's
    writer lock (raise SessionLocked when another chatcli holds it). Call ``close`` when done.
    ``on_notice(text)`` receives one-line notices that have no other place (e.g. from the store).
    ``planner.window_setting`` (tokens) and ``planner.compact_at`` (0-1) are the ``context_window`` and
    ``compact_at`` settings; ``policy`` says how turns save and retry (``default_policy`` to begin with)."""

    default_policy = TurnPolicy()

    def __init__(
        self, store: SessionStore, conv: Conversation, backend: Backend | None, lock: SessionLock | None
    ) -> None:
        self.store = store
        self.conv = conv  # the header and the messages: what the store keeps (chatcli.model)
        self.id: str = conv.header.id
        self.header: Header = conv.header
        self.messages: list[Message] = conv.messages
        self.planner = ContextPlanner(conv, backend, Timeouts())
        self.policy = self.default_policy
        self._backend = backend
        self._lock = lock
        self.last_save: SaveInfo | None = None
        self.unsaved = False  # True while memory holds something the store does not
        self.on_notice: Sink | None = None
        self._dirty_from = len(self.messages)  # messages from here on changed since the last save
        self._streaming: int | None = None  # index of the reply being streamed
        self.tools: ToolRunner | None = None  # the tools a reply may call (None: none offered)

    @property
    def backend(self) -> Backend | None:
        """The model server the turns talk to (None: this session cannot send)."""
        return self._backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self._backend = self.planner.backend = backend

    @property
    def timeouts(self) -> Timeouts:
        """The connect, idle and total limits of every request, in seconds."""
        return self.planner.timeouts

    @timeouts.setter
    def timeouts(self, timeouts: Timeouts) -> None:
        self.planner.timeouts = timeouts

    @property
    def params(self) -> GenerationParams:
        """The sampling parameters sent with every request (the header's ``params``); set a new one to
        change them (keys this chatcli does not know are kept)."""
        return GenerationParams.from_json(self.header.params)

    @params.setter
    def params(self, params: GenerationParams) -> None:
        known = {f.name for f in fields(GenerationParams)}
        unknown = {k: v for k, v in self.header.params.items() if k not in known}
        self.header.params = {**params.to_json(), **unknown}

    # -- opening and closing ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        store: SessionStore,
        backend: Backend,
        *,
        model: str,
        system: str = "",
        title: str = "",
        params: GenerationParams | None = None,
        base_url: str | None = None,
        model_path: str | None = None,
    ) -> ConversationSession:
        """A new, empty session; its first snapshot is written at once. ``base_url`` and ``model_path``
        (what the snapshot records of where it runs) default to what the backend says; credentials in
        the URL are never recorded. Raises SaveError, StoreError."""
        where = backend.recorded()
        now = utc_now()
        header = Header(
            id=new_session_id(),
            title=title,
            created_at=now,
            updated_at=now,
            backend=backend.name,
            model=model,
            base_url=public_url(where.get("base_url", "") if base_url is None else base_url),
            params=(params or GenerationParams()).to_json(),
            system=system,
            model_path=(where.get("model_path", "") if model_path is None else model_path) or None,
        )
        session = cls(store, Conversation(header), backend, store.lock(header.id))
        session._touch(0)  # a new id: nothing of it is in the store yet
        try:
            session.save()
        except BaseException:
            session.close()
            raise
        return session

    @classmethod
    def resume(
        cls,
        store: SessionStore,
        session_id: str,
        backend_factory: Callable[[ConversationSession], Backend] | None = None,
    ) -> ConversationSession:
        """Open a saved session by exact id (see ``chatcli.snapshot.resolve``). Takes the lock, then loads.
        ``backend_factory`` builds the backend from the restored settings. Raises SessionLocked,
        SessionNotFound, SnapshotError, StoreError."""
        lock = store.lock(session_id)
        try:
            session = cls(store, store.load(session_id), None, lock)
            if backend_factory is not None:
                session.backend = backend_factory(session)
        except BaseException:
            lock.release()
            raise
        return session

    def close(self) -> None:
        """Save anything unsaved (best effort), stop the backend, release the lock."""
        try:
            if self.unsaved:
                try:
                    self.save()
                except SaveError:
                    pass
        finally:
            if self.backend is not None:
                self.backend.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # -- saving ----------------------------------------------------------------------------------------
    def to_snapshot(self) -> dict[str, Any]:
        """The session as its snapshot (README, "The snapshot format"): a new dict, messages last."""
        return self.conv.to_json()

    def save(self, *, checkpoint: bool = False) -> SaveInfo:
        """Write the session to its store; returns once the write is durable (the folder: after the fsyncs; a
        database: after the commit; while a database does not answer, the local spool). Only the messages
        changed since the last save are handed over as changed. Ctrl-C, SIGTERM and SIGHUP are held off
        until the write is done. Raises SaveError (then ``unsaved`` stays True and the next save retries)."""
        self.header.updated_at = utc_now()
        self.unsaved = True
        changed = self._dirty_from if self._streaming is None else min(self._dirty_from, self._streaming)
        try:
            with signals_deferred():
                info = self.store.save(self.conv, changed_from=changed, checkpoint=checkpoint)
        except BaseException:
            self._dirty_from = changed  # the next save writes all of it again
            raise
        self.unsaved = False
        self._dirty_from = len(self.messages)
        self.last_save = info
        return info

    def _touch(self, index: int | None) -> None:
        """Message ``index`` changed: the next save writes it (and those after it). None: none changed."""
        if index is not None:
            self._dirty_from = min(self._dirty_from, index)

    def _checkpoint(self) -> None:
        """Save mid-reply (status ``streaming``); a failure here is retried at the next save point."""
        try:
            self.save(checkpoint=True)
        except SaveError:
            pass

    def _save_after_failure(self, notice: Sink | None) -> None:
        """Save after a turn failed; a failed save is told to ``notice`` (None: not told)."""
        try:
            self.save()
        except SaveError as e:
            if notice is not None:
                notice(f"{e} (the turn is kept in memory and will be saved at the next attempt)")

    def notify(self, message: str) -> None:
        """A one-line notice for the user, to ``on_notice`` (dropped when there is none)."""
        if self.on_notice is not None:
            self.on_notice(message)

    def _notice(self, sinks: Sinks) -> Sink:
        return sinks.notice or self.notify

    # -- the turn --------------------------------------------------------------------------------------
    def send(
        self,
        text: str,
        on_delta: Sink | None = None,
        on_notice: Sink | None = None,
        on_reasoning: Sink | None = None,
        *,
        sinks: Sinks | None = None,
    ) -> Message:
        """Run one turn: save the user message, stream the reply, save it; return the (last) assistant
        Message. With ``tools``, the calls a reply makes are run and the model asked again (``tool_rounds``).

        ``on_delta(text)`` gets each piece of reply text as it arrives, ``on_reasoning(text)`` each piece
        of its reasoning; ``on_notice(text)`` gets one-line notices (a save that failed but will be
        retried, a rate-limit wait; default ``on_notice``); or ``sinks`` (the tool callbacks too). Ctrl-C
        while streaming ends the reply with status ``interrupted`` and returns normally. Raises
        SessionTimeoutError (partial reply saved as ``timeout``), BackendError (partial reply saved as
        ``error``; MessageTooLarge: no reply, the message kept and marked ``unsent``), SizeLimitError (a
        message over MAX_MESSAGE_BYTES: nothing kept or sent), or SaveError when the final save fails (the
        turn stays in memory and the next save writes it)."""
        if self.backend is None:
            raise BackendError("this session has no backend to talk to")
        check_size(text)
        sinks = sinks or Sinks(on_delta, on_reasoning, on_notice)
        self._touch(len(self.messages))
        self.messages.append(Message(role="user", content=text))
        if not self.header.title:  # from what the user typed; from the files' names when there is only files
            self.header.title = title_from(folded(text, files=False)) or title_from(folded(text))
        try:
            self.save()
        except SaveError as e:
            self._notice(sinks)(f"{e} (the message is kept in memory and will be saved at the next attempt)")
        return self._reply(sinks)

    def retry(
        self,
        on_delta: Sink | None = None,
        on_notice: Sink | None = None,
        on_reasoning: Sink | None = None,
        *,
        sinks: Sinks | None = None,
    ) -> Message:
        """Ask again for the reply to the last user message. The reply it replaces stays in the file,
        marked ``dropped="retried"``. Raises NothingToDo when there is no turn to retry, and otherwise
        what ``send`` raises."""
        if self.backend is None:
            raise BackendError("this session has no backend to talk to")
        self._touch(edits.retry(self.conv))
        self.save()
        return self._reply(sinks or Sinks(on_delta, on_reasoning, on_notice))

    def _reply(self, sinks: Sinks) -> Message:
        """The reply to the conversation as it is, after any tool rounds (see ``send``)."""
        reply = self._one_reply(sinks)
        if self.tools is None:
            return reply
        sinks = replace(sinks, notice=self._notice(sinks))
        host = ToolHost(self.messages, self._saved_at, lambda sinks: self._one_reply(sinks, later=True))
        return tool_rounds(reply, self.tools, sinks, host)

    def _saved_at(self, index: int, notice: Sink | None) -> None:
        self._touch(index)
        self._save_after_failure(notice)

    def _one_reply(self, sinks: Sinks, *, later: bool = False) -> Message:
        """One request and its reply (see ``send``); ``later``: after tool rounds of the turn (a turn too large
        for the window then stops, its user message is not marked unsent)."""
        plan = self.plan_turn(self._notice(sinks), mark=not later)  # MessageTooLarge: there is no reply
        reply = Message("assistant", status="streaming", model=self.header.model)
        self._touch(len(self.messages))
        self._streaming = len(self.messages)
        self.messages.append(reply)
        try:
            self._run_turn(reply, plan, sinks)
        finally:
            self._streaming = None
        return reply

    def _run_turn(self, reply: Message, plan: Plan, sinks: Sinks) -> None:
        """Run the turn into ``reply`` and save it, however it ends (see ``send``)."""
        assert self.backend is not None
        notice = self._notice(sinks)

        def replan(e: ContextOverflow, refused: Plan) -> Plan:
            return self.replan_after_overflow(e, refused, notice)

        hooks = TurnHooks(self.request_params, replan, self._checkpoint, notice)
        tools = self.tools.functions() if self.tools is not None else ()
        turn = Turn(self.backend, self.timeouts, self.policy, hooks, sinks.text, sinks.reasoning, tools)
        try:
            turn.run(reply, plan)
        except MessageTooLarge:  # after an overflow, even the newest turn alone did not fit: no reply
            if self.messages and self.messages[-1] is reply:
                self.messages.pop()
            self._streaming = None
            self._save_after_failure(notice)
            raise
        except KeyboardInterrupt:
            reply.status = "interrupted"
        except Terminated:  # SIGTERM or SIGHUP: keep what arrived, then let the CLI leave
            reply.status = "interrupted"
            self._save_after_failure(None)
            raise
        except BackendTimeout as e:
            reply.status, reply.error = "timeout", str(e)
            self._save_after_failure(notice)
            raise SessionTimeoutError(str(e), partial=reply.content, cause=e) from e
        except BaseException as e:  # a backend error, a bug or an unexpected failure: keep what arrived
            reply.status = "error"
            reply.error = str(e) if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"
            self._save_after_failure(notice)
            raise
        self.save()

    # -- the context window (chatcli.planner) ----------------------------------------------------------
    def window(self) -> int | None:
        """The context window in tokens, or None when unknown (``ContextPlanner.window``)."""
        return self.planner.window()

    def context(self) -> list[dict[str, Any]]:
        """The messages the next request sends (OpenAI chat format): the system prompt, then the messages
        since the last ``clear`` that have text (partial replies included: the user saw them) and fit the
        context window. Raises MessageTooLarge."""
        return self.planner.plan(self.params).messages

    def request_params(self, p: Plan) -> GenerationParams:
        """The sampling parameters for the request ``p``: ``max_tokens`` no more than the window leaves."""
        return self.planner.request_params(p, self.params)

    def plan_turn(self, notice: Sink | None = None, *, mark: bool = True) -> Plan:
        """The request for the reply about to be asked for; compacts first when ``compact_at`` says so.
        Says in a notice (to ``notice``, default ``on_notice``) when the window moved. A message too large
        for the window is marked ``unsent`` (and saved; not with ``mark`` False) before MessageTooLarge is
        raised."""
        notice = notice or self.notify
        try:
            p = self.planner.plan(self.params)
            if self.planner.wants_compaction(p):
                p = self._compact_before_turn(p, notice)
        except MessageTooLarge as e:
            if mark:
                self.mark_unsent(e)
            raise
        said = self.planner.window_notice(p)
        if said:
            notice(said)
        return p

    def replan_after_overflow(self, e: ContextOverflow, refused: Plan, notice: Sink | None = None) -> Plan:
        """The request to send after the server refused ``refused`` as too long: the window it stated is
        remembered, and at least one turn fewer is sent (said to ``notice``). Raises MessageTooLarge (the
        message marked unsent) when only the newest turn was left."""
        if e.window:
            self.header.context_window = e.window
        try:
            again, said = self.planner.after_overflow(refused, self.params)
        except MessageTooLarge as too_large:
            self.mark_unsent(too_large)
            raise
        (notice or self.notify)(said)
        return again

    def mark_unsent(self, e: MessageTooLarge) -> None:
        """Mark the newest user message as not sent (``edits.mark_unsent``: it stays), and save."""
        self._touch(edits.mark_unsent(self.conv, str(e)))
        self.save()

    # -- compaction ------------------------------------------------------------------------------------
    def compact(self, on_progress: Sink | None = None, *, before: int | None = None) -> Message:
        """Ask the model for a summary of every turn but the newest ``planner.compact_keep`` (and of what
        the next request leaves out: ``compaction.summary``), save it as a ``system`` message marked
        ``summary_of``, and send it in their place from now on. The turns themselves are untouched.
        ``before``: insert it at that index (default: at the end). Raises NothingToDo when there is nothing
        to summarise, BackendError when the model cannot write it, SaveError."""
        end = len(self.messages) if before is None else before
        self.messages.insert(end, summary(self.planner, self.params, end, on_progress))
        self._touch(end)
        self.save()
        return self.messages[end]

    def uncompact(self) -> Message:
        """Take back the newest summary (``/compact undo``): it stays in the file, marked ``undone``, and
        the turns it stood for are sent as they are again, as far as the window holds them (or an older
        summary stands for them)."""
        at = taken_back(self.conv)
        self._touch(at)
        self.save()
        return self.messages[at]

    def _compact_before_turn(self, p: Plan, notice: Sink) -> Plan:
        """``compact_at``: compact the turns before the newest message now, then plan again (if the model
        cannot summarise, plain trimming and a notice: ``compaction.or_trimmed``)."""
        if or_trimmed(lambda: self.compact(notice, before=len(self.messages) - 1), notice):
            return self.planner.plan(self.params)
        return p

    # -- edits (chatcli.edits): each saves when it changed something ------------------------------------
    def undo(self) -> Message:
        """Take back the last turn since the clear (``edits.undo``); returns its user message. Raises
        NothingToDo, and what ``save`` raises."""
        m, changed = edits.undo(self.conv)
        self._touch(changed)
        self.save()
        return m

    def redo(self) -> Message:
        """Bring back the turn the last ``undo`` took back (``edits.redo``); returns its user message."""
        m, changed = edits.redo(self.conv)
        self._touch(changed)
        self.save()
        return m

    def set_model(self, name: str) -> None:
        """Use model ``name`` from the next turn on (``edits.set_model``), and save."""
        name = edits.set_model(self.conv, name)
        if self.backend is not None:
            self.backend.model = name
        self.save()

    def set_system(self, text: str) -> None:
        """Use system prompt ``text`` from the next turn on (``edits.set_system``), and save."""
        edits.set_system(self.conv, text)
        self.save()

    def set_title(self, title: str) -> None:
        """Rename the session (``edits.set_title``), and save."""
        edits.set_title(self.conv, title)
        self.save()

    def clear(self) -> int:
        """Start the next turn from an empty context (``edits.clear``); returns how many messages left it
        (0: nothing saved)."""
        n = edits.clear(self.conv)
        if n:
            self.save()
        return n

    def unclear(self) -> int:
        """Undo the last ``clear`` (``edits.unclear``); returns how many messages came back (0: nothing
        saved)."""
        n = edits.unclear(self.conv)
        if n:
            self.save()
        return n

    # -- what the REPL shows ---------------------------------------------------------------------------
    def turns(self) -> list[tuple[Message, Message | None]]:
        """The conversation as (user message, its reply or None) pairs (``Conversation.turns``)."""
        return self.conv.turns()

    def stats(self) -> Stats:
        """The figures of the REPL's ``stats``: counts, token sums, timings, where it is stored, the context
        (``Stats.of``)."""
        return Stats.of(
            self.messages,
            context_start=self.header.context_start,
            location=self.store.location(self.id),
            stored_bytes=self.store.stored_size(self.id),
            last_saved_at=self.last_save.saved_at if self.last_save else None,
            context=self.planner.figures(),
        )


__all__ = [
    "DROPPED",
    "STATUSES",
    "ConversationSession",
    "GenerationParams",
    "Message",
    "Sinks",
    "Stats",
    "Timeouts",
    "Timings",
    "Usage",
]
