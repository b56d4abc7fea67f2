"""chatcli's benchmarks: ``make bench`` (or ``python bench/run.py``) runs them all, prints a table and
writes docs/BENCHMARKS.md.

Every case is the median of several runs, beside its floor measured in the same run, alternating with
it. Nothing here is a test: timings are never asserted, a MISS only says a target is not met.

Options: ``--quick`` (fewer runs), ``--only startup,saving,streaming,library``, ``--data DIR`` (keep the
generated sessions there and reuse them next time; by default a temp folder, removed at the end),
``--no-write`` (print only), ``--save-baseline FILE`` (store this run's medians as the "before" numbers).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REPO, Report, Row, fmt, format_row, machine  # noqa: E402 - after the path is set

GROUPS = ("startup", "saving", "streaming", "library", "stores", "oneshot", "context", "tools", "team")
NOTES = """\
- **Where start-up goes.** Of the time to the prompt, Python itself is the floor (~20 ms); then come the
  imports (table above): prompt_toolkit, typer and rich. chatcli's own modules load lazily: `--version`
  answers before Typer parses anything, rich and prompt_toolkit load only when used.
- **typer is held below 0.29** (pyproject.toml): 0.29 converts every option through a pydantic
  TypeAdapter, so every command but `--help` imports pydantic and builds validators. Measured on
  2026-11-26 with `python bench/run.py --only startup --no-write`, run with typer 0.29.2 and then 0.28.0
  on the same (that day slower) machine, floor ~55 ms both times: time to prompt for `new` 700 → 497 ms,
  resuming 10,000 messages 1,010 → 696 ms, resident size at an idle prompt 46.1 → 36.0 MB.
- **Resume** shows the last 20 turns (`history` shows them all); the whole conversation is still loaded
  and sent as context.
- **Search** ranks the 5,000 most recent matches of a query; for rarer words that is every match.
- **Database stores.** Each save is one committed transaction, so it costs a commit's fsync (a fraction of
  a millisecond on this disk) whatever the session's length; the hand-written floor transaction is within
  that noise of chatcli's own save (sometimes above it). The stores' time to prompt includes the driver's
  import (psycopg ~60 ms, PyMySQL ~25 ms) and the connection. On MariaDB a word found in most messages is
  searched newest first with REGEXP instead of FULLTEXT (InnoDB reads every FULLTEXT match: 5.2 s for that
  word before, 0.6 s now).
- **One-shot.** `llm` (simonw/llm) is pip-installed into its own venv in the data folder (`llm-venv`),
  never into chatcli's; a temporary data folder installs it again each run (`--data DIR` keeps it).
- **Noise.** The machine is shared: other work running at the same time shows most in the fsync-bound
  rows (saves, time to first token), where a median can move by several milliseconds between runs.
- **Data.** Saving: messages of ~500 characters. Resume: one session of 10,000 messages of ~500
  characters (8 MB). Library: 10,000 sessions of 100 messages of ~200 characters (about 500 MB of
  snapshots), made-up words with Zipf frequencies plus two planted words of known frequency. All of it is
  generated into a temporary folder and removed at the end (`--data DIR` keeps and reuses it).
