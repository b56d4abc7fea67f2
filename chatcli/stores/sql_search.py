"""Search in the SQL stores: one skeleton for messages, titles and reasoning, each engine giving only how
its full-text index finds words (a ``FullText`` strategy, whose ``match`` is a ``Match``).

Every search ranks the ``window`` most recent matches (``chatcli.search.SEARCH_WINDOW``: for rarer words,
every match) of the live sessions and returns the best ``limit`` of messages, titles and (``--reasoning``)
the assistant's reasoning together, as ``(session_id, title, turn, role, idx, text)`` rows. A strategy's
``messages`` runs ``ranked_messages`` with its match, unless it knows a better way for some words (MySQL:
words found in much of a big store are looked for newest first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from chatcli.search import tie_break
from chatcli.stores.sql_dialect import Dialect
from chatcli.stores.sql_rows import MESSAGE_COLUMNS, MESSAGE_JSON_COLUMNS, reasoning_hits

#: a search row with its score: (score, (session_id, title, turn, role, idx, text))
Scored = tuple[float, tuple[Any, ...]]
#: what is searched: message text, session titles, the messages' reasoning
MESSAGES, TITLES, REASONING = "messages", "titles", "reasoning"


class Match(NamedTuple):
    """How an engine's index finds the words of a search in one target: ``source``, the FROM clause of the
    matching rows (message rows are ``m``, session rows ``s``, unless the source is an index apart), with
    ``condition``, the WHERE that finds them, and ``score``, a match's score; ``args``, the parameters of
    score, source and condition in that order. ``mid``: what selects a message's id as ``mid`` in
    ``source``; ``at``: how source names a message's columns (``m.`` or, in an index apart, ""); ``rows``:
    whether source is the message rows themselves (else an index apart, whose matches are joined to their
    rows by id)."""

    source: str
    condition: str
    score: str
    args: Sequence[Any] = ()
    mid: str = "m.mid"
    at: str = "m."
    rows: bool = True


class Query(NamedTuple):
    """One search of messages: its ``words`` (``chatcli.search.search_words``), the ``role`` and
    ``session_id`` it keeps to (None: any), the ``window`` of most recent matches ranked and the ``limit``
    of rows returned."""

    words: list[str]
    role: str | None
    session_id: str | None
    window: int
    limit: int


class FullText(Protocol):
    """An engine's full-text strategy: what its index is given and how it finds words."""

    #: the order of better scores: "DESC" (higher is better) or "ASC" (lower: FTS5's bm25)
    best: str
    #: the message columns holding what the index is given for a message's text, and for its reasoning
    message_columns: tuple[str, str]
    #: the session column holding what the index is given for the title
    title_column: str
    #: appended to the placeholder of those columns' values (PostgreSQL's "::tsvector")
    cast: str

    def indexed(self, text: str) -> str:
        """What the index is given for ``text`` (its words, see ``chatcli.search``)."""
        ...

    def match(self, target: str, words: list[str]) -> Match:
        """How ``words`` are found in ``target`` (MESSAGES, TITLES or REASONING)."""
        ...

    def messages(self, cur: Any, dialect: Dialect, query: Query) -> list[Scored]:
        """The best messages for ``query``, best first: ``ranked_messages`` with this strategy's match, or
        the engine's better way for some words."""
        ...


def search_rows(
    cur: Any,
    dialect: Dialect,
    fulltext: FullText,
    query: Query,
    *,
    titles: bool,
    reasoning: bool,
) -> list[tuple[Any, ...]]:
    """(session_id, title, turn, role, idx, text) of the best ``query.limit`` matches, best first: messages
    (unless ``query.role`` is "title"), with ``titles``, session titles, with ``reasoning``, the assistant's
    reasoning (role "reasoning")."""
    found: list[Scored] = []
    if query.role != "title":
        found += fulltext.messages(cur, dialect, query)
    if titles:
        found += ranked_titles(cur, dialect, fulltext.match(TITLES, query.words), query, fulltext.best)
    if reasoning:
        found += ranked_reasoning(cur, dialect, fulltext.match(REASONING, query.words), query, fulltext.best)
    sign = -1.0 if fulltext.best == "DESC" else 1.0
    found.sort(key=lambda sr: (sign * sr[0], tie_break(sr[1][0], sr[1][4])))
    return [r for _, r in found[: query.limit]]


