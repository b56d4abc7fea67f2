"""ConversationSession: the turn, its save points and its stats.

A turn (``ConversationSession.send``):

1. the user message is appended and the snapshot saved **before** the request is sent;
2. the reply streams through the backend; every ``checkpoint_seconds`` of streaming (longer for a session
   whose save is slow: ``checkpoint_cost_ratio``) the text so far is saved with status ``streaming`` (a
   later load reads that as ``interrupted``), so even ``kill -9`` loses only the last moment of a reply;
3. when the reply completes it is saved with ``finish_reason``, usage and timings;
4. on Ctrl-C (KeyboardInterrupt), a timeout or a backend error, what arrived is kept with status
   ``interrupted``, ``timeout`` or ``error`` and saved, and the conversation can go on.

Saves go to a store (``chatcli.stores``: a folder, SQLite, PostgreSQL or MySQL) through its protocol; the
session tells the store which messages changed since its last save, so a database writes only those.

This module imports neither typer, rich nor prompt_toolkit; the REPL passes callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from chatcli.attachments import folded
from chatcli.backends.base import public_url
from chatcli.clock import utc_now
from chatcli.edits import SessionEdits
from chatcli.errors import (
    BackendError,
    BackendTimeout,
    ContextOverflow,
    MessageTooLarge,
    NothingToDo,
    RateLimited,
    SaveError,
    SessionTimeoutError,
    StreamError,
    Terminated,
)
from chatcli.messages import (  # re-exported: the session's data types are part of its interface
    DROPPED,
    MAX_MESSAGE_BYTES,
    REPLY_OVER_LIMIT,
    STATUSES,
    ContextUsed,
    GenerationParams,
    Message,
    MessageJSON,
    Stats,
    Timeouts,
    Timings,
    Usage,
    check_size,
    cut_to_fit,
    utf8_size,
)
from chatcli.session_context import ContextMixin
from chatcli.signals import signals_deferred
from chatcli.snapshot import FORMAT, KNOWN_KEYS, VERSION, Snapshot, new_session_id, title_from
from chatcli.stores.base import MessageDicts

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.context import Plan
    from chatcli.stores.base import SaveInfo, SessionLock, Store


class ConversationSession(SessionEdits, ContextMixin):
    """A conversation with one backend, persisted in a store.

    Create with ``ConversationSession.create`` or ``ConversationSession.resume``; both take the session's
    writer lock (raise SessionLocked when another chatcli holds it). Call ``close`` when done.
    ``on_notice(text)`` receives one-line notices that come outside a turn (e.g. from the store).
    ``window_setting`` (tokens) and ``compact_at`` (0-1) are the ``context_window`` and ``compact_at``
    settings (see ``session_context``)."""

    checkpoint_seconds = 0.25  # the least time between two saves while a reply streams
    checkpoint_cost_ratio = 10.0  # ... and at least this many times the last such save took (a big session)
    max_retries = 2  # for 429 (rate limited) before any token arrived
    max_retry_wait = 30.0  # seconds; a longer Retry-After is reported instead of waited for

    def __init__(
        self, store: Store, snapshot: Snapshot, backend: Backend | None, lock: SessionLock | None
    ) -> None:
        self.store = store
        self.id: str = snapshot["id"]
        self.title: str = snapshot["title"]
        self.created_at: str = snapshot["created_at"]
        self.updated_at: str = snapshot["updated_at"]
        self.backend_name: str = snapshot["backend"]
        self.model: str = snapshot["model"]
        self.base_url: str = snapshot.get("base_url") or ""
        self.model_path: str = snapshot.get("model_path") or ""  # a --model-path GGUF of the local backend
        self.params = GenerationParams.from_json(snapshot["params"])
        self.system: str = snapshot["system"]
        self.messages: list[Message] = [Message.from_json(m) for m in snapshot["messages"]]
        self.context_start: int = snapshot["context_start"]
        self.context_window: int | None = snapshot.get("context_window")  # learned from an overflow
        self.window_setting: int | None = None
        self.compact_at: float | None = None
        self._backend_window: int | bool | None = False
        self.clears: list[int] = [c for c in snapshot.get("clears", []) if isinstance(c, int)]
        self.changes: list[dict[str, Any]] = [c for c in snapshot.get("changes", []) if isinstance(c, dict)]
        self.extra = {k: v for k, v in snapshot.items() if k not in KNOWN_KEYS}  # e.g. forked_from
        self.backend = backend
        self._lock = lock
        self.last_save: SaveInfo | None = None
        self.unsaved = False  # True while memory holds something the store does not
        self.timeouts = Timeouts()
        self.on_notice: Callable[[str], None] | None = None
        self._turn_notice: Callable[[str], None] | None = None  # the running turn's on_notice
        self._dirty_from = len(self.messages)  # messages from here on changed since the last save
        self._streaming: int | None = None  # index of the reply being streamed

    # -- opening and closing ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        store: Store,
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
        base_url = public_url(where.get("base_url", "") if base_url is None else base_url)
        model_path = where.get("model_path", "") if model_path is None else model_path
        sid = new_session_id()
        lock = store.lock(sid)
        now = utc_now()
        snap: Snapshot = {
            "format": FORMAT,
            "version": VERSION,
            "id": sid,
            "title": title,
            "created_at": now,
            "updated_at": now,
            "backend": backend.name,
            "model": model,
            "base_url": base_url,
            "params": (params or GenerationParams()).to_json(),
            "system": system,
            "messages": [],
            "context_start": 0,
        }
        if model_path:
            snap["model_path"] = model_path
        session = cls(store, snap, backend, lock)
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
        store: Store,
        session_id: str,
        backend_factory: Callable[[ConversationSession], Backend] | None = None,
    ) -> ConversationSession:
        """Open a saved session by exact id (see ``chatcli.snapshot.resolve``). Takes the lock, then loads.
        ``backend_factory`` builds the backend from the restored settings. Raises SessionLocked,
        SessionNotFound, SnapshotError, StoreError."""
        lock = store.lock(session_id)
        try:
            snap = store.load(session_id)
            session = cls(store, snap, None, lock)
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

    # -- the snapshot ----------------------------------------------------------------------------------
    def _snapshot(self, messages: Sequence[MessageJSON]) -> Snapshot:
        """The snapshot with ``messages`` (keys in the file's order: ``messages`` last)."""
        snap: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "title": self.title,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "backend": self.backend_name,
            "model": self.model,
            "base_url": self.base_url,
            "params": self.params.to_json(),
            "system": self.system,
            "context_start": self.context_start,
        }
        if self.model_path:
            snap["model_path"] = self.model_path
        if self.clears:
            snap["clears"] = list(self.clears)
        if self.changes:
            snap["changes"] = list(self.changes)
        if self.context_window:
            snap["context_window"] = self.context_window
        snap.update(self.extra)
        snap["messages"] = messages
        return cast("Snapshot", snap)

    def to_snapshot(self) -> Snapshot:
        """The session as its snapshot (see README, "The snapshot format"): a new dict, messages last."""
        return self._snapshot([m.to_json() for m in self.messages])

    def save(self, *, checkpoint: bool = False) -> SaveInfo:
        """Write the session to its store; returns once the write is durable (the folder: after the fsyncs; a
        database: after the commit; while a database does not answer, the local spool). Only the messages
        changed since the last save are handed over as changed. Ctrl-C, SIGTERM and SIGHUP are held off
        until the write is done. Raises SaveError (then ``unsaved`` stays True and the next save retries)."""
        self.updated_at = utc_now()
        self.unsaved = True
        snap = self._snapshot(MessageDicts(self.messages))
        changed = self._dirty_from if self._streaming is None else min(self._dirty_from, self._streaming)
        try:
            with signals_deferred():
                info = self.store.save(snap, changed_from=changed, checkpoint=checkpoint)
        except BaseException:
            self._dirty_from = changed  # the next save writes all of it again
            raise
        self.unsaved = False
        self._dirty_from = len(self.messages)
        self.last_save = info
        return info

    def _touch(self, index: int) -> None:
        """Message ``index`` changed: the next save writes it (and those after it)."""
        self._dirty_from = min(self._dirty_from, index)

    def notify(self, message: str) -> None:
        """A one-line notice for the user: to the running turn's ``on_notice``, else to ``on_notice``."""
        sink = self._turn_notice or self.on_notice
        if sink is not None:
            sink(message)

    # -- the turn --------------------------------------------------------------------------------------
    def send(
        self,
        text: str,
        on_delta: Callable[[str], None] | None = None,
        on_notice: Callable[[str], None] | None = None,
    ) -> Message:
        """Run one turn: save the user message, stream the reply, save it; return the assistant Message.

        ``on_delta(text)`` gets each piece of reply text as it arrives; ``on_notice(text)`` gets one-line
        notices (a save that failed but will be retried, a rate-limit wait). Ctrl-C while streaming ends the
        reply with status ``interrupted`` and returns normally. Raises SessionTimeoutError (partial reply
        saved as ``timeout``), BackendError (partial reply saved as ``error``; MessageTooLarge: no reply,
        the message kept and marked ``unsent``), SizeLimitError (a message over MAX_MESSAGE_BYTES: nothing
        kept or sent), or SaveError when the final save fails (the turn stays in memory and the next save
        writes it)."""
        if self.backend is None:
            raise BackendError("this session has no backend to talk to")
        check_size(text)
        self._touch(len(self.messages))
        self.messages.append(Message(role="user", content=text))
        if not self.title:  # from what the user typed; from the files' names when there is only files
            self.title = title_from(folded(text, files=False)) or title_from(folded(text))
        self._turn_notice = on_notice
        try:
            try:
                self.save()
            except SaveError as e:
                self.notify(f"{e} (the message is kept in memory and will be saved at the next attempt)")
            return self._reply(on_delta)
        finally:
            self._turn_notice = None

    def retry(
        self, on_delta: Callable[[str], None] | None = None, on_notice: Callable[[str], None] | None = None
    ) -> Message:
        """Ask again for the reply to the last user message. The reply it replaces stays in the file,
        marked ``dropped="retried"``. Raises NothingToDo when there is no turn to retry, and otherwise
        what ``send`` raises."""
        if self.backend is None:
            raise BackendError("this session has no backend to talk to")
        live = [i for i in range(self.context_start, len(self.messages)) if self.messages[i].dropped is None]
        if not live:
            raise NothingToDo("there is no turn to retry")
        last = self.messages[live[-1]]
        if last.role == "assistant":
            if len(live) < 2 or self.messages[live[-2]].role != "user":
                raise NothingToDo("there is no turn to retry")
            last.dropped = "retried"
            self._touch(live[-1])
        self._turn_notice = on_notice
        try:
            self.save()
            return self._reply(on_delta)
        finally:
            self._turn_notice = None

    def _reply(self, on_delta: Callable[[str], None] | None) -> Message:
        """The reply to the conversation as it is (see ``send``); notices go through ``notify``."""
        plan = self.plan_turn()  # MessageTooLarge: the message is marked unsent, there is no reply
        reply = Message(role="assistant", content="", status="streaming", model=self.model)
        self._touch(len(self.messages))
        self._streaming = len(self.messages)
        self.messages.append(reply)
        try:
            self._reply_into(reply, plan, on_delta)
        finally:
            self._streaming = None
        return reply

    def _reply_into(self, reply: Message, plan: Plan, on_delta: Callable[[str], None] | None) -> None:
        try:
            self._stream_into(reply, plan, on_delta)
        except MessageTooLarge:  # after an overflow, even the newest turn alone did not fit: no reply
            if self.messages and self.messages[-1] is reply:
                self.messages.pop()
            self._streaming = None
            self._save_after_failure()
            raise
        except KeyboardInterrupt:
            reply.status = "interrupted"
        except Terminated:  # SIGTERM or SIGHUP: keep what arrived, then let the CLI leave
            reply.status = "interrupted"
            self._save_after_failure(quiet=True)
            raise
        except BackendTimeout as e:
            reply.status, reply.error = "timeout", str(e)
            self._save_after_failure()
            raise SessionTimeoutError(str(e), partial=reply.content, cause=e) from e
        except BackendError as e:
            reply.status, reply.error = "error", str(e)
            self._save_after_failure()
            raise
        except BaseException as e:  # a bug or an unexpected failure: still keep what arrived
            reply.status, reply.error = "error", f"{type(e).__name__}: {e}"
            self._save_after_failure()
            raise
        self.save()

    def _save_after_failure(self, *, quiet: bool = False) -> None:
        try:
            self.save()
        except SaveError as e:
            if not quiet:
                self.notify(f"{e} (the turn is kept in memory and will be saved at the next attempt)")

    def _stream_into(self, reply: Message, plan: Plan, on_delta: Callable[[str], None] | None) -> None:
        assert self.backend is not None
        started = time.monotonic()
        deadline = started + self.timeouts.total
        parts: list[str] = []  # joined into reply.content at each save point and at the end
        try:
            first = self._receive(reply, plan, parts, started, deadline, on_delta)
        finally:  # also on Ctrl-C, a timeout or an error: what arrived is kept
            reply.content = "".join(parts)
        end = time.monotonic()
        reply.status = "ok"
        reply.timings = reply.timings or Timings()
        reply.timings.duration_s = round(end - started, 4)
        if reply.timings.tokens_per_second is None and first is not None and end > first:
            n = reply.usage.completion_tokens if reply.usage and reply.usage.completion_tokens else len(parts)
            reply.timings.tokens_per_second = round(n / (end - first), 2)

    def _receive(
        self,
        reply: Message,
        plan: Plan,
        parts: list[str],
        started: float,
        deadline: float,
        on_delta: Callable[[str], None] | None,
    ) -> float | None:
        """Read the backend's stream into ``parts`` and ``reply``'s metadata, retrying a 429 that came
        before any text, and once a request the server refused as longer than its context (with fewer
        turns). Returns the monotonic time of the first text (None: no text). Raises what the backend
        raises (BackendTimeout, BackendError, RateLimited, ContextOverflow) and MessageTooLarge."""
        assert self.backend is not None
        first: float | None = None
        last_checkpoint = started
        interval = self.checkpoint_seconds
        overflowed = False
        size = 0  # UTF-8 bytes of the reply so far: it stops at MAX_MESSAGE_BYTES
        for attempt in range(self.max_retries + 1):
            reply.context = ContextUsed(plan.start, plan.tokens, plan.exact, plan.window, plan.summary)
            stream = self.backend.stream_chat(
                plan.messages, self.request_params(plan), self.timeouts, deadline
            )
            try:
                for event in stream:
                    if event.text:
                        now = time.monotonic()
                        if first is None:
                            first = now
                            reply.timings = Timings(ttft_s=round(now - started, 4))
                        size += utf8_size(event.text)
                        if size > MAX_MESSAGE_BYTES:  # kept up to the limit, then stopped
                            parts.append(
                                cut_to_fit(event.text, MAX_MESSAGE_BYTES - size + utf8_size(event.text))
                            )
                            raise StreamError(REPLY_OVER_LIMIT)
                        parts.append(event.text)
                        if on_delta:
                            on_delta(event.text)
                        if now - last_checkpoint >= interval:
                            reply.content = "".join(parts)
                            saving = time.monotonic()
                            self._checkpoint()
                            last_checkpoint = time.monotonic()
                            interval = max(
                                self.checkpoint_seconds,
                                self.checkpoint_cost_ratio * (last_checkpoint - saving),
                            )
                    if event.finish_reason:
                        reply.finish_reason = event.finish_reason
                    if event.usage is not None:
                        reply.usage = event.usage
                    if event.server_timings is not None:
                        reply.timings = reply.timings or Timings()
                        reply.timings.server = event.server_timings
                        if event.tokens_per_second is not None:
                            reply.timings.tokens_per_second = round(event.tokens_per_second, 2)
                break
            except ContextOverflow as e:
                if parts or overflowed or attempt >= self.max_retries:
                    raise
                overflowed = True
                plan = self.replan_after_overflow(e, plan)
            except RateLimited as e:
                wait = e.retry_after if e.retry_after is not None else 2.0**attempt
                if (
                    parts
                    or attempt >= self.max_retries
                    or wait > self.max_retry_wait
                    or time.monotonic() + wait > deadline
                ):
                    raise
                self.notify(f"{e}; retrying in {wait:g} s (attempt {attempt + 2} of {self.max_retries + 1})")
                time.sleep(wait)
            finally:
                stream.close()  # closes the HTTP response at once, also on Ctrl-C
        return first

    def _checkpoint(self) -> None:
        """Save mid-reply (status ``streaming``); a failure here is retried at the next save point."""
        try:
            self.save(checkpoint=True)
        except SaveError:
            pass

    def turns(self) -> list[tuple[Message, Message | None]]:
        """The conversation as (user message, its reply or None) pairs, in order."""
        out: list[tuple[Message, Message | None]] = []
        for m in self.messages:
            if m.dropped is not None:
                continue
            if m.role == "user":
                out.append((m, None))
            elif m.role == "assistant" and out and out[-1][1] is None:
                out[-1] = (out[-1][0], m)
        return out


__all__ = [
    "DROPPED",
    "STATUSES",
    "ConversationSession",
    "GenerationParams",
    "Message",
    "Stats",
    "Timeouts",
    "Timings",
    "Usage",
]
