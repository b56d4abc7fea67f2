"""A team on one store: ``processes`` chatcli REPLs from ``homes`` homes (each its own HOME and state folder,
as separate machines have) start at once on one database, each holding a session of its own and streaming
replies from the fake server at a model's pace, saving at every checkpoint as a user's chatcli does; readers
meanwhile run ``list``, ``search``, ``stats`` and ``show`` in a loop. Used by the torture suite
(tests/torture/test_torture_team.py) and the benchmark (bench/team.py).

Each writer's saves are timed inside its own process (``ConversationSession.save`` wrapped at start-up, the
durations written to a file of its own); readers are timed from outside, loaded and, before the writers
start, unloaded. ``run_team`` returns a ``TeamReport``; ``TeamReport.check`` lists what went wrong: a
session whose messages are not exactly its turns once each and in order, a writer that failed or said an
error, a reader that failed.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatproc import Chat
from fakellm import FakeLLMServer, Reply, last_user_text

BOOT = """
import os, sys, time
import chatcli.session as s
log = open(os.environ["CHATCLI_SAVE_TIMES"], "a", buffering=1)
save = s.ConversationSession.save
def timed(self, *args, **kwargs):
    t = time.perf_counter()
    ok = "err"
    try:
        info = save(self, *args, **kwargs)
        ok = "ok"
        return info
    finally:
        log.write(f"{(time.perf_counter() - t) * 1000:.3f} {ok}\\n")
