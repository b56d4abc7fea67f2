"""The schema migrations of the SQL stores, named alike on every engine (MIGRATION_NAMES) and numbered: the
schema's version (how many migrations the database has), applying the missing ones under a lock, and
refusing a database newer than this chatcli. A mixin of
SQLStore (``sql.py``), whose engines give the migrations and the lock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from chatcli.clock import utc_now
from chatcli.errors import StoreError

#: the schema migrations in order, as every engine names them: "search words" re-indexes every message and
#: title with chatcli's own definition of a word (chatcli.search); "migration names" keeps these names in
#: ``chatcli_migrations`` (chatcli_schema keeps the number, which is what an older chatcli reads); "message
#: parts" gives messages made of more than text (chatcli.model) a column of their own
MIGRATION_NAMES = ("tables", "search", "search words", "migration names", "message parts")
NAMED_FROM = MIGRATION_NAMES.index("migration names") + 1  # the schema version that has chatcli_migrations


Step = Sequence[str] | Callable[[Any], None]  # a migration: statements, or a function of a cursor


def named(*steps: Step) -> tuple[tuple[str, Step], ...]:
    """An engine's migrations, one step per name of MIGRATION_NAMES, in that order (ValueError when an
    engine has too few or too many): the names are written here once, for every engine."""
    return tuple(zip(MIGRATION_NAMES, steps, strict=True))


def migration_names_step(name_type: str) -> Callable[[Any], None]:
    """Schema 4, "migration names": ``chatcli_migrations`` (``name`` of each migration applied, in the words of
    MIGRATION_NAMES, and ``applied_at``), with the names of those applied before it."""

    def step(cur: Any) -> None:
        now = utc_now()
        rows = ", ".join(f"('{name}', '{now}')" for name in MIGRATION_NAMES[: NAMED_FROM - 1])
        cur.execute(
            f"CREATE TABLE chatcli_migrations (name {name_type} PRIMARY KEY, applied_at {name_type} NOT NULL)"
        )
        cur.execute(f"INSERT INTO chatcli_migrations (name, applied_at) VALUES {rows}")

    return step


class SQLSchema:
    """Schema versions and migrations. Needs SQLStore's ``_x``, ``_tx``, driver hooks and settings."""

    display: str
    migrations: Sequence[tuple[str, Step]]
    begin_write: str

    def _x(self, cur: Any, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _tx(self, cur: Any, begin: str) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _is_lost(self, e: BaseException) -> bool:
        raise NotImplementedError

    def schema_version(self, cur: Any) -> int:
        """How many migrations the database has (0: none yet)."""
        try:
            row = self._x(cur, "SELECT max(version) FROM chatcli_schema").fetchone()
        except self._driver_errors() as e:
            if self._is_lost(e):
                raise
            self._rollback_quietly(cur)
            return 0
        return int(row[0] or 0)

    def _rollback_quietly(self, cur: Any) -> None:
        try:
            cur.execute("ROLLBACK")
        except Exception:
            pass

    def _migrate(self, conn: Any, upto: int | None = None) -> None:
        """Apply the migrations the database lacks, each in its own transaction, under a lock that keeps
        two chatclis from migrating at once; refuse a database whose schema is newer than this chatcli
        knows. ``upto`` stops at that version (tests build old databases with it)."""
        cur = conn.cursor()
        want = len(self.migrations) if upto is None else upto
        have = self.schema_version(cur)
        if have > len(self.migrations):
            raise StoreError(
                f"the database {self.display} has chatcli schema version {have}, newer than this "
                f"chatcli knows ({len(self.migrations)}): upgrade chatcli"
            )
        if have >= want:
            return
        token = self._lock_schema(cur)
        try:
            for version in range(self.schema_version(cur), want):  # again, under the lock
                _, step = self.migrations[version]
                with self._tx(cur, self.begin_write):
                    if callable(step):
                        step(cur)
                    else:
                        for statement in step:
                            self._x(cur, statement)
                    self._x(
                        cur,
                        "INSERT INTO chatcli_schema (version, applied_at) VALUES (%s, %s)",
                        (version + 1, utc_now()),
                    )
                    if version + 1 >= NAMED_FROM:
                        self._x(
                            cur,
                            "INSERT INTO chatcli_migrations (name, applied_at) VALUES (%s, %s)",
                            (self.migrations[version][0], utc_now()),
                        )
        finally:
            self._unlock_schema(cur, token)

    def _lock_schema(self, cur: Any) -> Any:
        """Take the lock that serialises migrations (waits up to ``timeout``); returns what unlocks it."""
        raise NotImplementedError

    def _unlock_schema(self, cur: Any, token: Any) -> None:
        raise NotImplementedError


def refill(
    cur: Any,
    select: str,
    update: str,
    form: Callable[[str], str],
    *,
    first: Any,
    exact: Callable[[Any, Any], str] | None = None,
    batch: int = 500,
) -> int:
    """Rewrite a computed column of every row, ``batch`` rows at a time: ``select`` gives (key, text, extra)
    of the rows whose key is above its one parameter, in key order, at most ``batch``; ``update`` takes
    (form(text), key). ``first`` is below every key. ``exact(text, extra)`` gives a row's exact text where
    a column may hold a cleaned copy of it (PostgreSQL and NUL). Returns how many rows it rewrote."""
    done, last = 0, first
    while True:
        cur.execute(select, (last,))
        rows = cur.fetchall()
        if rows:
            cur.executemany(update, [(form(exact(t, x) if exact else t), k) for k, t, x in rows])
            done += len(rows)
            last = rows[-1][0]
        if len(rows) < batch:
            return done
