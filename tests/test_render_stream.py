"""ReplyView, the streaming reply on a terminal: what ends up on the screen is the whole reply, once, in
order, however the text is cut into pieces and however tall its blocks are."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from chatcli.render import ReplyView

_CONTROL = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\r|\n|[^\x1b\r\n]+")


def screen(output: str) -> list[str]:
    """The lines a terminal shows after ``output``: enough of VT100 for rich's Live (carriage return,
    newline, cursor up, erase line; colours ignored), on a screen tall enough never to scroll."""
    lines, row, col = [""], 0, 0
    for m in _CONTROL.finditer(output):
        tok = m.group(0)
        if tok == "\r":
            col = 0
        elif tok == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif tok.startswith("\x1b"):
            arg, cmd = m.group(1), m.group(2)
            if cmd == "K":
                lines[row] = "" if arg == "2" else lines[row][:col]
            elif cmd == "A":
                row = max(0, row - int(arg or 1))
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + tok + line[col + len(tok) :]
            col += len(tok)
    return [line.rstrip() for line in lines]


def stream(pieces: list[str], height: int = 20) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, height=height, color_system=None)
    with ReplyView(console) as view:
        for piece in pieces:
            view.feed(piece)
    return [line for line in screen(out.getvalue()) if line.strip()]


def test_a_code_block_taller_than_the_screen_is_shown_whole() -> None:
    pieces = ["Before.\n\n```python\n"] + [f"x{i} = {i}\n" for i in range(60)] + ["```\n", "After."]
    shown = stream(pieces, height=20)
    code = [line.strip() for line in shown if line.strip().startswith("x")]
    assert code == [f"x{i} = {i}" for i in range(60)]
    assert shown[0] == "Before." and shown[-1] == "After."


def test_an_unfinished_tall_block_is_shown_whole_at_the_end() -> None:
    pieces = ["```\n"] + [f"line {i}\n" for i in range(50)]  # the fence never closes
    code = [line.strip() for line in stream(pieces) if "line" in line]
    assert code == [f"line {i}" for i in range(50)]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_pieces_of_any_size_give_the_same_screen(size: int) -> None:
    text = (
        "First paragraph with **bold** words.\n\n- one\n- two\n\n```\ncode line\n\nafter a blank\n```\n"
        "Right after the fence.\n\nLast paragraph, no newline at the end"
    )
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    assert [line.strip() for line in stream(pieces)] == [
        "First paragraph with bold words.",
        "• one",
        "• two",
        "code line",
        "after a blank",
        "Right after the fence.",
        "Last paragraph, no newline at the end",
    ]


def test_a_very_long_line_is_kept_whole() -> None:
    words = [f"w{i} " for i in range(3000)]  # one paragraph of ~18,000 characters, no newline
    joined = " ".join(line.strip() for line in stream(words))
    assert joined.split() == [w.strip() for w in words]


def test_not_a_terminal_gets_the_raw_text() -> None:
    out = io.StringIO()
    with ReplyView(Console(file=out, force_terminal=False)) as view:
        for piece in ["Hello", " **world**\n", "\x1b[31mred\x1b[0m"]:
            view.feed(piece)
    assert out.getvalue() == "Hello **world**\nred\n"
