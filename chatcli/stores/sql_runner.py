"""The connection of a SQL store and the session locks held on it: ``Runner``.

One connection per store, opened when first needed (its schema brought up to date then), used by one
caller at a time. ``run(what, fn)`` runs ``fn(cursor)``, a whole unit of work, and maps the driver's errors
to chatcli's through the engine's error table (``sql_errors``): a lost connection is opened again once and
``fn`` run again; a transaction the database rolled back to break a deadlock is run again, a bounded
number of times with growing random pauses; everything else leaves as StoreUnavailable or StoreError,
naming the store, its password blanked out.

A session lock on a server lives on the connection: after a reconnect the store takes its locks back (one
another chatcli took meanwhile is marked lost: the next save of that session is refused, and the turn goes
to the spool), and while locks are held a LockKeeper checks the connection every few seconds so that a
lost one is noticed at once rather than at the next save.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from chatcli.errors import ChatcliError, SessionLocked, StoreError, StoreUnavailable
from chatcli.snapshot import validate_id
from chatcli.stores.sql_engine import Engine
from chatcli.stores.sql_errors import Fault, error_for
from chatcli.stores.sql_keepalive import LockKeeper
from chatcli.stores.url import MIN_REDACTED, redact

#: times a transaction the database rolled back to break a deadlock is run again (then: StoreUnavailable, and
#: the turn waits in the spool); the pauses before each grow from about DEADLOCK_PAUSE * 2 seconds, doubling
DEADLOCK_RETRIES = 6
DEADLOCK_PAUSE = 0.01
#: seconds a session lock held by another connection is tried again before the session is said to be open
#: elsewhere (a killed chatcli's lock is freed once its server notices the dropped connection)
LOCK_GRACE = 1.5


def x(cur: Any, sql: str, args: Any = ()) -> Any:
    """Execute ``sql`` (the engine's placeholders) with ``args`` and return the cursor (PyMySQL's
    ``execute`` returns a row count)."""
    cur.execute(sql, args)
    return cur


class Runner:
    """``engine``'s connection for a store shown as ``display`` (``secrets``: the passwords to blank out of
    messages). ``timeout`` bounds, in seconds, a wait for the connection held by another thread (the
    engine bounds statements and connection attempts itself); ``ask_password(prompt)`` is asked once when
    the server wants a password and none was found (None: never ask); ``prepare(conn)`` readies a new
    connection (the schema's migrations)."""

    def __init__(
        self,
        engine: Engine,
        display: str,
        secrets: frozenset[str],
        timeout: float,
        prepare: Callable[[Any], None],
        ask_password: Callable[[str], str] | None = None,
    ) -> None:
        self.engine = engine
        self.display = display
        self.secrets = secrets | engine.secrets
        self.timeout = timeout
        self.prepare = prepare
        self.ask_password = ask_password
        self._password: str | None = None  # one asked for
        self._conn: Any = None
        self._mutex = threading.RLock()  # one user of the connection at a time (the keeper is another)
        self.held: set[str] = set()  # session locks this store holds
        self.lost: set[str] = set()  # locks lost with a connection and taken by someone else since
        self._keeper = LockKeeper(self) if engine.locks.on_connection else None
        self.deadlocks_retried = 0  # transactions run again after the database broke a deadlock with them

    # -- errors ----------------------------------------------------------------------------------------------
    def said(self, e: BaseException | str, fault: Fault = Fault.REFUSED) -> str:
        """A driver error's own words (or ``e``'s text) on one line, with the store's passwords blanked out."""
        return redact(e if isinstance(e, str) else self.engine.said(e, fault), self.secrets)

    def error(self, e: BaseException, fault: Fault, *, connecting: bool = False) -> StoreError:
        """The error chatcli reports for driver error ``e``, a ``fault``."""
        return error_for(fault, self.engine.place, self.said(e, fault), connecting=connecting)

    def keep_secret(self, password: str) -> None:
        """A password found outside the URL (a prompt): blanked out of messages too."""
        if len(password) >= MIN_REDACTED:
            self.secrets = self.secrets | {password}

    # -- the connection --------------------------------------------------------------------------------------
    def connection(self) -> Any:
        """The open connection, or a new one: prepared (its schema brought up to date) and, after a lost
        connection, the session locks this store held taken back (those another chatcli took meanwhile
        are lost). Raises StoreUnavailable or StoreError."""
        if self._conn is not None:
            return self._conn
        conn = self._open()
        try:
            self.prepare(conn)
            if self.held and self.engine.locks.on_connection:
                cur = conn.cursor()
                for sid in sorted(self.held):
                    if not self.engine.locks.take(cur, sid):
                        self.lost.add(sid)
        except BaseException as e:
            _close_quietly(conn)
            if isinstance(e, ChatcliError) or not isinstance(e, self.engine.errors.driver):
                raise
            raise self.error(e, self.engine.errors.fault(e, conn)) from None
        self._conn = conn
        return conn

    def _open(self) -> Any:
        """A new connection; the password asked for once when the server wants one and none was found."""
        try:
            return self.engine.connect(self._password)
        except ChatcliError:
            raise
        except Exception as e:
            if not isinstance(e, self.engine.errors.driver):
                raise
            fault = self.engine.connect_fault(e)
            if fault is Fault.NO_PASSWORD and self._password is None and self.ask_password is not None:
                self._password = self.ask_password(f"Password for {self.display}: ")
                self.keep_secret(self._password)
                return self._open()
            raise self.error(e, fault, connecting=True) from None

    def drop(self) -> None:
        """Close the connection (the next use opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    def writing(self) -> None:
        """A write is coming: open the connection again if the engine says the open one cannot take it."""
        with self._mutex:
            if self.engine.writing():
                self.drop()

    def run(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(cursor)`` on the connection, a whole unit of work: run again once on a new connection when
        the connection turns out to be gone, and (after a short, growing, random pause) when the database
        rolled it back to break a deadlock, at most DEADLOCK_RETRIES times. Driver errors leave as
        StoreUnavailable / StoreError naming the store and ``what`` was done ("saved a session")."""
        if not self._mutex.acquire(timeout=self.timeout):  # the keeper waits on a database that hangs
            raise StoreUnavailable(f"{self.display} did not answer within {self.timeout:g} s")
        try:
            reconnected, deadlocks = False, 0
            while True:
                conn = self.connection()  # first: it says so when the driver is missing
                try:
                    return fn(conn.cursor())
                except ChatcliError:
                    raise
                except Exception as e:
                    if not isinstance(e, self.engine.errors.driver):
                        raise
                    fault = self.engine.errors.fault(e, conn)
                    if fault is Fault.DEADLOCK and deadlocks < DEADLOCK_RETRIES:
                        deadlocks += 1
                        self.deadlocks_retried += 1
                        time.sleep(random.uniform(0.5, 1.0) * DEADLOCK_PAUSE * 2**deadlocks)
                        continue
                    if fault is not Fault.LOST:
                        raise self.error(e, fault) from None
                    self.drop()
                    if reconnected:
                        raise StoreUnavailable(
                            f"the database {self.display} stopped answering while it {what} ({self.said(e)})"
                        ) from None
                    reconnected = True
        finally:
            self._mutex.release()

    # -- session locks ---------------------------------------------------------------------------------------
    def lock(self, session_id: str) -> _Lock:
        """Take the session's writer lock (trying again for LOCK_GRACE seconds: a chatcli just killed holds
        it until its server notices). Raises SessionLocked."""
        validate_id(session_id)
        if session_id in self.held:
            raise SessionLocked(f"session {session_id} is already open in this chatcli")
        deadline = time.monotonic() + LOCK_GRACE
        while not self.run("took a session lock", lambda cur: self.engine.locks.take(cur, session_id)):
            if time.monotonic() >= deadline:
                raise SessionLocked(
                    f"session {session_id} is open in another chatcli (on this machine or another "
                    f"one sharing {self.display}); close that one first (`chatcli show {session_id}` "
                    f"reads it meanwhile)"
                )
            time.sleep(0.1)
        self.held.add(session_id)
        self.lost.discard(session_id)
        if self._keeper is not None:
            self._keeper.ensure_running()
        return _Lock(self, session_id)

    def release(self, session_id: str) -> None:
        """Let a held session lock go (nothing when it is not held). Never raises."""
        with self._mutex:
            if session_id not in self.held:
                return
            self.held.discard(session_id)
            locks = self.engine.locks
            if not locks.on_connection:
                locks.release(None, session_id)
            elif self._conn is not None and session_id not in self.lost:
                try:
                    locks.release(self._conn.cursor(), session_id)
                except Exception:
                    self.drop()
            self.lost.discard(session_id)

    def keep_locks(self) -> bool:
        """For the LockKeeper: a ``SELECT 1`` that opens a lost connection again, which takes the held locks
        back (see ``connection``). False when no lock is held. Never raises."""
        if not self._mutex.acquire(timeout=self.timeout):
            return bool(self.held)  # the connection is busy (or hangs): check again later
        try:  # (the check of what is held and the SELECT under one hold of the mutex: a store closed
            if not self.held:  # meanwhile, its locks released, is not opened again)
                return False
            try:
                self.run("checked its connection", lambda cur: x(cur, "SELECT 1"))
            except Exception:
                pass  # not answering: the next save says so and keeps the turn in the spool
            return bool(self.held)
        finally:
            self._mutex.release()

    def close(self) -> None:
        """Release the locks still held and close the connection. Safe to call twice."""
        if self._keeper is not None:
            self._keeper.stop()
        with self._mutex:
            self._close()

    def _close(self) -> None:
        locks = self.engine.locks
        if not locks.on_connection:
            for sid in list(self.held):
                locks.release(None, sid)
        elif self._conn is not None and self.held:
            try:
                cur = self._conn.cursor()
                for sid in list(self.held):
                    locks.release(cur, sid)
            except Exception:
                pass
        self.held.clear()
        self.drop()


class _Lock:
    """A session lock held by a Runner (on its connection, or a lock file)."""

    def __init__(self, runner: Runner, session_id: str) -> None:
        self._runner: Runner | None = runner
        self.session_id = session_id

    def release(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.release(self.session_id)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


__all__ = ["DEADLOCK_PAUSE", "DEADLOCK_RETRIES", "LOCK_GRACE", "Runner", "x"]
