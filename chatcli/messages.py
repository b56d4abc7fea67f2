"""The data of a conversation in memory: Message (with its Usage and Timings), GenerationParams,
Timeouts and Stats, and how a message is read from and written to a snapshot (see README, "The snapshot
format"). Plain dataclasses; no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Required, TypedDict

from chatcli.clock import utc_now
from chatcli.errors import SizeLimitError

#: statuses a message can have; ``ok`` is a complete message
STATUSES = ("ok", "streaming", "interrupted", "timeout", "error")
#: why a message left the conversation while staying in the file (see Message.dropped)
DROPPED = ("retried", "undone", "unsent")
#: bytes of UTF-8 per token in chatcli's estimate of a text's size (see chatcli.context)
BYTES_PER_TOKEN = 3
#: tokens a chat template adds around each message (role markers), in that estimate
MESSAGE_OVERHEAD = 4
#: the most text (UTF-8 bytes) one message, reply or system prompt may hold: the same on every store (it
#: fits a MySQL server's default max_allowed_packet of 16 MiB even with every byte escaped), and more than
#: any model's context window takes in one request
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def utf8_size(text: str) -> int:
    """Bytes ``text`` takes as UTF-8 (a lone surrogate counted as the 3 bytes of its U+FFFD)."""
    return len(text.encode("utf-8", "surrogatepass"))


REPLY_OVER_LIMIT = (
    f"the reply passed {MAX_MESSAGE_BYTES // 2**20} MiB, the most chatcli keeps of one message: "
    "it was stopped there"
)


def cut_to_fit(text: str, room: int) -> str:
    """The start of ``text`` that fits in ``room`` bytes of UTF-8 (whole characters only)."""
    return text.encode("utf-8", "surrogatepass")[: max(0, room)].decode("utf-8", "ignore")


def check_size(text: str, what: str = "the message") -> None:
    """Raise SizeLimitError when ``text`` is over MAX_MESSAGE_BYTES; ``what`` names it in the message."""
    if len(text) * 4 <= MAX_MESSAGE_BYTES:  # (no UTF-8 character is longer: no need to encode)
        return
    size = utf8_size(text)
    if size > MAX_MESSAGE_BYTES:
        raise SizeLimitError(
            f"{what} is {size / 2**20:,.1f} MiB; chatcli keeps at most {MAX_MESSAGE_BYTES // 2**20} MiB of "
            f"text in one message, on every store; nothing was sent or saved"
        )


class MessageJSON(TypedDict, total=False):
    """One message of a snapshot, as stored (README, "The snapshot format"); built by ``Message.to_json``
    and read back by ``Message.from_json``. Only ``role`` and ``content`` are required."""

    role: Required[str]  # "user" | "assistant" | "system"
    content: Required[str]
    created_at: str  # UTC ISO 8601
    status: str  # one of STATUSES
    finish_reason: str | None
    model: str
    usage: dict[str, int | None]  # prompt_tokens, completion_tokens, cached_tokens
    timings: dict[str, Any]  # ttft_s, duration_s (seconds), tokens_per_second, server
    error: str
    dropped: str  # one of DROPPED: kept in the file, no longer part of the conversation
    context: dict[str, Any]  # start, tokens, exact, window, summary: what the reply's request held
    summary_of: list[int]  # a summary message: [first, end) of the messages it stands for


@dataclass
class Usage:
    """Token counts as the server reported them (None when it did not):
    ``prompt_tokens``, ``completion_tokens``, ``cached_tokens`` (prompt tokens served from the cache)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


@dataclass
class Timings:
    """Timings of one reply, measured by chatcli unless said otherwise.

    ``ttft_s``: seconds from sending the request to the first token; ``duration_s``: seconds for the whole
    reply; ``tokens_per_second``: completion tokens per second of generation (the server's own figure when
    it gives one; when the server reports no token count, text pieces per second, which servers send one
    token at a time); ``server``: the server's raw timing fields (llama.cpp ``timings`` in milliseconds, or
    Ollama's ``*_duration`` fields in nanoseconds)."""

    ttft_s: float | None = None
    duration_s: float | None = None
    tokens_per_second: float | None = None
    server: dict[str, Any] | None = None


