"""The conversation in the two shapes model APIs use, both ways: the OpenAI chat format and ordered content
blocks (as Anthropic's Messages API has them). No I/O here; backends adapt the OpenAI form to their wire.

OpenAI chat format (``/v1/chat/completions`` ``messages``), one dict per message::

    {"role": "user" | "system", "content": "..."}
    {"role": "assistant", "content": "..." | None, "reasoning_content": "...",
     "tool_calls": [{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}]}
    {"role": "tool", "tool_call_id": "...", "content": "..."}      (one per tool result)

Content blocks, one dict per message, its parts in order::

    {"role": "user" | "assistant" | "system", "content": [
        {"type": "text", "text"}, {"type": "thinking", "thinking"},
        {"type": "tool_use", "id", "name", "input": <the arguments, decoded>},
        {"type": "tool_result", "tool_use_id", "content": "..." | [blocks], "is_error": bool}]}

A chatcli message of role ``tool`` (its parts are tool results) is one OpenAI ``tool`` message per result,
and a ``user`` message of ``tool_result`` blocks. Lossless both ways (``from_openai(to_openai(m)) == m``):
in the OpenAI form, for messages whose parts come in the order the form has (reasoning, text, tool calls)
and tool results without ``raw`` or ``is_error`` (it has no field for them); in the block form, for any
parts, a tool call's arguments compared as JSON and a result's ``raw`` list holding its text in its
``text`` blocks (as ``ToolResultPart``'s text is made from it). Neither form has a result's
``duration_s`` (chatcli's own figure). Attachments are not mapped yet.

Reasoning is sent back only when the server's rule says so (``reasoning_rule``): by default never.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from chatcli.model import Message, Part, ReasoningPart, TextPart, ToolCallPart, ToolResultPart

#: decides, per assistant message, whether a request carries its reasoning
ReasoningRule = Callable[[Message], bool]


def never(m: Message) -> bool:
    """The default rule: reasoning is the model's own; it is kept but not sent back."""
    return False


def always(m: Message) -> bool:
    """Every assistant message with its reasoning (an export keeps it)."""
    return True


def with_tool_calls(m: Message) -> bool:
    """DeepSeek's thinking mode: an assistant message that made tool calls is sent with its reasoning (the
    API answers 400 without it); others without."""
    return any(isinstance(p, ToolCallPart) for p in m.parts)


def reasoning_rule(backend: str, model: str) -> ReasoningRule:
    """Which earlier reasoning a request to ``model`` on ``backend`` (``openai``, ``ollama``, ``local``)
    carries (README, "Reasoning"):

    - ``deepseek-reasoner`` (DeepSeek's older reasoner): never; it refuses (400) a request carrying
      ``reasoning_content``;
    - any other ``deepseek*`` model on an OpenAI-compatible server: the assistant messages that made tool
      calls (``with_tool_calls``); DeepSeek's thinking mode refuses (400) a request where they lack it;
    - everything else (OpenAI, Ollama, llama.cpp, vLLM, the embedded model): never."""
    name = model.lower().rsplit("/", 1)[-1]
    if backend == "openai" and name.startswith("deepseek") and name != "deepseek-reasoner":
        return with_tool_calls
    return never


# -- what a request may hold ---------------------------------------------------------------------------------
MAX_RESULT_CHARS = 20_000  # of a tool result's text sent back to the model (the whole result is kept)
UNANSWERED = "the call did not run or did not finish (the turn was stopped); it has no result"


def sent_result(text: str) -> str:
    """A tool result's text as a request carries it: at most MAX_RESULT_CHARS, with a note when cut."""
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"\n[result cut: {MAX_RESULT_CHARS:,} of {len(text):,} characters sent]"


def paired(messages: Sequence[Message], *, cut: bool = True) -> list[Message]:
    """``messages`` as a server accepts them (it refuses a call left without its result and a result
    without its call): every call of an assistant message is answered in the tool message after it (a call
    a kill or Ctrl-C left without one gets an error result saying so), a result whose call is not just
    before it is left out, and (with ``cut``) each result's text is cut as ``sent_result`` says. The
    messages given are not changed."""
    sent = _sent if cut else _whole
    out: list[Message] = []
    open_calls: list[str] = []  # ids of the last assistant message's calls, not yet answered
    for m in messages:
        if m.role == "tool":
            results: list[Part] = [
                sent(p) for p in m.parts if isinstance(p, ToolResultPart) and p.call_id in open_calls
            ]
            answered = {p.call_id for p in results if isinstance(p, ToolResultPart)}
            open_calls = [c for c in open_calls if c not in answered]
            if results:
                out.append(Message("tool", parts=results, created_at=m.created_at))
            continue
        if open_calls:
            out.append(_unanswered(open_calls))
        out.append(m)
        open_calls = [p.id for p in m.parts if isinstance(p, ToolCallPart)] if m.role == "assistant" else []
    if open_calls:
        out.append(_unanswered(open_calls))
    return _merged_results(out)


def _sent(p: ToolResultPart) -> ToolResultPart:
    text = sent_result(p.text)
    return p if text is p.text else replace(p, text=text)


def _whole(p: ToolResultPart) -> ToolResultPart:
    return p


def _unanswered(call_ids: list[str]) -> Message:
    parts: list[Part] = [ToolResultPart(c, UNANSWERED, None, True) for c in call_ids]
    return Message("tool", parts=parts, created_at="")


