"""What every benchmark shares: the result row, medians, an isolated environment for chatcli child
processes, and a description of the machine.

Times are measured with ``time.perf_counter`` and kept in seconds; rows show them in milliseconds.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Row:
    """One line of the results table.

    ``value`` and ``floor`` are in ``unit`` (``ms``, ``MB``, ``tok/s``, ``µs/tok``, ``×``); ``target`` is
    the text shown (e.g. ``≤ 120 ms``) and ``ok`` whether it is met (None: no target, shown for context)."""

    group: str
    case: str
    value: float
    unit: str
    floor: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""
    runs: int = 0

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    """Everything one ``bench/run.py`` produced: rows, free-form sections for the Markdown file."""

    rows: list[Row] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def fmt(value: float | None, unit: str) -> str:
    """A number for the table: 3 significant figures or so, with its unit."""
    if value is None:
        return "–"
    if unit == "×":
        return f"{value:.2f}×"
    if unit == "%":
        return f"{value:.0f} %"
    if unit == "ms" and value >= 10_000:
        return f"{value / 1000:,.1f} s"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}"


def format_row(r: Row) -> str:
    floor = fmt(r.floor, r.unit) if r.floor is not None else "–"
    return f"  {r.case:<64} {fmt(r.value, r.unit):>13} {floor:>13}  {r.target:<17} {r.verdict}"


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a chatcli child process: every user folder under ``root``, no key or server
    address from the caller's environment, a 100x40 terminal."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATCLI_", "OPENAI_", "OLLAMA_"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_color")
    }
    env.update(
        {
            "CHATCLI_SESSIONS_DIR": str(root / "sessions"),
            "CHATCLI_STATE_DIR": str(root / "state"),
            "CHATCLI_CONFIG": str(root / "config.toml"),  # never created: defaults only
            "HOME": str(root / "home"),
            "COLUMNS": "100",
            "LINES": "40",
            "TERM": "xterm-256color",
        }
    )
    env.update(extra)
    (root / "home").mkdir(parents=True, exist_ok=True)
    return env


def chatcli_cmd() -> list[str]:
    """The ``chatcli`` console script next to this Python (what a user types), else ``python -m chatcli``."""
    script = Path(PYTHON).parent / "chatcli"
    return [str(script)] if script.exists() else [PYTHON, "-m", "chatcli"]


def time_command(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    """Wall time in seconds of one run of ``argv`` to its exit (output discarded). Raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def interleaved(runs: int, *cases: Callable[[], float]) -> list[list[float]]:
    """Run each case ``runs`` times, alternating between them so that a slow moment of the machine hits
    all of them alike; returns one list of results per case."""
    out: list[list[float]] = [[] for _ in cases]
    for _ in range(runs):
        for i, case in enumerate(cases):
            out[i].append(case())
    return out


def machine() -> dict[str, str]:
    """CPU model, cores, memory, Python, OS: the header of docs/BENCHMARKS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} (Linux {platform.release()})"
    except OSError:
        pass
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": os_name,
    }


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS from /proc, 1 MB = 2**20 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
