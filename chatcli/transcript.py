"""A session as a file a person or a program reads: Markdown (a transcript), JSON (the snapshot itself) or
JSON Lines (one message per line). No I/O but ``export_to_folder``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from chatcli.errors import ConfigError, ExportError
from chatcli.model import Conversation, Message, ToolCallPart, ToolResultPart
from chatcli.reasoning import reasoning_line
from chatcli.snapshot import clear_before, dumps, span_text, turn_span, turns_before

EXPORT_FORMATS = ("md", "json", "jsonl")


def export(conv: Conversation, fmt: str) -> bytes:
    """A session as ``md`` (a readable transcript), ``json`` (the snapshot itself) or ``jsonl`` (one message
    per line, OpenAI-style ``role``/``content`` plus chatcli's fields; the system prompt first)."""
    if fmt == "json":
        return dumps(conv.to_json()) + b"\n"
    if fmt == "jsonl":
        lines = []
        if conv.header.system:
            lines.append(orjson.dumps({"role": "system", "content": conv.header.system}))
        lines += [orjson.dumps(m.to_json()) for m in conv.messages]
        return b"\n".join(lines) + (b"\n" if lines else b"")
    if fmt == "md":
        return transcript_markdown(conv).encode()
    raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")


def transcript_markdown(conv: Conversation, *, reasoning: bool = False) -> str:
    """The session as Markdown: a heading, its settings, then each message under a role heading with its
    status when it is not ``ok``; a reply's reasoning folded to one line (``fold_line``), or whole as a
    quote with ``reasoning``; tool calls and their results as they were."""
    h = conv.header
    out = [
        f"# {h.title or '(untitled)'}",
        "",
        f"- session: `{h.id}`",
        f"- backend/model: {h.backend}/{h.model}",
        f"- created: {h.created_at}, updated: {h.updated_at}",
        "",
    ]
    if h.system:
        out += ["## System", "", h.system, ""]
    changes: dict[int, list[dict[str, Any]]] = {}
    for c in h.change_list():
        if isinstance(c.get("at"), int):
            changes.setdefault(c["at"], []).append(c)
    cuts = {*h.clear_list(), h.context_start}
    messages = conv.messages
    before = turns_before(x.starts_turn for x in messages)
    for i in range(len(messages) + 1):
        if i in cuts and 0 < i < len(messages):
            out += ["---", "", "*(context cleared here)*", ""]
        for c in changes.get(i, []):
            what, new = str(c.get("what", "")), str(c.get("to", ""))
            shown = f"`{new}`" if what == "model" else repr(new) if new else "(none)"
            out += [f"*({what} changed to {shown})*", ""]
        if i == len(messages):
            break
        out += _message_markdown(messages[i], i, before, cuts, reasoning)
    return "\n".join(out)


def _message_markdown(m: Message, i: int, before: list[int], cuts: set[int], reasoning: bool) -> list[str]:
    if m.role == "tool":
        head = "## Tool results"
    elif m.role == "user":
        head = f"## You (turn {before[i] + 1})" if m.starts_turn else "## You"
    elif m.role == "system" and m.summary_of is not None:
        span = turn_span(before, *m.summary_of)
        head = f"## Summary of {span_text(span) if span else 'earlier turns'} (sent in their place)"
    else:
        head = "## Model" + _left_out(m, before, cuts)
    if m.status != "ok":
        head += f" — *{m.status}*"
    head += _DROPPED_NOTE.get(m.dropped or "", "")
    out = [head, ""]
    if m.reasoning:
        out += [f"*({reasoning_line(m)})*", ""]
        if reasoning:
            out += ["> " + line for line in m.reasoning.strip("\n").split("\n")] + [""]
    out += [_text_of(m), ""]
    if m.error:
        out += [f"> error: {m.error}", ""]
    return out


def _text_of(m: Message) -> str:
    """A message's text, with its tool calls and tool results after it."""
    lines = [m.content] if m.content else []
    for p in m.parts:
        if isinstance(p, ToolCallPart):
            lines.append(f"*(calls `{p.name}` with `{p.arguments}`, call `{p.id}`)*")
        elif isinstance(p, ToolResultPart):
            error = " (error)" if p.is_error else ""
            lines.append(f"*(result of call `{p.call_id}`{error}:)*\n\n{p.text}")
    return "\n\n".join(lines) or "*(no text)*"


_DROPPED_NOTE = {
    "retried": " — *replaced by a retry*",
    "undone": " — *undone*",
    "unsent": " — *not sent: too large for the model's context*",
}


def _left_out(m: Message, before: list[int], cuts: set[int]) -> str:
    """`` — *turns 1–4 not sent (context window)*`` when the request for reply ``m`` left earlier turns
    out (counted from the clear before that request)."""
    start = m.context.start if m.context is not None else None
    span = turn_span(before, clear_before(cuts, start), start) if start is not None else None
    return f" — *{span_text(span)} not sent (context window)*" if span else ""


def export_to_folder(conv: Conversation, fmt: str, folder: Path) -> Path:
    """Write ``export(conv, fmt)`` to ``folder/chatcli-<id>.<fmt>`` (``-2``, ``-3``... when taken; never
    overwrites). Returns the path. Raises ConfigError (format), ChatcliError (cannot write)."""
    data = export(conv, fmt)
    for n in range(1, 1000):
        path = folder / (f"chatcli-{conv.id}" + (f"-{n}" if n > 1 else "") + f".{fmt}")
        try:
            with open(path, "xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e.strerror}") from None
    raise ExportError(f"too many exports of {conv.id} in {folder}")