def _merged_results(messages: list[Message]) -> list[Message]:
    """Consecutive tool messages as one (the results of one assistant message's calls)."""
    out: list[Message] = []
    for m in messages:
        if m.role == "tool" and out and out[-1].role == "tool":
            out[-1] = Message("tool", parts=[*out[-1].parts, *m.parts], created_at=out[-1].created_at)
        else:
            out.append(m)
    return out


# -- the OpenAI chat format ----------------------------------------------------------------------------------
def to_openai(messages: Iterable[Message], rule: ReasoningRule = never) -> list[dict[str, Any]]:
    """The OpenAI chat-format dicts of ``messages`` (module docstring); an assistant message's reasoning is
    included as ``reasoning_content`` only where ``rule`` says."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            out.extend(
                {"role": "tool", "tool_call_id": p.call_id, "content": p.text}
                for p in m.parts
                if isinstance(p, ToolResultPart)
            )
            continue
        parts = m.parts
        if len(parts) == 1 and isinstance(parts[0], TextPart):  # the common case, kept quick
            out.append({"role": m.role, "content": parts[0].text})
            continue
        calls = [p for p in parts if isinstance(p, ToolCallPart)]
        d: dict[str, Any] = {"role": m.role, "content": m.content if m.content or not calls else None}
        if m.role == "assistant" and rule(m) and m.reasoning:
            d["reasoning_content"] = m.reasoning
        if calls:
            d["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        out.append(d)
    return out


def from_openai(dicts: Iterable[dict[str, Any]]) -> list[Message]:
    """Messages from OpenAI chat-format dicts (the reverse of ``to_openai``): ``reasoning_content`` (or
    ``reasoning``) becomes a reasoning part, ``tool_calls`` tool-call parts, and consecutive ``tool``
    messages one message of role ``tool``. Raises ValueError for a dict of no known shape."""
    out: list[Message] = []
    for d in dicts:
        role = d.get("role")
        if role == "tool":
            result = ToolResultPart(str(d.get("tool_call_id", "")), _text_of(d.get("content")))
            if out and out[-1].role == "tool":
                out[-1].parts = [*out[-1].parts, result]
            else:
                out.append(Message("tool", parts=[result]))
            continue
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"not a chat message: role {role!r}")
        parts: list[Part] = []
        reasoning = d.get("reasoning_content") or d.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append(ReasoningPart(reasoning))
        text = _text_of(d.get("content"))
        if text:
            parts.append(TextPart(text))
        for call in d.get("tool_calls") or ():
            fn = call.get("function") or {}
            parts.append(ToolCallPart(str(call.get("id", "")), str(fn.get("name", "")), _json_text(fn)))
        out.append(Message(role, parts=parts))
    return out


def _text_of(content: Any) -> str:
    """The text of an OpenAI ``content``: a string, None, or a list of ``{"type": "text", "text"}``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(c.get("text", "")) for c in content if isinstance(c, dict) and c.get("type") == "text"
        )
    return ""


def _json_text(fn: dict[str, Any]) -> str:
    """A function call's ``arguments`` as JSON text (Ollama sends an object, OpenAI a string)."""
    args = fn.get("arguments", "")
    return args if isinstance(args, str) else orjson.dumps(args).decode()


# -- content blocks ------------------------------------------------------------------------------------------
def to_blocks(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """``messages`` as ordered content blocks (module docstring): every part, in order, reasoning
    included."""
    return [
        {"role": "user" if m.role == "tool" else m.role, "content": [_block(p) for p in m.parts]}
        for m in messages
    ]


def _block(p: Part) -> dict[str, Any]:
    if isinstance(p, TextPart):
        return {"type": "text", "text": p.text}
    if isinstance(p, ReasoningPart):
        return {"type": "thinking", "thinking": p.text}
    if isinstance(p, ToolCallPart):
        return {"type": "tool_use", "id": p.id, "name": p.name, "input": _decoded(p.arguments)}
    if isinstance(p, ToolResultPart):
        content = p.raw if isinstance(p.raw, list) else p.text
        return {"type": "tool_result", "tool_use_id": p.call_id, "content": content, "is_error": p.is_error}
    raise ValueError(f"a {p.type} part has no content block yet")


def _decoded(arguments: str) -> Any:
    """A tool call's arguments as JSON; text that is not JSON stays a string."""
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments


def from_blocks(blocks: Sequence[dict[str, Any]]) -> list[Message]:
    """Messages from content-block dicts (the reverse of ``to_blocks``); a ``user`` message made only of
    ``tool_result`` blocks becomes a message of role ``tool``. Raises ValueError for an unknown block."""
    out = []
    for d in blocks:
        content = d.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
        parts = [_part(b) for b in items]
        role = str(d.get("role"))
        if role == "user" and parts and all(isinstance(p, ToolResultPart) for p in parts):
            role = "tool"
        out.append(Message(role, parts=parts))
    return out


def _part(b: dict[str, Any]) -> Part:
    kind = b.get("type")
    if kind == "text":
        return TextPart(str(b.get("text", "")))
    if kind == "thinking":
        return ReasoningPart(str(b.get("thinking", "")))
    if kind == "tool_use":
        args = b.get("input")
        text = args if isinstance(args, str) else orjson.dumps(args).decode()
        return ToolCallPart(str(b.get("id", "")), str(b.get("name", "")), text)
    if kind == "tool_result":
        content = b.get("content")
        raw = content if isinstance(content, list) else None
        return ToolResultPart(
            str(b.get("tool_use_id", "")), _text_of(content), raw, bool(b.get("is_error", False))
        )
    raise ValueError(f"not a content block chatcli knows: {kind!r}")
