"""A deadline for database calls that a driver cannot bound itself: libpq waits for an answer as long as the
network accepts what it sends (a stalled link, a proxy or NAT that stopped forwarding: TCP acknowledges,
nothing comes back, and neither ``statement_timeout`` on the server nor ``tcp_user_timeout`` fires). One
thread per store sleeps until the armed call's deadline and then runs ``cut`` (the store shuts its socket
down), so the call fails at once as a lost connection. No I/O of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Watchdog:
    """``armed(seconds)``: while the block runs, ``cut()`` is called once if it is still running ``seconds``
    later (from the watchdog's thread; ``rearm`` moves that moment on). The thread starts on first use and
    is a daemon."""

    def __init__(self, cut: Callable[[], None]) -> None:
        self._cut = cut
        self._deadline: float | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def armed(self, seconds: float) -> Iterator[None]:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="chatcli-db-watchdog", daemon=True)
                self._thread.start()
            self._deadline = time.monotonic() + seconds
            self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._deadline = None

    def rearm(self, seconds: float) -> None:
        """Move the armed block's deadline to ``seconds`` from now (a long call that is making progress, such
        as a COPY sending row after row); nothing when no block is armed."""
        with self._changed:
            if self._deadline is not None:
                self._deadline = time.monotonic() + seconds

    def _loop(self) -> None:
        with self._changed:
            while True:
                if self._deadline is None:
                    self._changed.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self._deadline = None
                try:
                    self._cut()
                except Exception:  # (nothing to cut: the connection is already gone)
                    pass
