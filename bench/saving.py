"""Saving: what one snapshot save of a turn costs as a session grows, beside the least any save can cost.

chatcli: ``ConversationSession.save()`` on a session of N messages of ~500 characters (the call every save
point of a turn makes: before the request, every 0.25 s while streaming, after the reply).
Floor: the same snapshot, already built as a dict, encoded by orjson (2-space indent, as chatcli writes it),
written to a temp file in the same folder, fsync'd, ``os.replace``'d over the snapshot, and the folder
fsync'd: the durable write the design requires, with nothing else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common import Report, Row, interleaved, median
from datagen import Corpus, conversation, messages

SIZES = (10, 100, 1_000, 10_000)
CHARS = 500
GROUP = "Saving"


def _floor_save(folder: Path, snap: dict, name: str) -> float:
    import orjson

    t0 = time.perf_counter()
    data = orjson.dumps(snap, option=orjson.OPT_INDENT_2)
    tmp = folder / f".{name}.floor.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, folder / f"{name}.floor.json")
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return time.perf_counter() - t0


def _chatcli_save(session: object) -> float:
    t0 = time.perf_counter()
    session.save()  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def run(report: Report, folder: Path, quick: bool = False) -> None:
    from chatcli.session import ConversationSession
    from chatcli.stores.folder import FolderStore

    store = FolderStore(folder / "save-sessions")
    store.ensure_root()
    corpus = Corpus(seed=3)
    for n in SIZES:
        sid = f"20260101-000000-s{n}"
        conv = conversation(sid, messages(corpus, n, CHARS), "save bench")  # (untimed: dict -> Conversation)
        session = ConversationSession(store, conv, None, None)
        snap = session.to_snapshot()  # the floor's dict, built once, outside the timed region
        runs = (5 if quick else 9) if n >= 10_000 else (10 if quick else 25)
        session.save()  # warm: the file exists, as it does after the first turn
        ours, floor = interleaved(
            runs,
            lambda s=session: _chatcli_save(s),
            lambda snap=snap, sid=sid: _floor_save(store.root, snap, sid),
        )
        size = session.last_save.size if session.last_save else 0
        m, f = median(ours), median(floor)
        target = n == 10_000
        report.add(
            Row(
                GROUP,
                f"save, {n:,} messages ({size / 1e6:.2f} MB)",
                m * 1000,
                "ms",
                f * 1000,
                target="≤ 2× floor" if target else "",
                ok=(m <= 2 * f) if target else None,
                note=f"{m / f:.2f}× floor",
                runs=runs,
            )
        )
