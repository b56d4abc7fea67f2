"""Reasoning inside reply text: ``<think>…</think>`` as many local models write it (DeepSeek-R1 distills,
Qwen3, QwQ through servers that do not parse it out).

``ThinkSplitter`` reads the text pieces of a stream and tells reasoning from answer. A ``<think>`` tag is
recognised only where the reply begins (after leading whitespace): a literal ``<think>`` later in an
answer, in prose or code, stays text. Tags may be split across pieces (``<thi`` + ``nk>``); text that
could still be the start of a tag is held back until the next piece decides it, and ``flush`` gives back
what is held when the stream ends. An unclosed ``<think>`` (a reply interrupted while it thought) leaves
everything after it as reasoning. No I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.model import Message

OPEN = "<think>"
CLOSE = "</think>"


class ThinkSplitter:
    """Splits streamed reply text into (reasoning, text) pieces; see the module docstring."""

    def __init__(self) -> None:
        self._state = "start"  # start (nothing but whitespace yet), thinking, closed (just after), text
        self._held = ""  # text that may be the beginning of a tag

    def feed(self, piece: str) -> tuple[str, str]:
        """The (reasoning, text) that ``piece`` completes; either may be "" (some text can be held back
        until the next piece)."""
        data = self._held + piece
        self._held = ""
        if self._state == "text":
            return "", data
        if self._state == "closed":  # the newlines after </think> part it from the answer: not text
            data = data.lstrip("\n")
            if data:
                self._state = "text"
            return "", data
        if self._state == "start":
            stripped = data.lstrip()
            if not stripped:
                self._held = data
                return "", ""
            if stripped.startswith(OPEN):
                self._state = "thinking"
                data = stripped[len(OPEN) :]
            elif OPEN.startswith(stripped):  # "<thi": wait for the rest
                self._held = data
                return "", ""
            else:
                self._state = "text"
                return "", data
        return self._thinking(data)

    def _thinking(self, data: str) -> tuple[str, str]:
        end = data.find(CLOSE)
        if end >= 0:
            self._state = "closed"
            after = data[end + len(CLOSE) :].lstrip("\n")
            if after:
                self._state = "text"
            return data[:end], after
        keep = _partial_tag(data, CLOSE)
        if keep:
            self._held = data[-keep:]
            data = data[:-keep]
        return data, ""

    def flush(self) -> tuple[str, str]:
        """What is held back, at the end of the stream: reasoning when a ``<think>`` is still open (or the
        start of its closing tag), else text."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return held, ""
        return "", held

    @property
    def thinking(self) -> bool:
        """Whether the stream is inside an open ``<think>``."""
        return self._state == "thinking"


def _partial_tag(data: str, tag: str) -> int:
    """How many characters at the end of ``data`` are the beginning of ``tag`` (0 when none)."""
    for n in range(min(len(tag) - 1, len(data)), 0, -1):
        if data.endswith(tag[:n]):
            return n
    return 0


def fold_line(seconds: float | None, tokens: int | None, estimated: bool = False) -> str:
    """The one line a reasoning folds to: ``thought for 2.1 s · 143 tokens`` (``~143`` when ``estimated``;
    each part left out when unknown)."""
    parts = ["thought" + (f" for {seconds:.1f} s" if seconds is not None else "")]
    if tokens:
        parts.append(("~" if estimated else "") + count(tokens, "token"))
    return " · ".join(parts)


def reasoning_line(m: Message) -> str:
    """``fold_line`` of a saved message: its ``timings.reasoning_s`` (seconds) and
    ``usage.reasoning_tokens``, else chatcli's estimate of the reasoning's tokens (UTF-8 bytes /
    BYTES_PER_TOKEN)."""
    from chatcli.messages import BYTES_PER_TOKEN, utf8_size

    seconds = m.timings.reasoning_s if m.timings is not None else None
    tokens = m.usage.reasoning_tokens if m.usage is not None else None
    if tokens:
        return fold_line(seconds, tokens)
    return fold_line(seconds, -(-utf8_size(m.reasoning) // BYTES_PER_TOKEN), estimated=True)
