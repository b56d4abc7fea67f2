"""A chatcli child process driven through pipes, for tests that need a real process (kills, locks, two
machines): ``Chat`` sends lines and collects stdout and stderr as they arrive; ``Turns`` cuts out what each
turn printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import Any


class Chat:
    """A chatcli child process: stdin is a pipe (one line = one message), stdout and stderr are collected
    by reader threads as they arrive, so what was printed before a SIGKILL is still seen."""

    def __init__(
        self, args: list[str], env: dict[str, str], *, preexec_fn: Any = None, cwd: Any = None
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=preexec_fn,
            cwd=cwd,
        )
        self.out = bytearray()
        self.err = bytearray()
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _pump(self, stream: Any, into: bytearray) -> None:
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._changed:
                if chunk:
                    into += chunk
                else:
                    into += b""  # keep the object; EOF is noted through the thread ending
                self._changed.notify_all()
            if not chunk:
                return

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(
        self, what: bytes | re.Pattern[bytes], timeout: float, *, stream: str = "out", start: int = 0
    ) -> re.Match[bytes] | int | None:
        """Wait until ``what`` (bytes or a compiled regex) appears in stdout (or stderr) after ``start``;
        the match (regex) or the end offset (bytes), or None on timeout or when the stream ended."""
        buf = self.out if stream == "out" else self.err
        reader = self._readers[0 if stream == "out" else 1]
        end = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                if isinstance(what, bytes):
                    i = buf.find(what, start)
                    if i >= 0:
                        return i + len(what)
                else:
                    m = what.search(bytes(buf), start)
                    if m:
                        return m
                left = end - time.monotonic()
                if left <= 0 or not reader.is_alive():
                    return None
                self._changed.wait(min(left, 0.05))

    def send(self, line: str | bytes) -> bool:
        """Write one line; False when the child no longer reads."""
        data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def close_stdin(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        try:
            self.proc.kill()  # SIGKILL
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 30) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait(10)
            raise AssertionError(
                f"chatcli {self.args} did not exit within {timeout} s; "
                f"stderr: {self.err.decode(errors='replace')[-2000:]}"
            ) from None
        for t in self._readers:
            t.join(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        return rc

    def text(self, stream: str = "out") -> str:
        return (self.out if stream == "out" else self.err).decode("utf-8", "replace")

    def error_lines(self) -> list[str]:
        return [ln for ln in self.text("err").splitlines() if ln.startswith("error:")]


class Turns:
    """Turns through a piped chatcli. After each line two commands follow: an unknown ``/syncN`` (its error
    goes to stderr) and ``clear undo`` (with nothing to undo it prints one line to stdout); the REPL answers
    them only once the turn is over, so each turn's stdout and stderr can be cut out exactly, although the
    two pipes are read apart."""

    OUT_SYNC = b"Nothing to bring back.\n"

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.n = 0
        self.out_at = self.err_at = 0

    def turn(self, text: str | bytes, timeout: float = 60) -> tuple[str, str]:
        """Send one line; return what the turn printed on stdout and on stderr."""
        self.n += 1
        self.chat.send(text)
        self.chat.send(f"/sync{self.n}")
        self.chat.send("clear undo")
        marker = f"unknown command /sync{self.n};".encode()
        err_end = self.chat.wait_for(marker, timeout, stream="err", start=self.err_at)
        assert isinstance(err_end, int), f"no answer to turn {self.n}: {self.chat.text('err')[-3000:]}"
        out_end = self.chat.wait_for(self.OUT_SYNC, timeout, start=self.out_at)
        assert isinstance(out_end, int), self.chat.text()[-3000:]
        line_start = self.chat.err.rfind(b"\n", 0, err_end) + 1
        line_end = self.chat.wait_for(b"\n", 5, stream="err", start=err_end)
        assert isinstance(line_end, int)
        out = bytes(self.chat.out[self.out_at : out_end - len(self.OUT_SYNC)])
        err = bytes(self.chat.err[self.err_at : line_start])
        self.out_at, self.err_at = out_end, line_end
        assert b"Traceback" not in err and b"internal error" not in err, err
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
