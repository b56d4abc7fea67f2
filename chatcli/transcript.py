"""A session as a file a person or a program reads: Markdown (a transcript), JSON (the snapshot itself) or
JSON Lines (one message per line). No I/O but ``export_to_folder``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from chatcli.errors import ConfigError, ExportError
from chatcli.messages import MessageJSON
from chatcli.snapshot import Snapshot, clear_before, dumps, is_turn, span_text, turn_span, turns_before

EXPORT_FORMATS = ("md", "json", "jsonl")


def export(snap: Snapshot, fmt: str) -> bytes:
    """A snapshot as ``md`` (a readable transcript), ``json`` (the snapshot itself) or ``jsonl`` (one
    message per line, OpenAI-style ``role``/``content`` plus chatcli's fields; the system prompt first)."""
    if fmt == "json":
        return dumps(snap) + b"\n"
    if fmt == "jsonl":
        lines = []
        if snap["system"]:
            lines.append(orjson.dumps({"role": "system", "content": snap["system"]}))
        lines += [orjson.dumps(m) for m in snap["messages"]]
        return b"\n".join(lines) + (b"\n" if lines else b"")
    if fmt == "md":
        return transcript_markdown(snap).encode()
    raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")


def transcript_markdown(snap: Snapshot) -> str:
    """The session as Markdown: a heading, its settings, then each message under a role heading with its
    status when it is not ``ok``."""
    out = [
        f"# {snap['title'] or '(untitled)'}",
        "",
        f"- session: `{snap['id']}`",
        f"- backend/model: {snap['backend']}/{snap['model']}",
        f"- created: {snap['created_at']}, updated: {snap['updated_at']}",
        "",
    ]
    if snap["system"]:
        out += ["## System", "", snap["system"], ""]
    changes: dict[int, list[dict[str, Any]]] = {}
    for c in snap.get("changes", []):
        if isinstance(c, dict) and isinstance(c.get("at"), int):
            changes.setdefault(c["at"], []).append(c)
    cuts = {c for c in snap.get("clears", []) if isinstance(c, int)} | {snap.get("context_start", 0)}
    messages = snap["messages"]
    before = turns_before(is_turn(x) for x in messages)
    for i in range(len(messages) + 1):
        if i in cuts and 0 < i < len(messages):
            out += ["---", "", "*(context cleared here)*", ""]
        for c in changes.get(i, []):
            what, new = str(c.get("what", "")), str(c.get("to", ""))
            shown = f"`{new}`" if what == "model" else repr(new) if new else "(none)"
            out += [f"*({what} changed to {shown})*", ""]
        if i == len(messages):
            break
        m = messages[i]
        dropped = m.get("dropped")
        if m["role"] == "user":
            head = f"## You (turn {before[i] + 1})" if is_turn(m) else "## You"
        elif m["role"] == "system" and isinstance(m.get("summary_of"), list):
            span = turn_span(before, *m["summary_of"][:2]) if len(m["summary_of"]) >= 2 else None
            head = f"## Summary of {span_text(span) if span else 'earlier turns'} (sent in their place)"
        else:
            head = "## Model" + _left_out(m, before, cuts)
        status = m.get("status", "ok")
        if status != "ok":
            status = "interrupted" if status == "streaming" else status
            head += f" — *{status}*"
        if dropped == "retried":
            head += " — *replaced by a retry*"
        elif dropped == "undone":
            head += " — *undone*"
        elif dropped == "unsent":
            head += " — *not sent: too large for the model's context*"
        out += [head, "", m["content"] or "*(no text)*", ""]
        if m.get("error"):
            out += [f"> error: {m['error']}", ""]
    return "\n".join(out)


def _left_out(m: MessageJSON, before: list[int], cuts: set[int]) -> str:
    """`` — *turns 1–4 not sent (context window)*`` when the request for reply ``m`` left earlier turns
    out (counted from the clear before that request)."""
    ctx = m.get("context")
    start = ctx.get("start") if isinstance(ctx, dict) else None
    span = turn_span(before, clear_before(cuts, start), start) if isinstance(start, int) else None
    return f" — *{span_text(span)} not sent (context window)*" if span else ""


def export_to_folder(snap: Snapshot, fmt: str, folder: Path) -> Path:
    """Write ``export(snap, fmt)`` to ``folder/chatcli-<id>.<fmt>`` (``-2``, ``-3``... when taken; never
    overwrites). Returns the path. Raises ConfigError (format), ChatcliError (cannot write)."""
    data = export(snap, fmt)
    for n in range(1, 1000):
        path = folder / (f"chatcli-{snap['id']}" + (f"-{n}" if n > 1 else "") + f".{fmt}")
        try:
            with open(path, "xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e.strerror}") from None
    raise ExportError(f"too many exports of {snap['id']} in {folder}")
