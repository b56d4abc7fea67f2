"""How a session (``chatcli.model``) maps onto the SQL tables (see ``sql.py``): the session row, whose
columns come from the header's fields (their ``column`` metadata), and one row per message.

A column that is NULL means the key is absent from the snapshot; a value that does not fit its column's
type is kept in the row's ``extra`` JSON, so a record read back equals the one written. On an engine whose
text cannot hold NUL (PostgreSQL) a record holding NUL is kept whole, base64-encoded, in ``extra``, and its
columns hold the text without it (as every view shows it: see ``render.sanitize``). No I/O here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from chatcli.errors import SaveError, SnapshotError
from chatcli.messages import TIMINGS_KEYS, USAGE_KEYS
from chatcli.model import FORMAT, HEADER_FIELDS, VERSION, Header, Message, header_key_order
from chatcli.search import REASONING
from chatcli.snapshot import NO_COUNTS, Counts, message_counts, total_of, valid_unicode

#: message keys kept in text columns (NULL = absent), then in JSON columns
MESSAGE_TEXT = ("created_at", "status", "finish_reason", "model", "error", "dropped")
MESSAGE_JSON = ("usage", "timings", "parts")
#: what a message row's full-text indexes are given: for its text, and for its reasoning (None: it has none)
Searched = tuple[str, str | None]
MESSAGE_COLUMNS = ("idx", "turn", "role", "content", *MESSAGE_TEXT, *MESSAGE_JSON, "extra")
#: the header's fields that have a column of their own (chatcli.model.Header: metadata "column"), by kind
_COLUMNS = {f.name: f.metadata["column"] for f in HEADER_FIELDS if f.metadata["column"] is not None}
#: session row columns that hold the snapshot: the header's, the unknown keys (and fields with no column),
#: and the format version the row was written in
SESSION_FIELDS = (*_COLUMNS, "extra", "format_version")
JSON_FIELDS = frozenset(
    {*(n for n, kind in _COLUMNS.items() if kind == "json"), "extra"}
)  # session JSON columns
_SESSION_TEXT = tuple(n for n, kind in _COLUMNS.items() if kind == "text")
#: header fields kept in ``extra`` (no column of their own)
_IN_EXTRA = tuple(f.name for f in HEADER_FIELDS if f.metadata["column"] is None and f.name != "id")
COUNT_COLUMNS = Counts._fields  # the session row's counts, as Counts holds them
_B64 = "$chatcli_b64"  # an extra holding the whole record, for text a column cannot hold (NUL on PostgreSQL)


@dataclass
class Saved:
    """What a store knows of a session it loaded or saved: the row's ``version``, each message's counts
    and turn number as they are in the database, the session's counts and title. A save works out the
    session's new figures from the messages it replaces and the ones it writes alone."""

    version: int
    counts: list[Counts]
    turns: list[int]
    total: Counts
    title: str | None = None


def changes_since(
    state: Saved | None, messages: Sequence[Message], changed_from: int
) -> tuple[int, list[Message], list[int], list[Counts], Counts]:
    """What a save writes over ``state`` (None: nothing of the session is known here, all is written): (the
    first message written, those messages, their turn numbers and counts, the session's new counts).
    Messages before ``changed_from`` are as in ``state``."""
    n = len(messages)
    start = 0 if state is None else max(0, min(changed_from, len(state.counts), n))
    tail = list(messages[start:])
    turn = state.turns[start - 1] if state is not None and start > 0 else 0
    turns: list[int] = []
    counts: list[Counts] = []
    for m in tail:
        turn += m.starts_turn
        turns.append(max(turn, 1))
        counts.append(message_counts(m))
    before = NO_COUNTS if state is None else state.total.minus(total_of(state.counts[start:]))
    return start, tail, turns, counts, before.plus(total_of(counts))


