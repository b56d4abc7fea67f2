"""Start-up and memory: ``chatcli --version``, ``--help``, time to the REPL prompt for ``new`` and for
resuming a 10,000-message session, resident size at the prompt, and where import time goes.

The floor of every start-up case is ``python -c pass`` with the same interpreter, timed in the same loop.
The REPL runs in a 100x40 pseudo-terminal (pexpect); "time to prompt" is from spawning the process to
the prompt's "›" arriving on the terminal. No request reaches the model server until a message is sent,
so the server address given to ``--base-url`` only has to look valid.
"""

from __future__ import annotations

import re
import shlex
import time
from collections import defaultdict
from pathlib import Path

from common import PYTHON, Report, Row, chatcli_cmd, child_env, interleaved, median, rss_mb, time_command
from datagen import Corpus, messages, snapshot, write_snapshot

GROUP_START = "Start-up"
GROUP_MEM = "Memory"
PROMPT = "›"
BASE_URL = "http://127.0.0.1:9/v1"  # never contacted: no message is sent
RESUME_MESSAGES = 10_000
RESUME_CHARS = 500
RESUME_ID = "20260101-000000-r10k"


def _floor(env: dict[str, str]) -> float:
    return time_command([PYTHON, "-c", "pass"], env)


def _repl(args: list[str], env: dict[str, str], wrap_stderr: Path | None = None) -> tuple[float, float]:
    """Spawn ``python -m chatcli ARGS`` in a pseudo-terminal; (seconds to the prompt, resident MB there).
    Leaves with Ctrl-D. ``wrap_stderr``: run under ``-X importtime`` with stderr sent to that file."""
    import pexpect

    argv = [PYTHON, "-m", "chatcli", *args]
    if wrap_stderr is not None:
        script = (
            f"exec {shlex.quote(PYTHON)} -X importtime -m chatcli {' '.join(map(shlex.quote, args))} "
            f"2>{shlex.quote(str(wrap_stderr))}"
        )
        argv = ["/bin/sh", "-c", script]
    t0 = time.perf_counter()
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        env=env,
        dimensions=(40, 100),
        timeout=120,
        encoding="utf-8",
        codec_errors="replace",
        maxread=65536,
    )
    try:
        child.expect(PROMPT)
        elapsed = time.perf_counter() - t0
        rss = rss_mb(child.pid)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return elapsed, rss


def make_resume_session(sessions: Path) -> None:
    """A 10,000-message session (~500 characters each) to resume."""
    sessions.mkdir(mode=0o700, parents=True, exist_ok=True)
    msgs = messages(Corpus(seed=5), RESUME_MESSAGES, RESUME_CHARS)
    write_snapshot(sessions, snapshot(RESUME_ID, msgs, "ten thousand messages"))


def import_breakdown(log: Path, top: int = 12) -> tuple[float, list[tuple[str, float]]]:
    """Total import time (ms) and the top-level packages costing most (self time summed, ms)."""
    per: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, name = int(m.group(1)), m.group(4)
        per[name.split(".")[0]] += self_us / 1000
        total += self_us / 1000
    return total, sorted(per.items(), key=lambda kv: -kv[1])[:top]


def run(report: Report, folder: Path, quick: bool = False) -> None:
    env = child_env(folder / "startup", NO_COLOR="1")
    cli = chatcli_cmd()
    runs = 5 if quick else 11
    for argv in ([PYTHON, "-c", "pass"], [*cli, "--version"], [*cli, "--help"]):  # compile .pyc, fill caches
        time_command(argv, env)

    floor, version, helptext = interleaved(
        runs,
        lambda: _floor(env),
        lambda: time_command([*cli, "--version"], env),
        lambda: time_command([*cli, "--help"], env),
    )
    f = median(floor)
    report.add(Row(GROUP_START, "python -c pass (the floor)", f * 1000, "ms", runs=runs))
    v = median(version)
    report.add(
        Row(GROUP_START, "chatcli --version", v * 1000, "ms", f * 1000, "≤ 120 ms", v <= 0.120, runs=runs)
    )
    h = median(helptext)
    report.add(Row(GROUP_START, "chatcli --help", h * 1000, "ms", f * 1000, runs=runs))

    # Time to the prompt.
    repl_env = child_env(folder / "startup", PROMPT_TOOLKIT_NO_CPR="1")
    new_args = ["new", "--backend", "openai", "--base-url", BASE_URL]
    make_resume_session(folder / "startup" / "sessions")
    resume_args = ["resume", RESUME_ID]
    _repl(new_args, repl_env)  # warm
    _repl(resume_args, repl_env)
    prompt_runs = 5 if quick else 9
    floor, new, resumed = interleaved(
        prompt_runs,
        lambda: _floor(repl_env),
        lambda: _repl(new_args, repl_env),
        lambda: _repl(resume_args, repl_env),
    )
    f = median(floor)
    t_new = median([r[0] for r in new])
    report.add(
        Row(
            GROUP_START,
            "time to prompt: chatcli new",
            t_new * 1000,
            "ms",
            f * 1000,
            "≤ 300 ms",
            t_new <= 0.300,
            runs=prompt_runs,
        )
    )
    t_res = median([r[0] for r in resumed])
    report.add(
        Row(
            GROUP_START,
            f"time to prompt: resume {RESUME_MESSAGES:,} messages",
            t_res * 1000,
            "ms",
            f * 1000,
            "≤ 500 ms",
            t_res <= 0.500,
            runs=prompt_runs,
            note=f"{RESUME_MESSAGES:,} messages of ~{RESUME_CHARS} characters",
        )
    )

    rss_new = median([r[1] for r in new])
    report.add(
        Row(
            GROUP_MEM,
            "resident size at an idle prompt (new)",
            rss_new,
            "MB",
            target="≤ 80 MB",
            ok=rss_new <= 80,
            runs=prompt_runs,
        )
    )
    rss_res = median([r[1] for r in resumed])
    report.add(
        Row(
            GROUP_MEM,
            f"resident size after resuming {RESUME_MESSAGES:,} messages",
            rss_res,
            "MB",
            runs=prompt_runs,
        )
    )

    # Where the time to the prompt goes, by top-level package.
    log = folder / "importtime.log"
    _repl(new_args, repl_env, wrap_stderr=log)
    total, top = import_breakdown(log)
    head = (
        f"`python -X importtime -m chatcli {' '.join(new_args)}` up to the prompt: **{total:.0f} ms** of "
        f"imports in total (self time, summed by top-level package; one run, so ±10 %):"
    )
    lines = [head, "", "| package | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms_:.1f} |" for name, ms_ in top]
    log_v = folder / "importtime-version.log"
    import subprocess

    with open(log_v, "w") as err:
        subprocess.run(
            [*cli, "--version"],
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=True,
        )
    total_v, top_v = import_breakdown(log_v, 5)
    lines += [
        "",
        f"`chatcli --version`: {total_v:.0f} ms of imports ("
        + ", ".join(f"{n} {t:.1f}" for n, t in top_v)
        + ").",
    ]
    report.sections["Import time"] = "\n".join(lines)
    print("\n".join("  " + x for x in lines), flush=True)
