"""Signals held off while a snapshot is written, so Ctrl-C, SIGTERM or SIGHUP never cut a save in half."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold off SIGINT (Ctrl-C), SIGTERM and SIGHUP while a snapshot is written, so they land after the
    write completes. Only the main thread can do this; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
