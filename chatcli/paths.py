"""Paths a user typed (flags, the config file, the environment)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from chatcli.errors import ConfigError, StoreError


def expanded(text: str | Path) -> Path:
    """``text`` as a Path with a leading ``~`` or ``~user`` expanded. Raises ConfigError for a ``~user``
    that names no user on this machine."""
    path = Path(text)
    try:
        return path.expanduser()
    except RuntimeError:
        head = str(text).split("/", 1)[0]
        shown = head if head.isprintable() and len(head) <= 40 else head[:1] + "…"
        raise ConfigError(
            f"{str(text)[:60]!r}: there is no user {shown[1:]!r} on this machine for {shown}"
        ) from None


def usable_folder(path: Path, what: str) -> None:
    """Raise StoreError now for a folder ``path`` (``what`` names it) in which no file can be made: a name
    too long, a file on the way, a loop of links, or a file where the folder should be. A folder that does
    not exist yet is fine (it is made at the first write)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot use {what}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cannot use {what}: it is a file, not a folder")
