"""The conversation, defined once: a session's ``Header``, its ``Message`` list and each message's parts
(``TextPart``, ``ReasoningPart``, ``ToolCallPart``, ``ToolResultPart``; ``AttachmentPart`` is reserved).

Every other form is derived from these classes: the snapshot JSON (``Conversation.to_json`` and
``Conversation.from_json``, the one codec, which also validates and upgrades older format versions), the
SQL columns and rows (``chatcli.stores.sql_rows`` reads the fields' metadata), the counts and every view.
Adding a header field is one edit here: a field without a ``column`` is kept in the SQL stores' ``extra``
JSON, and round-trips through every store, ``migrate``, ``export`` and ``import`` as it is.

The snapshot (README, "The snapshot format"), version 2::

    {"format": "chatcli.session", "version": 2, <the header's fields>, <unknown keys, kept>,
     "messages": [{"role", "content" | "parts", "created_at", "status", ...}, ...]}

A message that is only text is written with ``content`` (a string, small and greppable); any other with
``parts``, a list of ``{"type": "text" | "reasoning" | "tool_call" | "tool_result" | "attachment", ...}``.
Version 1 (chatcli before parts) is read through ``upgrade_v1``. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import SnapshotError
from chatcli.messages import (
    BYTES_PER_TOKEN,
    DROPPED,
    MESSAGE_OVERHEAD,
    STATUSES,
    ContextUsed,
    Timings,
    Usage,
    int_or_none,
)

FORMAT = "chatcli.session"
VERSION = 2
ROLES = ("user", "assistant", "system", "tool")  # tool: a message of tool results


# -- parts ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TextPart:
    """Text the user typed or the model wrote."""

    text: str
    type = "text"


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    """What a model thought before it answered (``reasoning_content``, ``thinking``, ``<think>``): kept, shown
    folded, not sent back unless a server needs it."""

    text: str
    type = "reasoning"


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A call of a tool the model asked for: the call's ``id``, the tool's ``name`` and its ``arguments``
    (a JSON text, as the model wrote it)."""

    id: str
    name: str
    arguments: str
    type = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    """The result of call ``call_id``: ``text`` (what is sent to the model), ``raw`` (the result as JSON as
    the tool gave it: images, resources; None when the text is all), ``is_error``, ``duration_s`` (seconds
    the call ran; None when nothing ran: a refusal, an unknown tool, an imported result)."""

    call_id: str
    text: str
    raw: Any = None
    is_error: bool = False
    duration_s: float | None = None
    type = "tool_result"


@dataclass(frozen=True, slots=True)
class AttachmentPart:
    """Reserved for files in a message: ``name``, ``media_type`` and ``data`` (text, or base64)."""

    name: str
    media_type: str
    data: str
    type = "attachment"


Part = TextPart | ReasoningPart | ToolCallPart | ToolResultPart | AttachmentPart
PART_TYPES: dict[str, type[Part]] = {
    p.type: p for p in (TextPart, ReasoningPart, ToolCallPart, ToolResultPart, AttachmentPart)
}


def part_to_json(part: Part) -> dict[str, Any]:
    """``{"type": ..., <the part's fields>}``; a tool result's ``raw``, ``is_error`` and ``duration_s`` only
    when set."""
    d: dict[str, Any] = {"type": part.type}
    for f in fields(part):
        value = getattr(part, f.name)
        if value is None or (f.name == "is_error" and value is False):
            continue
        d[f.name] = value
    return d


def part_from_json(d: Any, where: object, at: str) -> Part:
    """A part from its JSON form. Raises SnapshotError naming ``where`` and ``at`` when it is not one."""
    cls = PART_TYPES.get(str(d.get("type"))) if isinstance(d, dict) else None
    if cls is None:
        raise SnapshotError(f"{where} is damaged: {at} is not a part chatcli knows", where)
    values: dict[str, Any] = {}
    for f in fields(cls):
        v = d.get(f.name, f.default)
        if f.name == "raw":
            values[f.name] = v
        elif f.name == "duration_s":  # (a damaged figure is read as none: it is only a figure)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e9
            values[f.name] = float(v) if ok else None
        elif f.name == "is_error":
            if not isinstance(v, bool):
                raise SnapshotError(
                    f"{where} is damaged: {at} has an is_error that is not true or false", where
                )
            values[f.name] = v
        elif not isinstance(v, str):
            raise SnapshotError(f"{where} is damaged: {at} has no text {f.name!r}", where)
        else:
            values[f.name] = v
    return cls(**values)


