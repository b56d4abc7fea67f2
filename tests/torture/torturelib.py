"""Shared machinery of the torture suite: sizes, figures, a piped chatcli child, snapshot checks.

Sizes come from the environment so `make torture` can run the long version of the same tests:

    CHATCLI_TORTURE_KILLS    SIGKILLs of a streaming chatcli       (default 200)
    CHATCLI_TORTURE_FUZZ     mutated snapshots fed to the reader   (default 10000)
    CHATCLI_TORTURE_WRITERS  concurrent chatcli writers            (default 6)
    CHATCLI_TORTURE_TEAM     chatcli on one database at once       (default 16; long run 64)
    CHATCLI_TORTURE_DBKILLS  database servers killed, per engine   (default 10; long run 100)
    CHATCLI_TORTURE_LONG     1: every variant rather than a sample (the read-only commands on bad files)
    CHATCLI_TORTURE_SEED     seed of every random choice           (default: random, printed on failure)
    CHATCLI_TORTURE_REPORT   a JSON file the figures are written to at the end of the run

Every test records what it did with ``figure(case, key, value)``; the torture conftest prints the figures
after the run, which is where the numbers in docs/RELIABILITY.md come from.
"""

from __future__ import annotations

import os
import random
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from chatcli.stores.folder import FolderStore

from chatproc import Chat, Turns  # noqa: F401 - the suite's tests import them from here


def size(name: str, default: int) -> int:
    value = os.environ.get(f"CHATCLI_TORTURE_{name}", "")
    return int(value) if value.strip() else default


KILLS = size("KILLS", 200)
FUZZ = size("FUZZ", 10000)
WRITERS = size("WRITERS", 6)
LONG = bool(size("LONG", 0))  # the long run: every variant, not a sample
_seed_env = os.environ.get("CHATCLI_TORTURE_SEED", "").strip()
SEED = int(_seed_env) if _seed_env else random.SystemRandom().randrange(1, 10**9)

FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)
_figures_lock = threading.Lock()


def figure(case: str, key: str, value: Any) -> None:
    """Record one number (or word) for the report: ``case`` is a row of docs/RELIABILITY.md."""
    with _figures_lock:
        FIGURES[case][key] = value


def add(case: str, key: str, n: int = 1) -> None:
    with _figures_lock:
        FIGURES[case][key] = FIGURES[case].get(key, 0) + n


def rng(*salt: object) -> random.Random:
    """A random generator seeded from SEED and ``salt`` (so every test is reproducible on its own)."""
    return random.Random(f"{SEED}:" + ":".join(map(str, salt)))


# ---------------------------------------------------------------------------------------------- children
def chatcli_args(*args: str, checkpoint: float | None = None) -> list[str]:
    """``python -m chatcli ARGS``, or with ``checkpoint`` the same entry point with every session's turn
    policy saving every ``checkpoint`` seconds and no interval from the cost of a save (0 saves the reply at
    every token)."""
    if checkpoint is None:
        return ["-m", "chatcli", *args]
    boot = (  # (a policy the session no longer reads would fail here, not silently save less often)
        "import sys; import chatcli.session as s; from chatcli.turn import TurnPolicy; "
        "assert isinstance(s.ConversationSession.default_policy, TurnPolicy); "
        "s.ConversationSession.default_policy = TurnPolicy("
        f"checkpoint_seconds={float(checkpoint)!r}, checkpoint_cost_ratio=0.0); "
        "sys.argv[0] = 'chatcli'; from chatcli.cli import main; main()"
    )
    return ["-c", boot, *args]


# ---------------------------------------------------------------------------------------------- snapshots
def temp_files(root: Path, sid: str | None = None) -> list[Path]:
    pattern = f".{sid}.*.tmp" if sid else "*.tmp"
    found = set(root.glob(pattern)) | (set(root.glob(".*.tmp")) if sid is None else set())
    return sorted(found)


def load_checked(root: Path, sid: str) -> dict[str, Any]:
    """The snapshot of ``sid`` (a dict): it must be valid JSON and a valid session (FolderStore.load), and
    the file must hold exactly the conversation it loads as (``Conversation.to_json``), but for a reply its
    writer was saving while it streamed: that one loads as ``interrupted``."""
    path = root / f"{sid}.json"
    raw = path.read_bytes()
    decoded = orjson.loads(raw)  # never a half-written file
    snap = FolderStore(root).load(sid).to_json()
    for m in decoded["messages"]:
        if m.get("status") == "streaming":
            m["status"] = "interrupted"
    assert snap == decoded
    return snap


def all_files(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file() or p.is_symlink()]


def assert_no_canary(canary: str, *roots: Path) -> int:
    """No file under ``roots`` holds ``canary``; returns how many files were checked."""
    files = all_files(*roots)
    for p in files:
        if p.is_file():
            assert canary.encode() not in p.read_bytes(), f"the API key canary was written to {p}"
    return len(files)


def shown(data: bytes | str, n: int = 400) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"