def session_params(h: Header, total: Counts, rows: int, holds_nul: bool = True) -> dict[str, Any]:
    """The session row's columns for header ``h`` (its counts ``total`` over ``rows`` messages). With
    ``holds_nul=False`` text holding NUL keeps the whole header in ``extra`` (base64) and NUL-free columns."""
    extra = {**{k: getattr(h, k) for k in _IN_EXTRA if getattr(h, k) is not None}, **h.extra}
    header: dict[str, Any] = {}
    for name, kind in _COLUMNS.items():
        value = getattr(h, name)
        header[name] = dump(value) if kind == "json" and value is not None else value
    header["extra"] = dump(extra) if extra else None
    header["format_version"] = VERSION
    if not holds_nul and _has_nul(header):
        # a field a column cannot hold as it is: keep the whole header in extra, the columns cleaned
        whole = {"format": FORMAT, "version": VERSION, **h.to_json()}
        header["extra"] = dump({_B64: base64.b64encode(_bytes(whole)).decode()})
        for k in (*_SESSION_TEXT, *(n for n in JSON_FIELDS if n != "extra")):
            header[k] = _clean(header[k])
    header.update(zip(COUNT_COLUMNS, total, strict=True))
    header["turns"] = total.user_messages
    header["message_count"] = rows
    return header


def message_row(sid: str, idx: int, turn: int, message: Message, holds_nul: bool = True) -> tuple[Any, ...]:
    """The message row (``session_id`` then MESSAGE_COLUMNS) for message ``idx`` of session ``sid``: its
    snapshot form, its parts in ``parts`` when it has others than one text, and in ``content`` what search
    finds (``Message.searched_text``: the text, and tool calls and results)."""
    m = message.to_json()
    extra = {k: v for k, v in m.items() if k not in _MESSAGE_KEYS}
    texts: list[str | None] = []
    for k in MESSAGE_TEXT:
        v = m.get(k)
        if isinstance(v, str):
            texts.append(v)
        else:
            texts.append(None)
            if k in m:
                extra[k] = v
    jsons = [dump(m[k]) if k in m else None for k in MESSAGE_JSON]
    role, content = m.get("role"), message.searched_text
    if "content" in m and m["content"] != content:  # (a file's odd spelling, kept as it was)
        extra["content"] = m["content"]
    if not isinstance(role, str):
        raise SaveError(f"message {idx} of session {sid} has no text role and content; nothing was saved")
    extra_text = dump(extra) if extra else None
    if not holds_nul and _has_nul(m):  # (extra's values are m's)
        extra_text = dump({_B64: base64.b64encode(_bytes(m)).decode()})
        content, role = _clean(content), _clean(role)
        texts = [_clean(t) for t in texts]
        jsons = [_clean(j) for j in jsons]
    return (
        sid,
        idx,
        turn,
        role,
        _clean_surrogates(content),
        *[_clean_surrogates(t) for t in texts],
        *jsons,
        extra_text,
    )


MESSAGE_JSON_COLUMNS = frozenset({*MESSAGE_JSON, "extra"})  # message columns holding JSON


def unzipped(
    messages: Iterable[tuple[tuple[Any, ...], Searched]],
) -> tuple[list[tuple[Any, ...]], list[Searched]]:
    """Message rows each with what its full-text index is given (``Engine.load_messages``) as two lists:
    the rows, and what is given for each."""
    rows: list[tuple[Any, ...]] = []
    searched: list[Searched] = []
    for row, words in messages:
        rows.append(row)
        searched.append(words)
    return rows, searched


_MESSAGE_KEYS = frozenset({"role", "content", *MESSAGE_TEXT, *MESSAGE_JSON})


def reasoning_hits(rows: Sequence[Sequence[Any]]) -> list[tuple[float, tuple[Any, ...]]]:
    """Search rows of reasoning matches, (score, session_id, title, turn, idx, then MESSAGE_COLUMNS), as
    (score, (session_id, title, turn, "reasoning", idx, the message's reasoning)); a message that cannot be
    read gives an empty reasoning (its snippet is empty)."""
    out: list[tuple[float, tuple[Any, ...]]] = []
    for r in rows:
        try:
            reasoning = Message.from_json(message_from_row(r[5:])).reasoning
        except SnapshotError:
            reasoning = ""
        out.append((float(r[0]), (r[1], r[2], int(r[3]), REASONING, int(r[4]), reasoning)))
    return out


def session_from_row(sid: str, row: Sequence[Any]) -> dict[str, Any]:
    """The snapshot without its messages (a dict, not yet validated: ``Conversation.from_json`` does that)
    from the SESSION_FIELDS columns of a session row."""
    f = dict(zip(SESSION_FIELDS, row, strict=True))
    extra = load(f["extra"]) if f["extra"] is not None else {}
    if isinstance(extra, dict) and _B64 in extra:
        whole = orjson.loads(base64.b64decode(extra[_B64]))
        return whole if isinstance(whole, dict) else {}  # {} fails validation: reported as damaged
    snap: dict[str, Any] = {"format": FORMAT, "version": int(f["format_version"]), "id": sid}
    for name, kind in _COLUMNS.items():
        value = f[name]
        if value is None:
            continue
        if kind == "json":
            value = _in_order(load(value), header_key_order(name))
        elif kind == "int":
            value = int(value)
        snap[name] = value
    if isinstance(extra, dict):
        snap.update(extra)
    return snap