@dataclass
class ContextUsed:
    """What the request for a reply held (the ``context`` of an assistant message in the snapshot): the
    messages from index ``start`` on (earlier ones were left out to fit the window), after the system
    prompt and, when ``summary`` is set, the summary message at that index. ``tokens``: the prompt's size
    as chatcli counted it before sending (``exact``: counted by the server, else estimated; None: not
    counted); ``window``: the context window it was sized for, in tokens (None: unknown)."""

    start: int
    tokens: int | None = None
    exact: bool = False
    window: int | None = None
    summary: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The snapshot's ``context`` object: ``start``, and ``tokens``/``exact``, ``window``, ``summary`` when
        known."""
        d: dict[str, Any] = {"start": self.start}
        if self.tokens is not None:
            d["tokens"] = self.tokens
            d["exact"] = self.exact
        if self.window is not None:
            d["window"] = self.window
        if self.summary is not None:
            d["summary"] = self.summary
        return d

    @classmethod
    def from_json(cls, d: Any) -> ContextUsed | None:
        """Read back a ``context`` object; None when it is missing or damaged (no valid ``start``)."""
        if not isinstance(d, dict) or int_or_none(d.get("start")) is None or d["start"] < 0:
            return None
        return cls(
            start=d["start"],
            tokens=int_or_none(d.get("tokens")),
            exact=d.get("exact") is True,
            window=int_or_none(d.get("window")),
            summary=int_or_none(d.get("summary")),
        )


@dataclass
class Message:
    """One message. ``role`` is ``user`` or ``assistant`` (a snapshot from elsewhere may hold ``system``);
    ``created_at`` UTC ISO 8601; ``status`` one of STATUSES; the rest is set on assistant messages:
    ``finish_reason`` (``stop``, ``length``, ...), ``usage``, ``timings``, ``model`` that wrote it, ``error``
    (what went wrong, for status ``error``), ``context`` (what its request held, see ContextUsed).
    ``dropped`` marks a message taken out of the conversation but kept in the file: ``retried`` (a reply
    replaced by ``retry``), ``undone`` (a turn taken back by ``undo``) or ``unsent`` (a user message too
    large for the context window; ``error`` says by how much); dropped messages are never sent.
    ``summary_of`` marks a summary written by ``/compact`` (role ``system``): ``[first, end)``, the indexes
    of the messages it stands for in requests."""

    role: str
    content: str
    created_at: str = field(default_factory=utc_now)
    status: str = "ok"
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    model: str | None = None
    error: str | None = None
    dropped: str | None = None
    context: ContextUsed | None = None
    summary_of: list[int] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__  # (plain dict stores: this runs for every field of every message loaded)
        d[name] = value
        d["_json"] = None  # the cached to_json() is out of date
        d["_size"] = None  # ... and so is the cached size estimate

    @property
    def starts_turn(self) -> bool:
        """Whether this message starts a turn: a user message still in the conversation (not dropped).
        Turns are numbered from 1 by counting these; ``snapshot.is_turn`` is the same rule on a stored
        message."""
        return self.role == "user" and self.dropped is None

    def estimated_tokens(self) -> int:
        """This message's size in tokens by chatcli's estimate: UTF-8 bytes / BYTES_PER_TOKEN (rounded up)
        plus MESSAGE_OVERHEAD. Cached until an attribute is set (see ``to_json``)."""
        size: int | None = self.__dict__.get("_size")
        if size is None:
            size = (
                -(-len(self.content.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD
            )
            if self.status != "streaming":
                self.__dict__["_size"] = size
        return size

    def to_json(self) -> MessageJSON:
        """The message as stored in the snapshot. A finished message's dict is built once and reused until
        one of its attributes is set (a save of a 10,000-message session would otherwise spend most of its
        time here); so once a message is finished, give it a new ``usage``/``timings`` rather than changing
        theirs. A message still ``streaming`` is never cached. Treat the result as read-only."""
        cached: MessageJSON | None = self.__dict__.get("_json")
        if cached is not None:
            return cached
        d: MessageJSON = {
            "role": self.role,
            "content": self.content,
            "created_at": self.created_at,
            "status": self.status,
        }
        if self.finish_reason is not None:
            d["finish_reason"] = self.finish_reason
        if self.model is not None:
            d["model"] = self.model
        if self.error is not None:
            d["error"] = self.error
        if self.dropped is not None:
            d["dropped"] = self.dropped
        if self.summary_of is not None:
            d["summary_of"] = self.summary_of
        if self.context is not None:
            d["context"] = self.context.to_json()
        if self.usage is not None:
            u = self.usage
            d["usage"] = {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "cached_tokens": u.cached_tokens,
            }
        if self.timings is not None:
            t = self.timings
            d["timings"] = {
                "ttft_s": t.ttft_s,
                "duration_s": t.duration_s,
                "tokens_per_second": t.tokens_per_second,
                "server": t.server,
            }
        if self.status != "streaming":
            self.__dict__["_json"] = d
        return d

    @classmethod
    def from_json(cls, d: MessageJSON) -> Message:
        """A message from its snapshot form (validated: ``role`` and ``content`` are there). Damaged
        optional fields are read as absent; a ``streaming`` reply (its writer died) becomes ``interrupted``."""
        status = d.get("status", "ok")
        if status not in STATUSES:
            status = "ok"
        if status == "streaming":  # the writer died mid-reply: what was saved is an interrupted reply
            status = "interrupted"
        usage = d.get("usage")
        timings = d.get("timings")
        return cls(
            role=d["role"],
            content=d["content"],
            created_at=_str_or(d.get("created_at"), ""),
            status=status,
            finish_reason=_str_or(d.get("finish_reason"), None),
            usage=Usage(
                **{
                    k: int_or_none(usage.get(k))
                    for k in ("prompt_tokens", "completion_tokens", "cached_tokens")
                }
            )
            if isinstance(usage, dict)
            else None,
            timings=Timings(
                ttft_s=num_or_none(timings.get("ttft_s")),
                duration_s=num_or_none(timings.get("duration_s")),
                tokens_per_second=num_or_none(timings.get("tokens_per_second")),
                server=timings.get("server") if isinstance(timings.get("server"), dict) else None,
            )
            if isinstance(timings, dict)
            else None,
            model=_str_or(d.get("model"), None),
            error=_str_or(d.get("error"), None),
            dropped=d["dropped"] if d.get("dropped") in DROPPED else None,
            context=ContextUsed.from_json(d.get("context")),
            summary_of=_span(d.get("summary_of")),
        )


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


def int_or_none(v: Any) -> int | None:
    """``v`` when it is an int (not a bool), else None: for numbers read from JSON."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def num_or_none(v: Any) -> float | None:
    """``v`` as a float when it is a number (not a bool), else None: for numbers read from JSON."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class GenerationParams:
    """Sampling parameters sent with every request; None means "the server's default". ``temperature``
    0-2, ``top_p`` 0-1 (nucleus sampling), ``repeat_penalty`` (llama.cpp and Ollama: above 1 discourages
    repeating text), ``max_tokens`` the longest reply in tokens."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The snapshot's ``params``: the parameters that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def over(self, defaults: GenerationParams) -> GenerationParams:
        """These parameters, with ``defaults`` filling the ones not set."""
        return GenerationParams(
            **{k: v if v is not None else getattr(defaults, k) for k, v in asdict(self).items()}
        )

    def problem(self) -> str | None:
        """What is out of range (one sentence), or None: temperature 0-2, top_p above 0 to 1,
        repeat_penalty above 0 to 10, max_tokens 1 or more."""
        t, p, r, m = self.temperature, self.top_p, self.repeat_penalty, self.max_tokens
        if t is not None and not 0 <= t <= 2:
            return f"temperature must be between 0 and 2, not {t}"
        if p is not None and not 0 < p <= 1:
            return f"top_p must be above 0 and at most 1, not {p}"
        if r is not None and not 0 < r <= 10:
            return f"repeat_penalty must be above 0 (1 is none), not {r}"
        if m is not None and not 1 <= m < 2**31:
            return f"max_tokens must be 1 or more (and below 2^31), not {m}"
        return None

    @classmethod
    def json_problem(cls, d: dict[str, Any]) -> str | None:
        """What is wrong with a snapshot's ``params`` (a known key of the wrong type, or out of range), or
        None. Keys chatcli does not know are left alone."""
        for key, want in (
            ("temperature", float),
            ("top_p", float),
            ("repeat_penalty", float),
            ("max_tokens", int),
        ):
            v = d.get(key)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int if want is int else (int, float))
            ):
                return f"{key} must be a number, not {v!r}"
        return cls.from_json(d).problem()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenerationParams:
        """Read back ``params``; a value of the wrong type is read as not set."""
        return cls(
            temperature=num_or_none(d.get("temperature")),
            max_tokens=int_or_none(d.get("max_tokens")),
            top_p=num_or_none(d.get("top_p")),
            repeat_penalty=num_or_none(d.get("repeat_penalty")),
        )


@dataclass
class Timeouts:
    """Limits of one turn, in seconds: ``connect`` to reach the server, ``idle`` with no data while
    streaming, ``total`` for the whole reply."""

    connect: float = 10.0
    idle: float = 120.0
    total: float = 600.0


@dataclass
class Stats:
    """Figures for the REPL's ``stats``: counts, characters, token sums, timings (seconds, tokens/s)."""

    turns: int
    messages_by_role: dict[str, int]
    characters: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    last_ttft_s: float | None
    mean_ttft_s: float | None
    last_tokens_per_second: float | None
    mean_tokens_per_second: float | None
    location: str  # where the session is kept: a file path, or a database and the id
    stored_bytes: int | None  # the snapshot file's size (None: a database keeps it in rows)
    last_saved_at: str | None
    context_messages: int
    #: the newest reply's request (``ContextMixin.context_figures``): tokens, window, share, turns_sent,
    #: left_out, summarised, at
    context: dict[str, Any] = field(default_factory=dict)
