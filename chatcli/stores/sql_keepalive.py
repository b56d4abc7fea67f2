"""Keeping a database session lock while chatcli waits: ``LockKeeper``.

A session's writer lock on PostgreSQL and MySQL lives on the store's connection: when the connection is
lost (the server restarted, a proxy dropped it), the server lets the lock go. Found only at the next save,
that would leave a REPL idle at its prompt without its lock for as long as the user thinks, and another
chatcli could open, change or purge the session meanwhile. So while a store holds locks a daemon thread asks
it every ``interval`` seconds to check its connection (``Runner.keep_locks``): a lost one is opened again
at once and the locks taken back; a lock someone else took meanwhile is marked lost, and the next save of
that session goes to the spool instead of over the other chatcli's turns. A check that took long (a host
that does not answer) is followed by a pause ten times as long, so the keeper holds the connection a tenth
of the time at most.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Keeps(Protocol):
    """What the keeper needs of its store."""

    def keep_locks(self) -> bool:
        """Check the connection and take the held locks back if it was lost; False when no lock is held
        any more (the keeper then stops). Never raises."""
        ...


class LockKeeper:
    """One daemon thread per store, started by ``ensure_running`` and ending by itself when the store holds
    no lock or ``stop`` is called."""

    interval = 3.0  # seconds between two checks: a SELECT 1 each, on a connection chatcli holds anyway

    def __init__(self, store: Keeps) -> None:
        self._store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        """Start the thread if it is not running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="chatcli-lock-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it may finish the check it is in)."""
        self._stop.set()

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            started = time.monotonic()
            if not self._store.keep_locks():
                return
            spent = time.monotonic() - started  # a host that does not answer: check less often, so the
            wait = self.interval if spent < 0.5 else min(60.0, 10 * spent)  # REPL's saves rarely wait on it
