"""A team on one database (tests/teamload.py): CHATCLI_TORTURE_TEAM chatcli REPLs from a home per 8 of them
(separate state folders, as machines have) start at once on one PostgreSQL and on one MariaDB, each
streaming replies at 40 tokens/s and saving at every checkpoint, while readers run ``list``, ``search``,
``stats`` and ``show`` in a loop; and 8 on one SQLite file. Nothing lost or doubled (every session holds its
turns once each, in order), no writer says an error, every save succeeds; the figures (saves/s, save
latency measured inside chatcli, reader latency loaded and unloaded, connections) go to the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engines import DATABASES
from teamload import mysql_connections, pg_connections, run_team
from torturelib import LONG, figure, size

CASE = "team on one database"
TEAM = size("TEAM", 64 if LONG else 16)


@pytest.mark.parametrize("engine", DATABASES)
def test_a_team_on_one_database_loses_nothing(
    engine: str, store_for: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    spec = store_for(engine)
    processes = TEAM if engine != "sqlite" else 8
    counter = {"postgresql": pg_connections, "mysql": mysql_connections}.get(engine)
    report = run_team(
        spec,
        engine,
        tmp_path / "team",
        child_env,
        processes=processes,
        homes=max(1, processes // 8),
        turns=5 if LONG else 3,
        readers=2,
        connections=counter(spec) if counter else None,
    )
    for key, value in report.summary().items():
        figure(f"{CASE} ({engine})", key, value)
    assert report.problems == [], report.problems[:5]
    assert report.failed_saves == 0
    assert len(report.saves) >= processes * report.turns  # every turn saved at least once, inside chatcli
