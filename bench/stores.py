"""Database stores: SQLite, and a PostgreSQL 15 and a MariaDB server started for the run in the data folder
(``tests/dbservers.py``, on 127.0.0.1; MariaDB with a 1 GB buffer pool, PostgreSQL with its defaults).

Saving: ``ConversationSession.save()`` of a session of N messages (~500 characters) whose last message has
just changed (what each save of a streaming reply does), at 10, 1,000 and 10,000 messages. Floor: the same
transaction written by hand on the store's own connection: BEGIN, the session row's UPDATE, the one
message row's upsert, COMMIT. Target: a save at 10,000 messages costs at most 1.5× one at 10.
Resume: time to the REPL prompt resuming a 10,000-message session, in a pseudo-terminal (as ``startup.py``).
Migrate: ``chatcli migrate`` of the library folder (10,000 sessions of 100 messages, ``library.py``'s data)
into each engine, once; with its throughput.
List and search: ``chatcli list`` of those 10,000 sessions and ``chatcli search`` over their 1,000,000
messages, wall time of the command a user types, beside ``python -c pass``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import PYTHON, REPO, Report, Row, chatcli_cmd, child_env, interleaved, median, time_command
from datagen import PLANTED, Corpus, conversation, messages
from library import PER_SESSION, SEED, SESSIONS, ensure_library
from startup import PROMPT, _repl

GROUP = "Database stores"
SIZES = (10, 1_000, 10_000)
CHARS = 500
RESUME_ID = "20260101-000000-r10k"


def _servers(folder: Path) -> tuple[Any, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    import dbservers

    class BenchMariaDB(dbservers.MariaDBServer):
        def _options(self) -> list[str]:
            return [*super()._options(), "--innodb-buffer-pool-size=1G"]  # the last one given wins

    pg, maria = dbservers.PostgresServer(folder / "pg"), BenchMariaDB(folder / "mariadb")
    pg.start()
    maria.start()
    return pg, maria


def _open(spec: str) -> Any:
    from chatcli.stores import open_store, parse_store

    return open_store(parse_store(spec), timeout=60)


def _floor_save(store: Any, session: Any) -> float:
    """The least a save of one changed message costs on this engine: one hand-written transaction."""
    from chatcli.stores.sql_runner import x
    from chatcli.stores.sql_schema import transaction

    sid = session.id
    last = len(session.messages) - 1
    message = session.messages[last]
    rows, searched = store.message_rows(
        sid, last, [message], [last // 2 + 1]
    )  # its row and its index's words
    d = store.dialect

    def save(cur: Any) -> float:
        t0 = time.perf_counter()
        with transaction(cur, d.begin_write):
            x(
                cur,
                f"UPDATE chatcli_sessions SET {d.q('updated_at')} = {d.mark} WHERE id = {d.mark}",
                ("2027-01-01T00:00:00.000Z", sid),
            )
            store.engine.write_messages(cur, rows, searched)
        return time.perf_counter() - t0

    # (through the store's runner: its lock keeper uses the same connection from a thread of its own)
    return float(store.runner.run("saved (the floor)", save))


def _chatcli_save(session: Any) -> float:
    session.messages[-1].content += "."  # the reply grew since the last checkpoint
    t0 = time.perf_counter()
    session.save(checkpoint=True)
    return time.perf_counter() - t0


def bench_saves(report: Report, engine: str, spec: str, quick: bool) -> None:
    from chatcli.session import ConversationSession

    store = _open(spec)
    corpus = Corpus(seed=3)
    costs: dict[int, float] = {}
    for n in SIZES:
        sid = f"20260101-000000-s{n}"
        conv = conversation(sid, messages(corpus, n, CHARS), "save bench")  # (untimed: dict -> Conversation)
        # The lock first, then create (as `chatcli import` does): on a SQLite store whose file is not made
        # yet, a create before any other call lands in the in-memory stand-in and is lost (chatcli bug).
        lock = store.lock(sid)
        store.create(conv)
        session = ConversationSession(store, store.load(sid), None, None)
        session.messages[-1].status = "streaming"
        session._touch(n - 1)
        session.save()
        runs = (5 if quick else 9) if n >= 10_000 else (10 if quick else 25)
        ours, floor = interleaved(
            runs, lambda s=session: _chatcli_save(s), lambda s=session: _floor_save(store, s)
        )
        m, f = median(ours), median(floor)
        costs[n] = m
        last = n == SIZES[-1]
        ratio = m / costs[SIZES[0]]
        report.add(
            Row(
                GROUP,
                f"{engine}: save, {n:,} messages",
                m * 1000,
                "ms",
                f * 1000,
                target="≤ 1.5× at 10" if last else "",
                ok=ratio <= 1.5 if last else None,
                note=f"{m / f:.2f}× floor" + (f"; {ratio:.2f}× the save at 10" if n > SIZES[0] else ""),
                runs=runs,
            )
        )
        lock.release()
    resume = conversation(RESUME_ID, messages(Corpus(seed=5), 10_000, CHARS), "ten thousand messages")
    lock = store.lock(RESUME_ID)
    store.create(resume)
    lock.release()
    store.close()


def bench_resume(report: Report, engine: str, spec: str, env: dict[str, str], quick: bool) -> None:
    args = ["resume", RESUME_ID, "--store", spec]
    _repl(args, env)
    runs = 5 if quick else 9
    floor, resumed = interleaved(
        runs, lambda: time_command([PYTHON, "-c", "pass"], env), lambda: _repl(args, env)
    )
    t = median([r[0] for r in resumed])
    report.add(
        Row(
            GROUP,
            f"{engine}: time to prompt, resume 10,000 messages",
            t * 1000,
            "ms",
            median(floor) * 1000,
            "≤ 500 ms",
            t <= 0.500,
            runs=runs,
        )
    )


def bench_library(
    report: Report, engine: str, spec: str, library: Path, env: dict[str, str], quick: bool
) -> None:
    cli = chatcli_cmd()
    t0 = time.perf_counter()
    time_command([*cli, "migrate", "--from", str(library), "--to", spec], env)
    took = time.perf_counter() - t0
    msgs = SESSIONS * PER_SESSION
    report.add(
        Row(
            GROUP,
            f"{engine}: chatcli migrate of {SESSIONS:,} sessions (from the folder)",
            took * 1000,
            "ms",
            runs=1,
            note=f"{SESSIONS / took:,.0f} sessions/s, {msgs / took:,.0f} messages/s",
        )
    )
    runs = 5 if quick else 9
    argv = [*cli, "list", "--store", spec]
    time_command(argv, env)
    floor, listed = interleaved(
        runs, lambda: time_command([PYTHON, "-c", "pass"], env), lambda: time_command(argv, env)
    )
    t = median(listed)
    report.add(
        Row(
            GROUP,
            f"{engine}: chatcli list ({SESSIONS:,} sessions, newest 50 shown)",
            t * 1000,
            "ms",
            median(floor) * 1000,
            "≤ 300 ms",
            t <= 0.300,
            runs=runs,
        )
    )
    words = Corpus(SEED).words
    rare, planted = min(PLANTED, key=PLANTED.__getitem__), max(PLANTED, key=PLANTED.__getitem__)
    for query, what in (
        (planted, f"a word in {PLANTED[planted]:.0%} of messages"),
        (rare, f"a word in {PLANTED[rare]:.2%} of messages"),
        (words[0], "the most common word"),
        (f"{words[3]} {planted}", "two words"),
    ):
        argv = [*cli, "search", *query.split(), "--store", spec]
        time_command(argv, env)
        floor, found = interleaved(
            runs, lambda: time_command([PYTHON, "-c", "pass"], env), lambda argv=argv: time_command(argv, env)
        )
        t = median(found)
        report.add(
            Row(
                GROUP,
                f"{engine}: chatcli search {query} ({what}, {msgs:,} messages)",
                t * 1000,
                "ms",
                median(floor) * 1000,
                "≤ 1 s",
                t <= 1.0,
                runs=runs,
            )
        )


def run(report: Report, folder: Path, quick: bool = False) -> None:
    root = folder / "stores"
    shutil.rmtree(root, ignore_errors=True)  # every run starts from empty databases (the library is kept)
    root.mkdir(parents=True)
    env = child_env(root, NO_COLOR="1", PROMPT_TOOLKIT_NO_CPR="1")
    library = folder / "library" / "sessions"
    took, _ = ensure_library(library)
    print(
        f"  library folder {f'generated in {took:.0f} s' if took is not None else 'reused'}",
        flush=True,
    )
    (root / "sqlite").mkdir(mode=0o700)  # chatcli makes a SQLite store's file, never its folder
    pg, maria = _servers(root)
    try:
        engines = {
            "sqlite": f"sqlite:///{root / 'sqlite' / 'chats.db'}",
            "postgresql": pg.new_database(),
            "mysql": maria.new_database(),
        }
        libraries = {
            "sqlite": f"sqlite:///{root / 'sqlite' / 'library.db'}",
            "postgresql": pg.new_database(),
            "mysql": maria.new_database(),
        }
        for engine, spec in engines.items():
            bench_saves(report, engine, spec, quick)
            bench_resume(report, engine, spec, env, quick)
        for engine, spec in libraries.items():
            bench_library(report, engine, spec, library, env, quick)
    finally:
        pg.close()
        maria.close()


__all__ = ["PROMPT", "run"]