# -- the message ---------------------------------------------------------------------------------------------
#: message keys the codec reads into Message fields; others are kept in ``extra``
_MESSAGE_KEYS = frozenset(
    {
        "role",
        "content",
        "parts",
        "created_at",
        "status",
        "finish_reason",
        "model",
        "error",
        "dropped",
        "context",
        "summary_of",
        "usage",
        "timings",
    }
)


#: the optional message fields written as they are, when set, in this order
_PLAIN_OPTIONAL = ("finish_reason", "model", "error", "dropped", "summary_of")


@dataclass(init=False, repr=False)
class Message:
    """One message. ``role``: ``user``, ``assistant`` or ``system`` (a summary written by ``/compact``);
    ``parts``: its parts in order (``content`` is their text); ``created_at`` UTC ISO 8601; ``status`` one
    of STATUSES; on replies ``finish_reason`` (``stop``, ``length``, ...), ``usage``, ``timings``, the
    ``model`` that wrote it, ``error`` (what went wrong, for status ``error``), ``context`` (what its request
    held). ``dropped`` marks a message taken out of the conversation but kept in the file: ``retried`` (a
    reply replaced by ``retry``), ``undone`` (a turn taken back by ``undo``) or ``unsent`` (a user message
    too large for the context window); dropped messages are never sent. ``summary_of``: a summary's
    ``[first, end)``, the messages it stands for in requests. ``extra``: keys this chatcli does not know,
    kept as they came.

    A finished message's JSON is built once and reused until an attribute is set (a save of a 10,000-message
    session would otherwise spend its time here): give it a new ``usage``, ``timings`` or ``parts`` list
    rather than changing theirs."""

    role: str
    parts: list[Part]
    created_at: str
    status: str
    finish_reason: str | None
    usage: Usage | None
    timings: Timings | None
    model: str | None
    error: str | None
    dropped: str | None
    context: ContextUsed | None
    summary_of: list[int] | None
    extra: dict[str, Any]

    def __init__(
        self,
        role: str,
        content: str = "",
        *,
        parts: list[Part] | None = None,
        created_at: str | None = None,
        status: str = "ok",
        finish_reason: str | None = None,
        usage: Usage | None = None,
        timings: Timings | None = None,
        model: str | None = None,
        error: str | None = None,
        dropped: str | None = None,
        context: ContextUsed | None = None,
        summary_of: list[int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        d = self.__dict__
        d.update(
            role=role,
            parts=parts if parts is not None else ([TextPart(content)] if content else []),
            created_at=utc_now() if created_at is None else created_at,
            status=status,
            finish_reason=finish_reason,
            usage=usage,
            timings=timings,
            model=model,
            error=error,
            dropped=dropped,
            context=context,
            summary_of=summary_of,
            extra=extra if extra is not None else {},
            _json=None,
            _size=None,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "content":  # a property: the setter makes the parts
            self._set_content(value)
            return
        d = self.__dict__  # (plain dict stores: this runs for every field of every message loaded)
        d[name] = value
        d["_json"] = None  # the cached to_json() is out of date
        d["_size"] = None  # ... and so is the cached size estimate

    def __repr__(self) -> str:
        return f"Message({self.role!r}, {self.content[:40]!r}, status={self.status!r})"

    # -- its text --------------------------------------------------------------------------------------
    @property
    def content(self) -> str:
        """The message's text: its text parts, joined."""
        parts = self.parts
        if len(parts) == 1 and isinstance(parts[0], TextPart):
            return parts[0].text
        return "".join(p.text for p in parts if isinstance(p, TextPart))

    @content.setter
    def content(self, text: str) -> None:
        self._set_content(text)

    def _set_content(self, text: str) -> None:
        """Replace the text parts by ``text`` (where the first one was; other parts stay in place)."""
        kept: list[Part] = []
        placed = False
        for p in self.parts:
            if type(p) is TextPart:
                if not placed and text:
                    kept.append(TextPart(text))
                placed = True
            else:
                kept.append(p)
        if not placed and text:
            kept.append(TextPart(text))
        self.parts = kept

    @property
    def reasoning(self) -> str:
        """The message's reasoning parts, joined ("" for none)."""
        return "".join(p.text for p in self.parts if isinstance(p, ReasoningPart))

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        """The message's tool calls, in order ([] for none)."""
        return [p for p in self.parts if isinstance(p, ToolCallPart)]

    @property
    def sendable(self) -> bool:
        """Whether a request can carry this message: it has text, a tool call or a tool result (reasoning
        alone is not sent)."""
        return any(type(p) is not ReasoningPart and type(p) is not AttachmentPart for p in self.parts)

    def sent_text(self) -> str:
        """What a request carries of this message, as text: its text, its tool calls' names and arguments
        and its tool results' text (what the token estimate counts)."""
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is TextPart:
            return parts[0].text
        out = []
        for p in parts:
            if isinstance(p, TextPart | ToolResultPart):
                out.append(p.text)
            elif isinstance(p, ToolCallPart):
                out.append(f"{p.name}({p.arguments})")
        return "".join(out)

    @property
    def searched_text(self) -> str:
        """What ``search`` finds in this message: its text, then a line per tool call (``name(arguments)``)
        and per tool result (its text); the stores index it and their snippets are cut from it."""
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is TextPart:
            return parts[0].text
        out = [self.content] if self.content else []
        for p in parts:
            if isinstance(p, ToolCallPart):
                out.append(f"{p.name}({p.arguments})")
            elif isinstance(p, ToolResultPart) and p.text:
                out.append(p.text)
        return "\n".join(out)

    @property
    def starts_turn(self) -> bool:
        """Whether this message starts a turn: a user message still in the conversation (not dropped).
        Turns are numbered from 1 by counting these."""
        return self.role == "user" and self.dropped is None

    def estimated_tokens(self) -> int:
        """This message's size in tokens by chatcli's estimate: UTF-8 bytes of ``sent_text`` /
        BYTES_PER_TOKEN (rounded up) plus MESSAGE_OVERHEAD. Cached until an attribute is set."""
        size: int | None = self.__dict__.get("_size")
        if size is None:
            text = self.sent_text()
            size = -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD
            if self.status != "streaming":
                self.__dict__["_size"] = size
        return size

    # -- the codec -------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The message as a snapshot stores it (module docstring); cached for a finished message, so treat
        the result as read-only."""
        cached: dict[str, Any] | None = self.__dict__.get("_json")
        if cached is not None:
            return cached
        d: dict[str, Any] = {"role": self.role}
        parts = self.parts
        if not parts:
            d["content"] = ""
        elif len(parts) == 1 and isinstance(parts[0], TextPart):
            d["content"] = parts[0].text
        else:
            d["parts"] = [part_to_json(p) for p in parts]
        d["created_at"] = self.created_at
        d["status"] = self.status
        for key in _PLAIN_OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.context is not None:
            d["context"] = self.context.to_json()
        if self.usage is not None:
            d["usage"] = self.usage.to_json()
        if self.timings is not None:
            d["timings"] = self.timings.to_json()
        if self.extra:
            d.update(self.extra)
        if self.status != "streaming":
            self.__dict__["_json"] = d
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: object = "<snapshot>", at: str = "a message") -> Message:
        """A message from its snapshot form. Raises SnapshotError when it has no role or no text (neither
        ``content`` nor ``parts``) or a part that is not one; damaged optional fields are read as absent. A
        ``streaming`` reply (its writer died) becomes ``interrupted``. Until the message changes, ``to_json``
        gives back ``d`` as it was (unknown keys, explicit nulls and damaged values included)."""
        # (run for every message of every session loaded: kept to plain statements, no keyword calls)
        get = d.get
        role = get("role")
        raw_parts = get("parts")
        content = get("content")
        if role not in ROLES or not (type(content) is str or isinstance(raw_parts, list)):
            raise SnapshotError(f"{where} is damaged: {at} is not a valid message", where)
        if isinstance(raw_parts, list):
            parts = [part_from_json(p, where, f"part {k} of {at}") for k, p in enumerate(raw_parts)]
        else:
            parts = [TextPart(content)] if content else []
        status = get("status", "ok")
        kept = d  # written back as it was read, until it changes ...
        if status not in STATUSES:
            status = "ok"
        elif status == "streaming":  # the writer died mid-reply: what was saved is an interrupted reply
            status = "interrupted"
            kept = {**d, "status": status}  # ... but no more as streaming: its writer is gone
        dropped = get("dropped")
        created_at = get("created_at", "")
        m = cls.__new__(cls)
        m.__dict__.update(
            role=role,
            parts=parts,
            created_at=created_at if type(created_at) is str else "",
            status=status,
            finish_reason=_str_or(get("finish_reason"), None),
            usage=Usage.from_json(get("usage")),
            timings=Timings.from_json(get("timings")),
            model=_str_or(get("model"), None),
            error=_str_or(get("error"), None),
            dropped=dropped if dropped in DROPPED else None,
            context=ContextUsed.from_json(get("context")),
            summary_of=_span(get("summary_of")),
            extra={} if d.keys() <= _MESSAGE_KEYS else {k: v for k, v in d.items() if k not in _MESSAGE_KEYS},
            _json=kept,
            _size=None,
        )
        return m


def _span(v: Any) -> list[int] | None:
    """``[first, end)`` message indexes, or None when ``v`` is not such a pair."""
    if (
        isinstance(v, list)
        and len(v) == 2
        and all(int_or_none(x) is not None for x in v)
        and 0 <= v[0] <= v[1]
    ):
        return [v[0], v[1]]
    return None


def _str_or(v: Any, default: Any) -> Any:
    return v if isinstance(v, str) else default


# -- the header ----------------------------------------------------------------------------------------------
def _meta(
    *,
    json: type | tuple[type, ...] = str,
    required: bool = True,
    column: str | None = "text",
    order: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A header field's facts: the JSON types it takes, whether a snapshot must have it, its SQL column's
    kind (``text``, ``int``, ``json``; None: no column of its own, kept in ``extra``), and the key order
    chatcli writes in its JSON value (for the SQL engines that reorder them)."""
    return {"json": json, "required": required, "column": column, "order": order}


@dataclass
class Header:
    """What a session is, besides its messages: the fields of the snapshot (README, "The snapshot format"),
    in the order the file writes them. ``None`` is a field the snapshot does not have. ``extra`` holds the
    keys this chatcli does not know (``forked_from``, say), kept as they came."""

    id: str = field(metadata=_meta(column=None))  # the row's key in a database
    title: str = field(default="", metadata=_meta())
    created_at: str = field(default="", metadata=_meta())
    updated_at: str = field(default="", metadata=_meta())
    backend: str = field(default="", metadata=_meta())
    model: str = field(default="", metadata=_meta())
    base_url: str | None = field(default=None, metadata=_meta(required=False))
    params: dict[str, Any] = field(
        default_factory=dict, metadata=_meta(json=dict, column="json", order=("temperature", "max_tokens"))
    )
    system: str = field(default="", metadata=_meta())
    context_start: int = field(default=0, metadata=_meta(json=int, column="int"))
    model_path: str | None = field(default=None, metadata=_meta(required=False))
    clears: list[int] | None = field(default=None, metadata=_meta(json=list, required=False, column="json"))
    changes: list[dict[str, Any]] | None = field(
        default=None,
        metadata=_meta(
            json=list, required=False, column="json", order=("at", "what", "from", "to", "created_at")
        ),
    )
    context_window: int | None = field(default=None, metadata=_meta(json=int, required=False, column=None))
    #: the MCP servers (names only) whose tools the session uses (``--tools``)
    tools: list[str] | None = field(default=None, metadata=_meta(json=list, required=False, column=None))
    extra: dict[str, Any] = field(default_factory=dict, metadata={"extra": True})

    def change_list(self) -> list[dict[str, Any]]:
        """The model, system prompt and title changes (``changes``) that are objects; a damaged entry is
        left out."""
        return [c for c in self.changes or [] if isinstance(c, dict)]

    def clear_list(self) -> list[int]:
        """The earlier ``context_start`` values (``clears``) that are message indexes."""
        return [c for c in self.clears or [] if isinstance(c, int) and not isinstance(c, bool)]

    def to_json(self) -> dict[str, Any]:
        """The header's keys of a snapshot, in order, unknown keys last."""
        d: dict[str, Any] = {}
        for f in HEADER_FIELDS:
            value = getattr(self, f.name)
            if value is not None:
                d[f.name] = value
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any], where: object = "<snapshot>") -> Header:
        """The header of a snapshot (a decoded JSON object), validated: every required field there with its
        type, every optional one of its type when there. Raises SnapshotError naming ``where``."""
        values: dict[str, Any] = {}
        for f in HEADER_FIELDS:
            meta = f.metadata
            value = data.get(f.name)
            if value is None and f.name not in data and not meta["required"]:
                continue
            if not isinstance(value, meta["json"]) or isinstance(value, bool):
                what = "missing or of the wrong type" if meta["required"] else "of the wrong type"
                raise SnapshotError(f"{where} is damaged: field {f.name!r} is {what}", where)
            values[f.name] = value
        extra = {k: v for k, v in data.items() if k not in _TOP_KEYS}
        return cls(**values, extra=extra)


HEADER_FIELDS = tuple(f for f in fields(Header) if not f.metadata.get("extra"))
#: the top-level keys of a snapshot chatcli reads into the header (or the format and the messages)
_TOP_KEYS = frozenset({"format", "version", "messages", *(f.name for f in HEADER_FIELDS)})


# -- the conversation ----------------------------------------------------------------------------------------
@dataclass
class Conversation:
    """One session: its header and its messages. The snapshot is its JSON form (``to_json``,
    ``from_json``)."""

    header: Header
    messages: list[Message] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.header.id

    def turns(self) -> list[tuple[Message, Message | None]]:
        """The conversation as (user message, its reply or None) pairs, in order; dropped messages left
        out. A turn is a user message still in the conversation (``Message.starts_turn``) and the first
        assistant message after it."""
        out: list[tuple[Message, Message | None]] = []
        for m in self.messages:
            if m.starts_turn:
                out.append((m, None))
            elif m.role == "assistant" and m.dropped is None and out and out[-1][1] is None:
                out[-1] = (out[-1][0], m)
        return out

    def to_json(self) -> dict[str, Any]:
        """The snapshot (version VERSION): the format, the header, the messages last."""
        return {
            "format": FORMAT,
            "version": VERSION,
            **self.header.to_json(),
            "messages": [m.to_json() for m in self.messages],
        }

    @classmethod
    def from_json(cls, data: Any, where: object = "<snapshot>") -> Conversation:
        """A conversation from a decoded snapshot of any version this chatcli reads (older ones upgraded by
        UPGRADES), validated. Raises SnapshotError (``path`` = ``where``) when it is not a chatcli session,
        comes from a newer chatcli, or has fields of the wrong type."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SnapshotError(f"{where} is not a chatcli session file", where)
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SnapshotError(f"{where} has no valid format version", where)
        if version > VERSION:
            raise SnapshotError(
                f"{where} was written by a newer chatcli (format version {version}; this one reads up to "
                f"{VERSION}): upgrade chatcli to open it",
                where,
            )
        while data["version"] < VERSION:
            data = UPGRADES[data["version"]](data)
        header = Header.from_json(data, where)
        raw = data.get("messages")
        if not isinstance(raw, list):
            raise SnapshotError(
                f"{where} is damaged: field 'messages' is missing or of the wrong type", where
            )
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise SnapshotError(f"{where} is damaged: message {i} is not a valid message", where)
            messages.append(Message.from_json(m, where, f"message {i}"))
        if not 0 <= header.context_start <= len(messages):
            raise SnapshotError(f"{where} is damaged: context_start is out of range", where)
        return cls(header, messages)


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: messages were text alone (``content``), which version 2 writes the same way; only the
    version number changes."""
    return {**data, "version": 2}


#: UPGRADES[n] turns a version-n snapshot (decoded JSON, not yet validated) into a version n+1 one
UPGRADES = {1: upgrade_v1}


def header_key_order(name: str) -> tuple[str, ...]:
    """The key order chatcli writes in the JSON value of header field ``name`` (``()``: as it comes)."""
    return _ORDERS.get(name, ())


_ORDERS: dict[str, tuple[str, ...]] = {
    f.name: f.metadata["order"] for f in HEADER_FIELDS if f.metadata["order"]
}
