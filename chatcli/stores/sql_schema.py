"""The schema migrations of the SQL stores, named alike on every engine (MIGRATION_NAMES) and numbered: the
schema's version (how many migrations the database has), applying the missing ones under a lock, and
refusing a database newer than this chatcli (``SQLSchema``, handed its engine, whose migrations and lock
it uses)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from chatcli.clock import utc_now
from chatcli.errors import StoreError
from chatcli.stores.sql_errors import Fault

if TYPE_CHECKING:
    from chatcli.stores.sql_engine import Engine

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
    """The schema of ``engine``'s database (shown as ``display`` in messages): its version and migrations."""

    def __init__(self, engine: Engine, display: str) -> None:
        self.engine = engine
        self.display = display

    def version(self, conn: Any) -> int:
        """How many migrations the database on ``conn`` has (0: none yet)."""
        cur = conn.cursor()
        try:
            cur.execute("SELECT max(version) FROM chatcli_schema")
            row = cur.fetchone()
        except self.engine.errors.driver as e:
            if self.engine.errors.fault(e, conn) is Fault.LOST:
                raise
            rollback_quietly(cur)
            return 0
        return int(row[0] or 0)

    def migrate(self, conn: Any, upto: int | None = None) -> None:
        """Apply the migrations the database on ``conn`` lacks, each in its own transaction, under a lock
        that keeps two chatclis from migrating at once; refuse a database whose schema is newer than this
        chatcli knows (StoreError). ``upto`` stops at that version (tests build old databases with it)."""
        migrations = self.engine.migrations
        want = len(migrations) if upto is None else upto
        have = self.version(conn)
        if have > len(migrations):
            raise StoreError(
                f"the database {self.display} has chatcli schema version {have}, newer than this "
                f"chatcli knows ({len(migrations)}): upgrade chatcli"
            )
        if have >= want:
            return
        cur = conn.cursor()
        token = self.engine.locks.take_schema(cur)
        try:
            for version in range(self.version(conn), want):  # again, under the lock
                self._apply(cur, version)
        finally:
            self.engine.locks.release_schema(cur, token)

    def _apply(self, cur: Any, version: int) -> None:
        """Migration ``version`` (to ``version + 1``), recorded in the same transaction."""
        name, step = self.engine.migrations[version]
        p = self.engine.dialect.mark
        with transaction(cur, self.engine.dialect.begin_write):
            if callable(step):
                step(cur)
            else:
                for statement in step:
                    cur.execute(statement)
            cur.execute(
                f"INSERT INTO chatcli_schema (version, applied_at) VALUES ({p}, {p})",
                (version + 1, utc_now()),
            )
            if version + 1 >= NAMED_FROM:
                cur.execute(
                    f"INSERT INTO chatcli_migrations (name, applied_at) VALUES ({p}, {p})", (name, utc_now())
                )


@contextmanager
def transaction(cur: Any, begin: str) -> Iterator[Any]:
    """``begin`` (the statement that opens a transaction), then the block, then COMMIT; ROLLBACK when the
    block raises."""
    cur.execute(begin)
    try:
        yield cur
    except BaseException:
        rollback_quietly(cur)
        raise
    cur.execute("COMMIT")


def rollback_quietly(cur: Any) -> None:
    """ROLLBACK, whatever it finds (a connection already gone included)."""
    try:
        cur.execute("ROLLBACK")
    except Exception:
        pass


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
