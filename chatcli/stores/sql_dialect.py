"""How one SQL engine spells the statements the SQL stores share: ``Dialect``, a value per engine.

The shared code (``sql.py``, ``sql_write.py``, ``sql_catalog.py``, ``sql_search.py``, ``sql_schema.py``)
writes every statement from these spellings, so an engine is described by values rather than by methods
it overrides. The rest of what an engine gives (its driver and error table, its session lock, its
full-text strategy, its migrations) is in ``sql_engine.Engine``. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Dialect(NamedTuple):
    """An engine's spellings.

    ``mark``: the driver's parameter placeholder (``%s`` for psycopg and PyMySQL, ``?`` for sqlite3);
    ``quote``: what encloses a column name (MySQL's backtick: ``system`` and ``usage`` are reserved words
    there; "" for none); ``json_cast``: appended to the placeholder of a JSON value (PostgreSQL's
    ``::jsonb``), ``json_text``: to a JSON column read back as text (``::text``); ``on_duplicate_key``:
    the upsert is MySQL's ``ON DUPLICATE KEY UPDATE`` (else ``ON CONFLICT ... DO UPDATE``);
    ``for_update``: what locks a row read in a write transaction (" FOR UPDATE"; "" where a write
    transaction locks the whole database, as SQLite's); ``begin_write``, ``begin_read``: the statements that
    open a write and a read transaction (a read sees one snapshot of the database); ``holds_nul``: whether
    a text column can hold NUL (PostgreSQL's cannot: such a record is kept whole in ``extra``, see
    ``sql_rows``); ``exact``: appended to a comparison that must be exact, case and accents counting
    (MySQL compares with its collation otherwise); ``contains``: SQL true when ``{column}`` lower-cased
    holds the (lower-case) parameter ``{mark}``."""

    mark: str = "%s"
    quote: str = ""
    json_cast: str = ""
    json_text: str = ""
    on_duplicate_key: bool = False
    for_update: str = ""
    begin_write: str = "BEGIN"
    begin_read: str = "BEGIN"
    holds_nul: bool = True
    exact: str = ""
    contains: str = "strpos(lower({column}), {mark}) > 0"

    def q(self, column: str) -> str:
        """A column name as a statement writes it."""
        return f"{self.quote}{column}{self.quote}"

    def value(self, json: bool = False) -> str:
        """The placeholder of a value (of a JSON column, when ``json``)."""
        return self.mark + self.json_cast if json else self.mark

    def text(self, column: str, json: bool = False) -> str:
        """A column as a SELECT lists it (a JSON column as text, when ``json``)."""
        return self.q(column) + self.json_text if json else self.q(column)

    def upsert(self, key: Sequence[str], columns: Sequence[str]) -> str:
        """The clause that makes an INSERT replace ``columns`` of the row already holding its ``key``."""
        if self.on_duplicate_key:
            return "ON DUPLICATE KEY UPDATE " + ", ".join(
                f"{self.q(c)} = VALUES({self.q(c)})" for c in columns
            )
        updates = ", ".join(f"{self.q(c)} = excluded.{self.q(c)}" for c in columns)
        return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"

    def if_absent(self, key: str) -> str:
        """The clause that makes an INSERT leave a row already holding its ``key`` alone (and count no row
        written: MySQL counts 0 for an update that changes nothing)."""
        if self.on_duplicate_key:
            return f" ON DUPLICATE KEY UPDATE {key} = {key}"
        return f" ON CONFLICT ({key}) DO NOTHING"

    def holds(self, column: str) -> str:
        """SQL true when ``column`` lower-cased holds the (lower-case) parameter."""
        return self.contains.format(column=column, mark=self.mark)

    def equals(self, column: str) -> str:
        """SQL true when ``column`` is exactly the parameter (case and accents count)."""
        return f"{column} = {self.mark}{self.exact}"


__all__ = ["Dialect"]