s.ConversationSession.save = timed
sys.argv[0] = "chatcli"
from chatcli.cli import main
main()
"""
BANNER = re.compile(rb"(?:New|Resumed) session ([0-9A-Za-z_-]+)")
READER_COMMANDS = (("list",), ("search", "tok3"), ("stats",), ("show", "last"))
#: stderr words a writer must never say (a banner and notices of other kinds are fine)
TROUBLE = (
    "error",
    "Deadlock",
    "deadlock",
    "locked",
    "not saved",
    "kept on this machine",
    "spool",
    "Traceback",
)


@dataclass
class TeamReport:
    """What one run did: its size, the save durations measured inside the writers (milliseconds), reader
    durations (milliseconds, per command: ``unloaded`` before the writers started, ``loaded`` while they all
    held their sessions and streamed), the most connections the database had open at once (None: not a
    server), the seconds until every writer had started and then of their turns, each writer's CPU
    seconds over its turns, the writers' niceness, each reader run's own CPU time (milliseconds: what is
    left of a loaded reader's time is waiting, for a core or for the database), and the problems found."""

    engine: str
    processes: int
    homes: int
    turns: int
    saves: list[float] = field(default_factory=list)
    failed_saves: int = 0
    unloaded: dict[str, list[float]] = field(default_factory=dict)
    loaded: dict[str, list[float]] = field(default_factory=dict)
    connections: int | None = None
    seconds: float = 0.0
    start_seconds: float = 0.0  # until every writer had started and shown its session
    writer_cpu: list[float] = field(default_factory=list)  # CPU seconds of each writer over its turns
    writer_nice: int = 0  # the writers' niceness (19: they take only the CPU nothing else wants)
    reader_cpu_unloaded: list[float] = field(default_factory=list)  # each reader run's own CPU, milliseconds
    reader_cpu_loaded: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """The ``p`` (0-100) percentile of the save durations, in milliseconds (nearest rank)."""
        ordered = sorted(self.saves)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    def reader_medians(self) -> dict[str, tuple[float, float | None]]:
        """Per reader command: (unloaded median, loaded median), milliseconds; the loaded one None when the
        command's turn in the readers' loop did not come before the writers were done."""
        loaded = {k: statistics.median(v) for k, v in self.loaded.items() if v}
        return {k: (statistics.median(self.unloaded[k]), loaded.get(k)) for k in self.unloaded}

    def summary(self) -> dict[str, Any]:
        """The figures as a flat dict, for a report or a table."""
        readers = self.reader_medians()
        return {
            "writers": f"{self.processes} from {self.homes} homes x {self.turns} turns",
            "saves": len(self.saves),
            "saves/s": round(len(self.saves) / self.seconds, 1) if self.seconds else 0,
            "save ms p50/p99/max": f"{self.percentile(50):.1f} / {self.percentile(99):.1f} / "
            f"{max(self.saves, default=0):.1f}",
            "failed saves": self.failed_saves,
            "reader ms unloaded -> loaded (median)": ", ".join(
                f"{k} {a:.0f} -> " + ("not run while loaded" if b is None else f"{b:.0f}")
                for k, (a, b) in readers.items()
            ),
            "reader CPU ms unloaded -> loaded (median)": f"{_median(self.reader_cpu_unloaded):.0f} -> "
            f"{_median(self.reader_cpu_loaded):.0f}",
            "writers' niceness": self.writer_nice,
            "connections at most": self.connections,
            "start s / turns s": f"{self.start_seconds:.1f} / {self.seconds:.1f}",
            "writer CPU % (mean)": round(100 * statistics.mean(self.writer_cpu) / self.seconds, 1)
            if self.writer_cpu and self.seconds
            else None,
            "problems": len(self.problems),
        }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _env(base: dict[str, str], work: Path, home: int, spec: str) -> dict[str, str]:
    root = work / f"home{home}"
    (root / "state").mkdir(parents=True, exist_ok=True)
    return {
        **base,
        "HOME": str(root),
        "CHATCLI_STATE_DIR": str(root / "state"),
        "CHATCLI_CONFIG": str(root / "config.toml"),
        "CHATCLI_STORE": spec,
    }


def _reply(tokens: int, delay: float) -> Callable[[dict[str, Any]], Reply]:
    def answer(record: dict[str, Any]) -> Reply:
        text = last_user_text(record.get("json"))
        return Reply(tokens=[f"{text}:tok{i} " for i in range(tokens)], delay_each=delay)

    return answer


def expected_reply(prompt: str, tokens: int) -> str:
    return "".join(f"{prompt}:tok{i} " for i in range(tokens)).strip()


def _time_command(env: dict[str, str], args: tuple[str, ...]) -> tuple[float, float, str | None]:
    """Run ``chatcli ARGS``: its wall time and its own CPU time (user and system, from ``wait4``), both in
    milliseconds, and what went wrong (None: exit 0)."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, "-m", "chatcli", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        killer = threading.Timer(120, p.kill)
        killer.start()
        _, status, usage = os.wait4(p.pid, 0)
        killer.cancel()
        ms = (time.perf_counter() - t) * 1000
        p.returncode = os.waitstatus_to_exitcode(status)  # (reaped here: Popen must not wait for it again)
        err.seek(0)
        said = err.read().decode(errors="replace")
    problem = None if p.returncode == 0 else f"chatcli {' '.join(args)}: exit {p.returncode}: {said[-300:]}"
    return ms, (usage.ru_utime + usage.ru_stime) * 1000, problem


def run_team(
    spec: str,
    engine: str,
    work: Path,
    base_env: dict[str, str],
    *,
    processes: int,
    homes: int,
    turns: int,
    tokens: int = 20,
    tokens_per_second: float = 40.0,
    readers: int = 2,
    connections: Callable[[], int] | None = None,
    unloaded_runs: int = 3,
    writer_nice: int = 0,
) -> TeamReport:
    """Run the team (module docstring) on the store ``spec`` (``engine`` names it in the report), in the
    folder ``work``; ``connections()`` counts the database's open connections (sampled while it runs).
    ``writer_nice``: the writers' niceness. The writers stand for other machines: at 19 they take only the
    CPU that the database, the readers and the model server leave, so that on one small machine the readers'
    times measure the database rather than the scheduler sharing the cores with 64 REPLs."""
    report = TeamReport(engine, processes, homes, turns, writer_nice=writer_nice)
    reader_env = _env(base_env, work, homes, spec)  # the readers' own home
    with FakeLLMServer(_reply(tokens, 1.0 / tokens_per_second)) as llm:
        seed = subprocess.run(  # one session there before the readers' first look
            [
                sys.executable,
                "-m",
                "chatcli",
                "ask",
                "--backend",
                "openai",
                "--base-url",
                f"{llm.url}/v1",
                "seed",
            ],
            capture_output=True,
            text=True,
            env=reader_env,
            timeout=120,
        )
        if seed.returncode != 0:
            report.problems.append(f"the seed session failed: {seed.stderr[-300:]}")
            return report
        for args in READER_COMMANDS:
            runs = [_time_command(reader_env, args) for _ in range(unloaded_runs)]
            report.unloaded[args[0]] = [ms for ms, _, _ in runs]
            report.reader_cpu_unloaded += [cpu for _, cpu, _ in runs]
            report.problems += [p for _, _, p in runs if p]
        _writers_and_readers(report, spec, work, base_env, reader_env, llm, tokens, readers, connections)
    return report


def _writers_and_readers(
    report: TeamReport,
    spec: str,
    work: Path,
    base_env: dict[str, str],
    reader_env: dict[str, str],
    llm: FakeLLMServer,
    tokens: int,
    readers: int,
    connections: Callable[[], int] | None,
) -> None:
    stop = threading.Event()
    lock = threading.Lock()

    def read_loop(k: int) -> None:
        i = k * len(READER_COMMANDS) // readers  # spread over the commands: each runs early in the turns
        while not stop.is_set():
            args = READER_COMMANDS[i % len(READER_COMMANDS)]
            ms, cpu, problem = _time_command(reader_env, args)
            with lock:
                report.loaded.setdefault(args[0], []).append(ms)
                report.reader_cpu_loaded.append(cpu)
                if problem:
                    report.problems.append(problem)
            i += 1

    def count_loop() -> None:
        while not stop.is_set() and connections is not None:
            try:
                n = connections()
            except Exception as e:  # (the count is a figure: a failed one is said, not fatal)
                report.problems.append(f"counting connections: {e}")
                return
            report.connections = max(report.connections or 0, n)
            stop.wait(0.2)

    chats: list[tuple[Chat, Path]] = []
    started = time.monotonic()
    for p in range(report.processes):
        env = _env(base_env, work, p % report.homes, spec)
        times = work / f"saves-{p}.txt"
        env["CHATCLI_SAVE_TIMES"] = str(times)
        args = ["-c", BOOT, "new", "--backend", "openai", "--base-url", f"{llm.url}/v1"]
        chats.append((Chat(args, env, preexec_fn=_niced(report.writer_nice)), times))
    for w, (chat, _) in enumerate(chats):  # every one started and holding its session: the team is there
        if chat.wait_for(BANNER, 300) is None:
            report.problems.append(f"writer {w} did not start: {chat.text('err')[-300:]}")
    _settle([c.pid for c, _ in chats])  # (each REPL imports its HTTP client once its banner is out)
    report.start_seconds = time.monotonic() - started
    started = time.monotonic()
    helpers = [threading.Thread(target=read_loop, args=(k,)) for k in range(readers)]
    helpers.append(threading.Thread(target=count_loop))
    for t in helpers:
        t.start()
    drivers = [
        threading.Thread(target=_drive, args=(report, w, c, tokens, lock)) for w, (c, _) in enumerate(chats)
    ]
    for t in drivers:
        t.start()
    for t in drivers:
        t.join()
    report.seconds = time.monotonic() - started
    stop.set()
    for t in helpers:
        t.join()
    for w, (chat, times) in enumerate(chats):
        _collect(report, w, chat, times, spec, base_env, work, tokens)


def _niced(nice: int) -> Callable[[], None] | None:
    """A child's preexec_fn that lowers its priority by ``nice`` (None for 0)."""
    if not nice:
        return None

    def lower() -> None:
        os.nice(nice)

    return lower


def _drive(report: TeamReport, w: int, chat: Chat, tokens: int, lock: threading.Lock) -> None:
    before = _cpu_seconds(chat.pid)
    for j in range(report.turns):
        prompt = f"w{w}t{j}"
        chat.send(prompt)
        if chat.wait_for(f"{prompt}:tok{tokens - 1}".encode(), 300) is None:
            with lock:
                report.problems.append(f"writer {w}: no reply to {prompt}: {chat.text('err')[-300:]}")
            break
    with lock:
        report.writer_cpu.append(_cpu_seconds(chat.pid) - before)
    chat.close_stdin()


def _settle(pids: list[int], quiet: float = 0.05, most: float = 60.0) -> None:
    """Wait until processes ``pids`` together use at most ``quiet`` CPU seconds in half a second (each idle
    at its prompt), at most ``most`` seconds."""
    last = sum(map(_cpu_seconds, pids))
    end = time.monotonic() + most
    while time.monotonic() < end:
        time.sleep(0.5)
        now = sum(map(_cpu_seconds, pids))
        if now - last <= quiet:
            return
        last = now


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far (Linux /proc; 0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _collect(
    report: TeamReport,
    w: int,
    chat: Chat,
    times: Path,
    spec: str,
    base_env: dict[str, str],
    work: Path,
    tokens: int,
) -> None:
    """Writer ``w``'s exit, stderr and save times, and its session as the database holds it."""
    rc = chat.wait(120)
    said = [ln for ln in chat.text("err").splitlines() if any(t in ln for t in TROUBLE)]
    if rc != 0 or said:
        report.problems.append(f"writer {w}: exit {rc}: {said[:3] or chat.text('err')[-300:]}")
    if times.exists():
        for line in times.read_text().splitlines():
            ms, ok = line.split()
            report.saves.append(float(ms))
            report.failed_saves += ok != "ok"
    sid = _session_id(chat)
    if sid is None:
        report.problems.append(f"writer {w}: no session id in its banner: {chat.text('err')[-300:]}")
        return
    env = _env(base_env, work, report.homes, spec)
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "show", sid, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if r.returncode != 0:
        report.problems.append(f"writer {w}: its session {sid} cannot be shown: {r.stderr[-300:]}")
        return
    shown = json.loads(r.stdout)["messages"]
    messages = [(m["role"], m.get("content", "").strip(), m.get("status")) for m in shown]
    want = []
    for j in range(report.turns):
        want += [("user", f"w{w}t{j}", "ok"), ("assistant", expected_reply(f"w{w}t{j}", tokens), "ok")]
    if messages != want:
        report.problems.append(
            f"writer {w}: session {sid} holds {messages[:4]}... not its {len(want)} messages"
        )


def _session_id(chat: Chat) -> str | None:
    m = re.search(r"(?:New|Resumed) session ([0-9A-Za-z_-]+)", chat.text("err") + chat.text())
    return m.group(1) if m else None


def pg_connections(spec: str) -> Callable[[], int]:
    """Counts the connections open on the database of the PostgreSQL URL ``spec``."""
    import psycopg

    def count() -> int:
        with psycopg.connect(spec, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()
            return int(row[0]) - 1 if row else 0  # (less this one)

    return count


def mysql_connections(spec: str) -> Callable[[], int]:
    """Counts the connections open on the database of the MySQL URL ``spec`` (its user's, which chatcli's are)."""
    import pymysql

    from chatcli.stores import parse_store

    url = parse_store(spec)

    def count() -> int:
        conn = pymysql.connect(**url.pymysql_params(), password=url.password or "", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()")
                row = cur.fetchone()
                return int(row[0]) - 1 if row else 0
        finally:
            conn.close()

    return count


__all__ = ["TeamReport", "mysql_connections", "pg_connections", "run_team"]
