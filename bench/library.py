"""Listing and searching 10,000 sessions of 100 messages each (1,000,000 messages).

Each case is the wall time of the CLI command a user types (``chatcli list``, ``chatcli search WORDS``),
run as a subprocess with its output discarded, beside ``python -c pass``. The first ``chatcli list``
builds the index (``<sessions>/.index.sqlite``) from the snapshots: that cold time is shown on its own;
the rest run with the index warm. "After one session changed" rewrites one snapshot (one message more)
before each ``list``, as a chat turn does, so the index has to catch up first.

Messages are ~200 characters (made-up words, Zipf-distributed): long enough to give the full-text index
real work, short enough that writing 1,000,000 of them and indexing them takes well under a minute here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson

from chatcli.model import VERSION

from common import PYTHON, Report, Row, chatcli_cmd, child_env, interleaved, median, time_command
from datagen import PLANTED, Corpus, make_library, session_id

SESSIONS = 10_000
PER_SESSION = 100
CHARS = 200
SEED = 11
GROUP = "Library"


def ensure_library(sessions: Path) -> tuple[float | None, int]:
    """Generate the sessions unless ``sessions`` already holds this exact set, in the current snapshot
    format version (a folder of older snapshots, from a ``--data DIR`` kept, is made again).
    Returns (seconds taken, or None when reused; bytes of snapshots)."""
    marker = sessions.parent / "library.json"
    params = {
        "sessions": SESSIONS,
        "per_session": PER_SESSION,
        "chars": CHARS,
        "seed": SEED,
        "version": VERSION,
    }
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return None, json.loads(marker.read_text())["bytes"]
    t0 = time.perf_counter()
    size = make_library(sessions, SESSIONS, PER_SESSION, CHARS, SEED)
    took = time.perf_counter() - t0
    marker.write_text(json.dumps({"params": params, "bytes": size}))
    return took, size


def _touch_one(sessions: Path, counter: list[int]) -> None:
    """Rewrite one snapshot with one message more (a different session each time), as a turn would."""
    counter[0] += 1
    path = sessions / f"{session_id((counter[0] * 7919) % SESSIONS)}.json"
    snap = orjson.loads(path.read_bytes())
    snap["messages"].append(
        {
            "role": "user",
            "content": f"one more message, number {counter[0]}",
            "created_at": "2027-01-01T00:00:00.000Z",
            "status": "ok",
        }
    )
    snap["updated_at"] = "2027-01-01T00:00:00.000Z"
    path.write_bytes(orjson.dumps(snap, option=orjson.OPT_INDENT_2))


def run(report: Report, folder: Path, quick: bool = False) -> None:
    root = folder / "library"
    sessions = root / "sessions"
    env = child_env(root, NO_COLOR="1")
    cli = chatcli_cmd()
    took, size = ensure_library(sessions)
    gen = f"generated in {took:.0f} s" if took is not None else "reused"
    print(
        f"  {SESSIONS:,} sessions × {PER_SESSION} messages of ~{CHARS} characters: "
        f"{size / 1e6:,.0f} MB ({gen})",
        flush=True,
    )

    for suffix in ("", "-wal", "-shm"):  # the cold case starts without an index
        (sessions / f".index.sqlite{suffix}").unlink(missing_ok=True)
    cold = time_command([*cli, "list"], env)
    index_mb = sum(p.stat().st_size for p in sessions.glob(".index.sqlite*")) / 1e6
    report.add(
        Row(
            GROUP,
            f"chatcli list, cold (builds the index of {SESSIONS * PER_SESSION:,} messages)",
            cold * 1000,
            "ms",
            runs=1,
            note=f"{size / 1e6:,.0f} MB of snapshots → {index_mb:,.0f} MB index",
        )
    )

    runs = 5 if quick else 9
    time_command([*cli, "list"], env)
    floor, warm, warm_all = interleaved(
        runs,
        lambda: time_command([PYTHON, "-c", "pass"], env),
        lambda: time_command([*cli, "list"], env),
        lambda: time_command([*cli, "list", "--all", "--json"], env),
    )
    f = median(floor)
    w = median(warm)
    report.add(
        Row(
            GROUP,
            f"chatcli list ({SESSIONS:,} sessions, newest 50 shown)",
            w * 1000,
            "ms",
            f * 1000,
            "≤ 300 ms",
            w <= 0.300,
            runs=runs,
        )
    )
    report.add(
        Row(
            GROUP,
            f"chatcli list --all --json (all {SESSIONS:,})",
            median(warm_all) * 1000,
            "ms",
            f * 1000,
            runs=runs,
        )
    )

    counter = [0]

    def changed() -> float:
        _touch_one(sessions, counter)
        return time_command([*cli, "list"], env)

    after = median([changed() for _ in range(runs)])
    report.add(
        Row(
            GROUP,
            "chatcli list after one session changed",
            after * 1000,
            "ms",
            f * 1000,
            "≤ 300 ms",
            after <= 0.300,
            runs=runs,
            note="one snapshot re-indexed first",
        )
    )

    words = Corpus(SEED).words
    rare, planted = min(PLANTED, key=PLANTED.__getitem__), max(PLANTED, key=PLANTED.__getitem__)
    queries = [
        (planted, f"a word in {PLANTED[planted]:.0%} of messages"),
        (rare, f"a word in {PLANTED[rare]:.2%} of messages"),
        (words[0], "the most common word: in most messages"),
        (f"{words[3]} {planted}", "two words"),
    ]
    for query, what in queries:
        argv = [*cli, "search", *query.split()]
        time_command(argv, env)
        f_runs, s_runs = interleaved(
            runs, lambda: time_command([PYTHON, "-c", "pass"], env), lambda argv=argv: time_command(argv, env)
        )
        s = median(s_runs)
        report.add(
            Row(
                GROUP,
                f"chatcli search {query} ({what})",
                s * 1000,
                "ms",
                median(f_runs) * 1000,
                "≤ 1 s",
                s <= 1.0,
                runs=runs,
            )
        )
