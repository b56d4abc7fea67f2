"""Small words shared by every part that talks to the user."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``n`` and the noun in the right number, e.g. ``1 turn``, ``2 turns``, ``1,204 hits``."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"