def ranked_messages(
    cur: Any,
    dialect: Dialect,
    match: Match,
    query: Query,
    best: str,
    more: Sequence[tuple[str, Any]] = (),
) -> list[Scored]:
    """The best ``query.limit`` of the ``query.window`` most recent messages ``match`` finds (of the role and
    session asked for, and meeting the conditions of ``more``: (SQL, its parameter)) in live sessions, best
    first."""
    p = dialect.mark
    where, args = _where(dialect, match, [("role", query.role), ("session_id", query.session_id)], more)
    if match.rows:  # the matches carry their rows
        sql = (
            f"SELECT h.score, h.session_id, s.title, h.turn, h.role, h.idx, h.content FROM (SELECT m.session_id, "
            f"m.turn, m.role, m.idx, m.content, {match.score} AS score FROM {match.source} WHERE {where} "
            f"ORDER BY m.mid DESC LIMIT {p}) h JOIN chatcli_sessions s ON s.id = h.session_id WHERE "
            f"s.deleted_at IS NULL ORDER BY h.score {best}, h.session_id DESC, h.idx LIMIT {p}"
        )
    else:  # the matches are ids in an index apart: their rows are joined to them
        sql = (
            f"SELECT h.score, m.session_id, s.title, m.turn, m.role, m.idx, m.content FROM (SELECT {match.mid}, "
            f"{match.score} AS score FROM {match.source} WHERE {where} ORDER BY mid DESC LIMIT {p}) h JOIN "
            f"chatcli_messages m ON m.mid = h.mid JOIN chatcli_sessions s ON s.id = m.session_id WHERE "
            f"s.deleted_at IS NULL ORDER BY h.score {best}, m.session_id DESC, m.idx LIMIT {p}"
        )
    cur.execute(sql, [*args, query.window, query.limit])
    return [(float(r[0]), tuple(r[1:])) for r in cur.fetchall()]


def ranked_titles(cur: Any, dialect: Dialect, match: Match, query: Query, best: str) -> list[Scored]:
    """The best ``query.limit`` live sessions whose title ``match`` finds (the session asked for, if any),
    best first, as search rows (turn 0, role "title", idx -1, the title)."""
    sql = (
        f"SELECT {match.score}, s.id, s.title, 0, 'title', -1, s.title FROM {match.source} WHERE "
        f"{match.condition} AND s.deleted_at IS NULL"
    )
    args = list(match.args)
    if query.session_id:
        sql += f" AND s.id = {dialect.mark}"
        args.append(query.session_id)
    cur.execute(sql + f" ORDER BY 1 {best}, s.id DESC LIMIT {dialect.mark}", [*args, query.limit])
    return [(float(r[0]), tuple(r[1:])) for r in cur.fetchall()]


def ranked_reasoning(cur: Any, dialect: Dialect, match: Match, query: Query, best: str) -> list[Scored]:
    """``search --reasoning``'s rows (``sql_rows.reasoning_hits``): the best ``query.limit`` of the
    ``query.window`` most recent messages whose reasoning ``match`` finds (of the session asked for), in
    live sessions."""
    p = dialect.mark
    where, args = _where(dialect, match, [("session_id", query.session_id)])
    sql = (
        f"SELECT h.score, m.session_id, s.title, m.turn, m.idx, {message_columns(dialect, 'm.')} FROM (SELECT "
        f"{match.mid}, {match.score} AS score FROM {match.source} WHERE {where} ORDER BY mid DESC LIMIT {p}) h "
        f"JOIN chatcli_messages m ON m.mid = h.mid JOIN chatcli_sessions s ON s.id = m.session_id WHERE "
        f"s.deleted_at IS NULL ORDER BY h.score {best}, m.session_id DESC, m.idx LIMIT {p}"
    )
    cur.execute(sql, [*args, query.window, query.limit])
    return reasoning_hits(cur.fetchall())


def message_columns(dialect: Dialect, at: str = "") -> str:
    """MESSAGE_COLUMNS as a SELECT lists them (``at``: their table's alias and a dot), JSON columns as
    text."""
    return ", ".join(at + dialect.text(c, json=c in MESSAGE_JSON_COLUMNS) for c in MESSAGE_COLUMNS)


def _where(
    dialect: Dialect,
    match: Match,
    equal: Sequence[tuple[str, Any]],
    more: Sequence[tuple[str, Any]] = (),
) -> tuple[str, list[Any]]:
    """The WHERE of ``match``: its condition, each (column, value) of ``equal`` whose value is given, then
    the conditions of ``more`` (SQL, its parameter); and the parameters of ``match`` and of those."""
    conditions, args = [match.condition], list(match.args)
    for column, value in equal:
        if value:
            conditions.append(f"{match.at}{column} = {dialect.mark}")
            args.append(value)
    for condition, value in more:
        conditions.append(condition)
        args.append(value)
    return " AND ".join(conditions), args


__all__ = [
    "MESSAGES",
    "REASONING",
    "TITLES",
    "FullText",
    "Match",
    "Query",
    "Scored",
    "message_columns",
    "ranked_messages",
    "ranked_reasoning",
    "ranked_titles",
    "search_rows",
]
