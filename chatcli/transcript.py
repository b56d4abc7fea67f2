"""A session as a file a person or a program reads: Markdown (a transcript), JSON (the conversation in the
OpenAI chat format), JSON Lines (every message, one per line, in that format with chatcli's fields beside)
or the snapshot itself. No I/O but ``export_to_folder``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from chatcli.errors import ConfigError, ExportError
from chatcli.model import Conversation, Message, ToolCallPart, ToolResultPart
from chatcli.reasoning import reasoning_line
from chatcli.snapshot import clear_before, dumps, span_text, turn_span, turns_before
from chatcli.wire import always, paired, to_openai

EXPORT_FORMATS = ("md", "json", "jsonl", "snapshot")
#: a message's keys that the OpenAI form of a JSON Lines export stands for
_OPENAI_KEYS = frozenset({"role", "content", "parts"})


def export(conv: Conversation, fmt: str) -> bytes:
    """A session as ``md`` (a readable transcript, tool results folded in ``<details>``), ``json`` (an
    object ``{"title", "model", "messages"}`` whose messages are the conversation as it stands in the
    OpenAI chat format: ``tool_calls``, role ``tool`` with ``tool_call_id``, ``reasoning_content``; see
    ``openai_messages``), ``jsonl`` (every message, retried and undone ones included, one OpenAI-format
    message per line with chatcli's fields beside: ``created_at``, ``status``, ``dropped``, ``usage``...;
    the system prompt first) or ``snapshot`` (chatcli's own form, lossless). Raises ConfigError for
    another format."""
    if fmt == "json":
        doc = {"title": conv.header.title, "model": conv.header.model, "messages": openai_messages(conv)}
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if fmt == "jsonl":
        lines = []
        if conv.header.system:
            lines.append(orjson.dumps({"role": "system", "content": conv.header.system}))
        for m in conv.messages:
            beside = {k: v for k, v in m.to_json().items() if k not in _OPENAI_KEYS}
            lines += [orjson.dumps({**d, **beside}) for d in to_openai([m], always)]
        return b"\n".join(lines) + (b"\n" if lines else b"")
    if fmt == "snapshot":
        return dumps(conv.to_json()) + b"\n"
    if fmt == "md":
        return transcript_markdown(conv).encode()
    raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")


def openai_messages(conv: Conversation) -> list[dict[str, Any]]:
    """The conversation as it stands, in the OpenAI chat format (``chatcli.wire``): the system prompt, then
    every message that has something to send and was neither retried, undone nor summarised away
    (summaries are left out: the turns they stand for are there), each with its reasoning. Every call is
    answered (an interrupted one as ``wire.UNANSWERED``) and results are whole, so a server or another
    tool takes the list as it is."""
    kept = [m for m in conv.messages if m.dropped is None and m.summary_of is None and m.sendable]
    out = to_openai(paired(kept, cut=False), always)
    if conv.header.system:
        out.insert(0, {"role": "system", "content": conv.header.system})
    return out


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
    names = _call_names(messages)
    for i in range(len(messages) + 1):
        if i in cuts and 0 < i < len(messages):
            out += ["---", "", "*(context cleared here)*", ""]
        for c in changes.get(i, []):
            what, new = str(c.get("what", "")), str(c.get("to", ""))
            shown = f"`{new}`" if what == "model" else repr(new) if new else "(none)"
            out += [f"*({what} changed to {shown})*", ""]
        if i == len(messages):
            break
        out += _message_markdown(messages[i], i, before, cuts, reasoning, names)
    return "\n".join(out)


def _call_names(messages: list[Message]) -> dict[str, str]:
    return {p.id: p.name for m in messages for p in m.parts if isinstance(p, ToolCallPart)}


def _message_markdown(
    m: Message, i: int, before: list[int], cuts: set[int], reasoning: bool, names: dict[str, str]
) -> list[str]:
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
    out += [_text_of(m, names), ""]
    if m.error:
        out += [f"> error: {m.error}", ""]
    return out


def _text_of(m: Message, names: dict[str, str]) -> str:
    """A message's text, then its tool calls (name and arguments) and its tool results, each folded in a
    ``<details>`` block under the name of the tool that gave it."""
    lines = [m.content] if m.content else []
    for p in m.parts:
        if isinstance(p, ToolCallPart):
            lines.append(f"*(calls `{p.name}`, call `{p.id}`)*\n\n{_fenced(p.arguments, 'json')}")
        elif isinstance(p, ToolResultPart):
            error = " — error" if p.is_error else ""
            name = names.get(p.call_id, "a tool")
            summary = f"result of <code>{_html(name)}</code>, call <code>{_html(p.call_id)}</code>{error}"
            lines.append(f"<details><summary>{summary}</summary>\n\n{_fenced(p.text, 'text')}\n\n</details>")
    return "\n\n".join(lines) or "*(no text)*"


def _fenced(text: str, lang: str) -> str:
    """``text`` in a code fence longer than any run of backticks in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
    """Write ``export(conv, fmt)`` to ``folder/chatcli-<id>.<fmt>`` (a snapshot: ``.snapshot.json``;
    ``-2``, ``-3``... when taken; never overwrites). Returns the path. Raises ConfigError (format),
    ChatcliError (cannot write)."""
    data = export(conv, fmt)
    suffix = "snapshot.json" if fmt == "snapshot" else fmt
    for n in range(1, 1000):
        path = folder / (f"chatcli-{conv.id}" + (f"-{n}" if n > 1 else "") + f".{suffix}")
        try:
            with open(path, "xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e.strerror}") from None
    raise ExportError(f"too many exports of {conv.id} in {folder}")