"""
BASELINE = HERE / "baseline.json"
OUTPUT = REPO / "docs" / "BENCHMARKS.md"


def run_groups(report: Report, names: list[str], data: Path, quick: bool) -> None:
    import context
    import library
    import oneshot
    import saving
    import startup
    import stores
    import streaming
    import team
    import tools

    modules = {
        "startup": startup,
        "saving": saving,
        "streaming": streaming,
        "library": library,
        "stores": stores,
        "oneshot": oneshot,
        "context": context,
        "tools": tools,
        "team": team,
    }
    for name in names:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        modules[name].run(report, data, quick=quick)
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


def table(rows: list[Row]) -> str:
    out = ["| case | median | floor | target | result | notes |", "|---|---:|---:|---|---|---|"]
    group = None
    for r in rows:
        if r.group != group:
            group = r.group
            out.append(f"| **{group}** | | | | | |")
        floor = fmt(r.floor, r.unit) if r.floor is not None else ""
        verdict = f"**{r.verdict}**" if r.verdict == "MISS" else r.verdict
        runs = f"{r.runs} runs" if r.runs > 1 else ("1 run" if r.runs == 1 else "")
        note = "; ".join(x for x in (r.note, runs) if x)
        out.append(f"| {r.case} | {fmt(r.value, r.unit)} | {floor} | {r.target} | {verdict} | {note} |")
    return "\n".join(out)


def before_after(rows: list[Row], baseline: dict) -> str:
    """The cases a fix moved, from the baseline file (numbers measured before the fixes) to this run."""
    before = baseline.get("rows", {})
    when = (
        f"Before: measured at commit `{baseline.get('commit', '?')}` on {baseline.get('date', '?')}, "
        "same machine, same benchmark code. After: this run."
    )
    out = [
        baseline.get("intro", ""),
        "",
        when,
        "",
        "| case | before | after | target |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        b = before.get(r.case)
        if b is None:
            continue
        was = fmt(b["value"], r.unit) + (" **(MISS)**" if b.get("ok") is False else "")
        now = fmt(r.value, r.unit) + (" **(MISS)**" if r.ok is False else "")
        out.append(f"| {r.case} | {was} | {now} | {r.target} |")
    fixes = baseline.get("fixes", [])
    if fixes:
        out += ["", "What changed:", ""] + [f"- {f}" for f in fixes]
    return "\n".join(out)


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_markdown(report: Report, argv: list[str], seconds: float, path: Path) -> None:
    m = machine()
    met = [r for r in report.rows if r.ok is not None]
    missed = [r for r in met if not r.ok]
    lines = [
        "# Benchmarks",
        "",
        (
            "Written by `make bench` (`python bench/run.py`); do not edit by hand. How each case is measured is "
            "in the docstring of its module in `bench/`. Every figure is the median of several runs; the floor "
            "beside it is the least the same work can cost on this machine, measured in the same run, "
            "alternating with the case. Timings are never asserted in tests."
        ),
        "",
        "## Machine",
        "",
        *[f"- **{k}**: {v}" for k, v in m.items()],
        f"- **chatcli**: commit `{commit()}`",
        f"- **run**: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {seconds:.0f} s in all",
        "",
        "## Command",
        "",
        "```sh",
        "make bench    # = " + " ".join(shlex.quote(a) for a in argv),
        "```",
        "",
        "## Results",
        "",
        f"{len(met) - len(missed)} of {len(met)} targets met"
        + (": " + ", ".join(r.case for r in missed) + " missed." if missed else "."),
        "",
        table(report.rows),
        "",
    ]
    for title, text in report.sections.items():
        lines += [f"## {title}", "", text, ""]
    lines += ["## Notes", "", NOTES, "## How each group is measured", ""]
    for name in GROUPS:
        doc = (sys.modules[name].__doc__ or "").strip() if name in sys.modules else ""
        if doc:
            lines += [f"**{name}** (`bench/{name}.py`): " + doc, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs per case")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: " + ", ".join(GROUPS))
    ap.add_argument("--data", type=Path, help="keep generated sessions here (and reuse them)")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/BENCHMARKS.md")
    ap.add_argument(
        "--save-baseline", type=Path, metavar="FILE", help="store the medians as 'before' numbers"
    )
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(GROUPS)
    if unknown:
        ap.error(f"unknown group(s): {', '.join(sorted(unknown))}")

    data = args.data or Path(tempfile.mkdtemp(prefix="chatcli-bench-"))
    data.mkdir(parents=True, exist_ok=True)
    report = Report()
    t0 = time.perf_counter()
    print(f"chatcli benchmarks; data in {data}")
    print(f"  {'case':<64} {'median':>13} {'floor':>13}  {'target':<17} result", flush=True)
    try:
        run_groups(report, [n for n in GROUPS if n in names], data, args.quick)
    finally:
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)
    seconds = time.perf_counter() - t0

    print("\nSummary")
    for r in report.rows:
        print(format_row(r))
    met = [r for r in report.rows if r.ok is not None]
    print(f"{sum(1 for r in met if r.ok)} of {len(met)} targets met in {seconds:.0f} s")

    if BASELINE.exists():
        report.sections["Before and after the speed fixes"] = before_after(
            report.rows, json.loads(BASELINE.read_text())
        )
    if args.save_baseline:
        args.save_baseline.write_text(
            json.dumps(
                {
                    "commit": commit(),
                    "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                    "rows": {
                        r.case: {"value": round(r.value, 3), "unit": r.unit, "ok": r.ok} for r in report.rows
                    },
                },
                indent=2,
                ensure_ascii=False,
            )
            + "\n"
        )
        print(f"baseline written to {args.save_baseline}")
    if not args.no_write and set(names) == set(GROUPS):
        argv = [Path(sys.executable).name, "bench/run.py", *sys.argv[1:]]
        write_markdown(report, argv, seconds, OUTPUT)
        print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
