"""Text files put into a message (``chatcli ask -f PATH``, ``/file PATH`` in the REPL).

Each file becomes a block of the user message, saved with it like any text::

    File `notes/plan.md`:
    ````
    ...the file's text...
    ````

The fence is longer than any run of backticks in the file, so the file's own code fences stay inside it.
A file that is missing, a folder, not text (NUL bytes, or not UTF-8) or larger than MAX_FILE_BYTES is
refused with one line, and nothing is sent.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from chatcli.errors import AttachmentError
from chatcli.paths import expanded

MAX_FILE_BYTES = 512 * 1024  # a larger file is refused: it would not fit a small model's context anyway
_BACKTICKS = re.compile(r"`+")
_HEADER = re.compile(r"^File `(?P<path>[^`\n]+)`:\n(?P<fence>`{3,})\n", re.MULTILINE)


@dataclass(frozen=True)
class Attachment:
    """A text file read for a message: ``path`` as the user gave it (not expanded), its ``text`` (decoded
    UTF-8, at most MAX_FILE_BYTES bytes)."""

    path: str
    text: str

    @property
    def lines(self) -> int:
        """How many lines the text has (a last line without a newline counts; 0 for "")."""
        return self.text.count("\n") + (0 if self.text.endswith("\n") or not self.text else 1)

    def block(self) -> str:
        """The file as a fenced block headed by its path (the shape in the module docstring); the fence
        is one backtick longer than the longest run in the text, at least three."""
        longest = max((len(m) for m in _BACKTICKS.findall(self.text)), default=0)
        fence = "`" * max(3, longest + 1)
        body = self.text if self.text.endswith("\n") or not self.text else self.text + "\n"
        return f"File `{self.path}`:\n{fence}\n{body}{fence}"


def read(path: str | Path) -> Attachment:
    """The text file at ``path`` (``~`` expanded). Raises AttachmentError when it is missing, unreadable, a
    folder or not a regular file, over MAX_FILE_BYTES bytes, or not text (a NUL byte in its first 8 KiB,
    or not UTF-8)."""
    shown = str(path)
    p = expanded(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise AttachmentError(f"{shown}: no such file; nothing was sent") from None
    except OSError as e:
        raise AttachmentError(f"{shown}: {e.strerror}; nothing was sent") from None
    if stat.S_ISDIR(st.st_mode):
        raise AttachmentError(f"{shown} is a folder, not a file; nothing was sent")
    if not stat.S_ISREG(st.st_mode):
        raise AttachmentError(f"{shown} is not a regular file; nothing was sent")
    if st.st_size > MAX_FILE_BYTES:
        raise _too_large(shown, f"{st.st_size:,} bytes")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise AttachmentError(f"{shown}: {e.strerror}; nothing was sent") from None
    if len(raw) > MAX_FILE_BYTES:  # it grew after the size check
        raise _too_large(shown, f"over {MAX_FILE_BYTES:,} bytes")
    try:
        if b"\x00" in raw[:8192]:
            raise UnicodeError
        return Attachment(shown, raw.decode("utf-8"))
    except UnicodeError:
        raise AttachmentError(f"{shown} is not a text file (binary data); nothing was sent") from None


def _too_large(shown: str, size: str) -> AttachmentError:
    return AttachmentError(
        f"{shown} is too large to put in a message ({size}; the limit is {MAX_FILE_BYTES:,}); nothing was sent"
    )


def message(attachments: list[Attachment], text: str) -> str:
    """A user message: the files' blocks, then ``text`` (left out when blank), separated by blank
    lines."""
    parts = [a.block() for a in attachments]
    if text.strip():
        parts.append(text)
    return "\n\n".join(parts)


@dataclass(frozen=True)
class FileBlock:
    """Where a file's block is in a message's text (offsets into it): ``start`` its header line, ``body``
    and ``body_end`` the file's text, ``end`` just after its closing fence; ``path`` as the header names it."""

    path: str
    start: int
    body: int
    body_end: int
    end: int


def file_blocks(content: str) -> list[FileBlock]:
    """The complete file blocks of a message (the shape in the module docstring), in order; a block with no
    closing fence is not one (nor anything after it)."""
    out: list[FileBlock] = []
    pos = 0
    while (m := _HEADER.search(content, pos)) is not None:
        close = content.find(f"\n{m['fence']}", m.end() - 1)
        if close < 0:
            break
        pos = close + 1 + len(m["fence"])
        out.append(FileBlock(m["path"], m.start(), m.end(), close + 1, pos))
    return out


def folded(content: str, *, files: bool = True) -> str:
    """``content`` with each complete file block replaced by one line (``[file notes/plan.md: 12 lines]``),
    for views that show a conversation at a glance, or left out when not ``files`` (what the user typed:
    a title comes from that). A block with no closing fence is left as it is."""
    out: list[str] = []
    pos = 0
    for b in file_blocks(content):
        out.append(content[pos : b.start])
        n = content.count("\n", b.body, b.body_end)
        if files:
            out.append(f"[file {b.path}: {n:,} line{'' if n == 1 else 's'}]")
        pos = b.end
    out.append(content[pos:])
    return "".join(out)
