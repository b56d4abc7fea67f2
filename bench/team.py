"""A team on one database (tests/teamload.py): 64 chatcli REPLs from 8 homes start at once on one
PostgreSQL and on one MariaDB (servers of their own, started here as tests/dbservers.py does), and 8 on one
SQLite file, each streaming replies at 40 tokens/s and saving at every checkpoint while two readers run
``list``, ``search``, ``stats`` and ``show`` in a loop. Reported: saves per second, save latency measured
inside chatcli (p50 / p99 / max), readers' median loaded against unloaded and their own CPU time,
connections used. Targets: 0 lost and 0 errors (the rows' verdict), readers' median at most 3x unloaded.

Each team runs twice. The writers stand for other machines; on this one they share the cores with the
database and the readers, and 64 REPLs' CPU at the readers' priority decides a reader's time (it waits for a
core, not for the database). So on the servers the readers' target is held with the writers at nice 19
("writers as other machines": they take only the CPU the rest leaves), and the run with every process at one
priority ("one machine") is reported beside it, without a target. SQLite's writers share one machine by
nature (file locks), and a writer at nice 19 holding the file's write lock stalls the others: its team runs
on one machine only, the target held there. ``--quick``: 16 writers."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from common import REPO, Report, Row, child_env

GROUP = "Team on one database"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


#: the two runs of each team: the writers' niceness, and how the rows name it
RUNS = ((19, "writers as other machines (nice 19)"), (0, "one machine"))


def _one(
    report: Report,
    engine: str,
    spec: str,
    root: Path,
    processes: int,
    turns: int,
    counter: object,
    nice: int,
    held: bool,
) -> None:
    """One team of ``processes`` writers at niceness ``nice`` on ``spec``; ``held``: the readers' target is
    held in this run (else their times are reported only)."""
    from teamload import run_team

    env = child_env(root / engine, NO_COLOR="1")
    result = run_team(
        spec,
        engine,
        root / engine / f"team-nice{nice}",
        env,
        processes=processes,
        homes=max(1, processes // 8),
        turns=turns,
        connections=counter,  # type: ignore[arg-type]
        writer_nice=nice,
    )
    who = f"{engine}, {processes} writers, {dict(RUNS)[nice]}"
    clean = not result.problems and result.failed_saves == 0
    note = "; ".join(result.problems[:2])
    report.add(Row(GROUP, f"{who}: saves per second", len(result.saves) / result.seconds, "saves/s", runs=1))
    report.add(Row(GROUP, f"{who}: save p50 (inside chatcli)", result.percentile(50), "ms", runs=1))
    report.add(Row(GROUP, f"{who}: save p99", result.percentile(99), "ms", runs=1))
    report.add(
        Row(
            GROUP,
            f"{who}: save max",
            max(result.saves, default=0.0),
            "ms",
            None,
            "0 lost, 0 errors",
            clean,
            note,
            runs=1,
        )
    )
    for command, (unloaded, loaded) in result.reader_medians().items():
        report.add(
            Row(
                GROUP,
                f"{who}: reader `{command}` median, loaded",
                0.0 if loaded is None else loaded,
                "ms",
                unloaded,
                "≤ 3 × unloaded" if held else "",
                None if loaded is None or not held else loaded <= 3 * unloaded,
                "not run while loaded: the writers were done first" if loaded is None else "",
                runs=len(result.loaded.get(command, [])),
            )
        )
    report.add(
        Row(GROUP, f"{who}: a reader's own CPU, unloaded", _median(result.reader_cpu_unloaded), "ms", runs=1)
    )
    report.add(
        Row(GROUP, f"{who}: a reader's own CPU, loaded", _median(result.reader_cpu_loaded), "ms", runs=1)
    )
    if result.connections is not None:
        report.add(Row(GROUP, f"{who}: connections at most", result.connections, "conns", runs=1))


def run(report: Report, folder: Path, quick: bool = False) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import dbservers
    from teamload import mysql_connections, pg_connections

    root = folder / "team"
    root.mkdir(parents=True, exist_ok=True)
    processes, turns = (16, 3) if quick else (64, 5)
    pg, maria = dbservers.PostgresServer(root / "pg"), dbservers.MariaDBServer(root / "mariadb")
    pg.start()
    maria.start()
    try:
        (root / "sqlite").mkdir(exist_ok=True, mode=0o700)
        for nice, _ in RUNS:
            held = nice == RUNS[0][0]
            pg_spec, my_spec = pg.new_database(), maria.new_database()
            _one(report, "postgresql", pg_spec, root, processes, turns, pg_connections(pg_spec), nice, held)
            _one(report, "mysql", my_spec, root, processes, turns, mysql_connections(my_spec), nice, held)
        sqlite = f"sqlite:///{root / 'sqlite' / 'chats.db'}"
        _one(report, "sqlite", sqlite, root, 8, turns, None, 0, True)
    finally:
        pg.close()
        maria.close()
