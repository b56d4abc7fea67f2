"""The small values of a conversation: a reply's Usage, Timings and ContextUsed, GenerationParams,
Timeouts, the statuses, and the size limit of a message. The message itself and the session
are in ``chatcli.model``. Plain dataclasses; no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

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


@dataclass
class Usage:
    """Token counts as the server reported them (None when it did not): ``prompt_tokens``,
    ``completion_tokens``, ``cached_tokens`` (prompt tokens served from the cache), ``reasoning_tokens``
    (completion tokens the model spent reasoning: OpenAI ``completion_tokens_details.reasoning_tokens``)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The snapshot's ``usage`` object: the first three keys always, ``reasoning_tokens`` when known."""
        d = {k: getattr(self, k) for k in USAGE_KEYS[:3]}
        if self.reasoning_tokens is not None:
            d["reasoning_tokens"] = self.reasoning_tokens
        return d

    @classmethod
    def from_json(cls, u: Any) -> Usage | None:
        """A Usage from the snapshot's ``usage`` (None when it is not an object; odd counts read as None)."""
        if not isinstance(u, dict):
            return None
        return cls(*[v if type(v) is int else None for v in map(u.get, USAGE_KEYS)])


@dataclass
class Timings:
    """Timings of one reply, measured by chatcli unless said otherwise.

    ``ttft_s``: seconds from sending the request to the first token; ``duration_s``: seconds for the whole
    reply; ``tokens_per_second``: completion tokens per second of generation (the server's own figure when
    it gives one; when the server reports no token count, text pieces per second, which servers send one
    token at a time); ``server``: the server's raw timing fields (llama.cpp ``timings`` in milliseconds, or
    Ollama's ``*_duration`` fields in nanoseconds); ``reasoning_s``: seconds the reply spent reasoning (from
    its first reasoning to its first text, or to its end)."""

    ttft_s: float | None = None
    duration_s: float | None = None
    tokens_per_second: float | None = None
    server: dict[str, Any] | None = None
    reasoning_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The snapshot's ``timings`` object: the first four keys always, ``reasoning_s`` when known."""
        d = {k: getattr(self, k) for k in TIMINGS_KEYS[:4]}
        if self.reasoning_s is not None:
            d["reasoning_s"] = self.reasoning_s
        return d

    @classmethod
    def from_json(cls, t: Any) -> Timings | None:
        """Timings from the snapshot's ``timings`` (None when it is not an object; odd values read as
        None)."""
        if not isinstance(t, dict):
            return None
        server = t.get("server")
        return cls(
            ttft_s=num_or_none(t.get("ttft_s")),
            duration_s=num_or_none(t.get("duration_s")),
            tokens_per_second=num_or_none(t.get("tokens_per_second")),
            server=server if isinstance(server, dict) else None,
            reasoning_s=num_or_none(t.get("reasoning_s")),
        )


#: the keys of ``usage`` and ``timings`` in the order chatcli writes them
USAGE_KEYS = tuple(f.name for f in fields(Usage))
TIMINGS_KEYS = tuple(f.name for f in fields(Timings))


@dataclass
class ContextUsed:
    """What the request for a reply held (the ``context`` of an assistant message in the snapshot): the
    messages from index ``start`` on (earlier ones were left out to fit the window), after the system
    prompt and, when ``summary`` is set, the summary message at that index. ``tokens``: the prompt's size
    as chatcli counted it before sending (``exact``: counted by the server, else estimated; None: not
    counted); ``window``: the context window it was sized for, in tokens (None: unknown); ``rounds_from``:
    when the newest turn's oldest tool rounds were left out, the index its rounds were sent from (the
    messages after its user message and before that index were not sent; None: none were left out)."""

    start: int
    tokens: int | None = None
    exact: bool = False
    window: int | None = None
    summary: int | None = None
    rounds_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The snapshot's ``context`` object: ``start``, and ``tokens``/``exact``, ``window``, ``summary``,
        ``rounds_from`` when known."""
        d: dict[str, Any] = {"start": self.start}
        if self.tokens is not None:
            d["tokens"] = self.tokens
            d["exact"] = self.exact
        if self.window is not None:
            d["window"] = self.window
        if self.summary is not None:
            d["summary"] = self.summary
        if self.rounds_from is not None:
            d["rounds_from"] = self.rounds_from
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
            rounds_from=int_or_none(d.get("rounds_from")),
        )


def int_or_none(v: Any) -> int | None:
    """``v`` when it is an int (not a bool), else None: for numbers read from JSON."""
    return v if type(v) is int else None  # (a bool is not: its type is bool)


def num_or_none(v: Any) -> float | None:
    """``v`` as a float when it is a number (not a bool), else None: for numbers read from JSON."""
    return float(v) if type(v) is float or type(v) is int else None


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