def _in_order(value: Any, keys: tuple[str, ...]) -> Any:
    """A JSON value with ``keys`` first (a dict), or each of its dicts so (a list)."""
    if not keys:
        return value
    if isinstance(value, list):
        return [ordered(v, keys) for v in value]
    return ordered(value, keys)


def message_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """The message (its snapshot form) from a row of MESSAGE_COLUMNS. (Run for each message of a session
    being loaded: kept to plain statements.)"""
    (
        _,
        _,
        role,
        content,
        created_at,
        status,
        finish_reason,
        model,
        error,
        dropped,
        usage,
        timings,
        parts,
        extra,
    ) = row
    if extra is not None:
        extra = load(extra)
        if isinstance(extra, dict) and _B64 in extra:
            whole = orjson.loads(base64.b64decode(extra[_B64]))
            return whole if isinstance(whole, dict) else {}  # {} fails validation: reported as damaged
    m: dict[str, Any] = {"role": role}
    if parts is not None:
        m["parts"] = load(parts)  # (content holds their text, for search and the catalog)
    else:
        m["content"] = content
    if created_at is not None:
        m["created_at"] = created_at
    if status is not None:
        m["status"] = status
    if finish_reason is not None:
        m["finish_reason"] = finish_reason
    if model is not None:
        m["model"] = model
    if error is not None:
        m["error"] = error
    if dropped is not None:
        m["dropped"] = dropped
    if usage is not None:
        m["usage"] = ordered(load(usage), _KEY_ORDER["usage"])
    if timings is not None:
        m["timings"] = ordered(load(timings), _KEY_ORDER["timings"])
    if isinstance(extra, dict):
        m.update(extra)
    return m


#: the key order chatcli writes in its JSON values; jsonb (and MySQL's JSON) keep keys in an order of their
#: own, so a record read back is put in this order again (keys chatcli does not know follow as they come)
_KEY_ORDER = {
    "usage": USAGE_KEYS,
    "timings": TIMINGS_KEYS,
}  # (the header's are in chatcli.model: header_key_order)


def ordered(value: Any, keys: Sequence[str]) -> Any:
    """``value`` (a dict) with ``keys`` first in that order, then its other keys; anything else as it is."""
    if not isinstance(value, dict):
        return value
    out = {k: value[k] for k in keys if k in value}
    if len(out) < len(value):
        out.update((k, v) for k, v in value.items() if k not in out)
    return out


def exact_text(text: str, extra: Any, key: str) -> str:
    """A record's exact ``key`` text: the column's ``text``, unless the row's ``extra`` keeps the whole record
    (the column then holds a cleaned copy, see ``session_params``)."""
    if extra is None:
        return text
    kept = load(extra)
    if isinstance(kept, dict) and _B64 in kept:
        whole = orjson.loads(base64.b64decode(kept[_B64]))
        if isinstance(whole, dict) and isinstance(whole.get(key), str):
            return str(whole[key])
    return text


def _bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(valid_unicode(value))


def dump(value: Any) -> str:
    """JSON text (orjson; text that is not valid Unicode repaired)."""
    return _bytes(value).decode()


def load(text: Any) -> Any:
    """A JSON column's value (text, or what a driver decoded itself)."""
    if type(text) is str:
        return orjson.loads(text)
    if isinstance(text, (dict, list)):  # a driver that decoded JSON itself
        return text
    return orjson.loads(text)


def _has_nul(value: Any) -> bool:
    """Whether a string in ``value`` (JSON-like) holds NUL or the text ``\\u0000`` (which a JSON column
    would read back as NUL): both show as ``\\u0000`` in its JSON."""
    return b"\\u0000" in orjson.dumps(value)


def _clean(text: Any) -> Any:
    """Text a column can hold: without NUL, as every view shows it (the exact text is kept in ``extra``)."""
    if isinstance(text, str):
        return _clean_surrogates(text.replace("\x00", "").replace("\\u0000", ""))
    return text


def _clean_surrogates(text: Any) -> Any:
    return valid_unicode(text) if isinstance(text, str) else text
