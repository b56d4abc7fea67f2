"""Bad files in the sessions folder, and a fuzzer of snapshots.

Every kind of bad `<id>.json` (truncated, bytes flipped, empty, a newer format, foreign JSON, very large,
a symbolic link, unreadable, a FIFO, a folder, ...) gets a clear error naming the file from `load`, from
`chatcli resume` and from the library commands; nothing is overwritten, and `chatcli list` keeps listing
the good sessions and names the bad files.

The fuzzer mutates a realistic snapshot CHATCLI_TORTURE_FUZZ times (bytes and JSON structure) and goes
through everything a resume does with what loads: validation, ConversationSession, the context, stats,
the index summary, the backend factory, a save and a reload; one in 20 also through the REPL's history
view. Anything but a SnapshotError (the clear error) is a failure.
"""

from __future__ import annotations

import copy
import io
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatcli.backends import make_backend
from chatcli.errors import ChatcliError, SnapshotError
from chatcli.model import FORMAT, VERSION, Conversation
from chatcli.session import ConversationSession
from chatcli.snapshot import summarize
from chatcli.stores.folder import FolderStore
from chatcli.stores.folder_index import SessionIndex

from torturelib import FUZZ, LONG, SEED, add, figure, rng

CASE_FILES = "bad files"
CASE_FUZZ = "fuzz: mutated snapshots"
GOOD = ("20260101-090000-good", "20260102-090000-fine")


def snapshot(sid: str, n_turns: int = 3) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for t in range(n_turns):
        messages.append(
            {
                "role": "user",
                "content": f"question {t} — naïve 日本語 🚀 \x1b[31mred\x1b[0m",
                "created_at": "2026-01-01T09:00:00.000Z",
                "status": "ok",
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": f"answer {t}\n```py\nprint({t})\n```",
                "created_at": "2026-01-01T09:00:01.000Z",
                "status": "ok" if t else "interrupted",
                "finish_reason": "stop",
                "model": "fake-model",
                "usage": {"prompt_tokens": 10 + t, "completion_tokens": 5, "cached_tokens": 2},
                "timings": {
                    "ttft_s": 0.1,
                    "duration_s": 0.5,
                    "tokens_per_second": 42.0,
                    "server": {"prompt_ms": 1.5},
                },
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "id": sid,
        "title": f"title of {sid}",
        "created_at": "2026-01-01T09:00:00.000Z",
        "updated_at": "2026-01-01T09:10:00.000Z",
        "backend": "openai",
        "model": "fake-model",
        "base_url": "http://127.0.0.1:9/v1",
        "params": {"temperature": 0.5, "max_tokens": 100},
        "system": "Be brief.",
        "context_start": 0,
        "clears": [0],
        "messages": messages,
    }


def with_parts(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` with messages of every part type after its turns (for the fuzzer to mutate parts too)."""
    when = "2026-01-01T09:00:02.000Z"
    call = {"type": "tool_call", "id": "call_1", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}
    result = {
        "type": "tool_result",
        "call_id": "call_1",
        "text": "14:05",
        "raw": [{"type": "text", "text": "14:05"}],
    }
    thought = {"type": "reasoning", "text": "I should ask the clock.\n<think> stays </think>"}
    snap["messages"] += [
        {"role": "user", "content": "time?", "created_at": when, "status": "ok"},
        {
            "role": "assistant",
            "parts": [thought, {"type": "text", "text": "Looking."}, call],
            "created_at": when,
            "status": "ok",
            "usage": {"prompt_tokens": 9, "completion_tokens": 9, "cached_tokens": 0, "reasoning_tokens": 5},
        },
        {
            "role": "tool",
            "parts": [result, dict(result, call_id="call_2", is_error=True)],
            "created_at": when,
            "status": "ok",
        },
        {
            "role": "assistant",
            "parts": [thought, {"type": "text", "text": "14:05."}],
            "created_at": when,
            "status": "streaming",
            "timings": {
                "ttft_s": 0.1,
                "duration_s": None,
                "tokens_per_second": None,
                "server": None,
                "reasoning_s": 0.05,
            },
        },
    ]
    return snap


def dump(snap: Any) -> bytes:
    return orjson.dumps(snap, option=orjson.OPT_INDENT_2)


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcli", *args],
        input="",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def fingerprint(path: Path) -> tuple[Any, ...]:
    """What must not change: the file's type, bytes (or link target) and mtime."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path), st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode) and st.st_size < 10**8:
        return ("file", path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------------------------------- bad files
def _bad_files(root: Path, outside: Path) -> dict[str, Callable[[Path], Any]]:
    """name -> a function that makes that kind of bad file at the given path."""
    good = dump(snapshot("x"))
    r = rng("bad-files")

    def write(data: bytes) -> Callable[[Path], Any]:
        return lambda p: p.write_bytes(data)

    def as_own(snap: dict[str, Any]) -> Callable[[Path], Any]:
        return lambda p: p.write_bytes(dump(dict(snap, id=p.stem)))

    def flipped(n: int) -> Callable[[Path], Any]:
        def make(p: Path) -> None:  # bits of JSON punctuation, so the file is surely damaged
            original = dump(dict(snapshot("x"), id=p.stem))
            where = [i for i, c in enumerate(original) if c in b'{}[]:,"']
            for _ in range(1000):
                data = bytearray(original)
                for _ in range(n):
                    i = r.choice(where)
                    data[i] ^= 1 << r.randrange(8)
                try:  # a flip can leave valid JSON (an escaped \" turned into \b): draw again
                    orjson.loads(bytes(data))
                except orjson.JSONDecodeError:
                    break
            p.write_bytes(bytes(data))

        return make

    def link_to(target: Path | str) -> Callable[[Path], Any]:
        return lambda p: os.symlink(target, p)

    def fifo(p: Path) -> None:
        os.mkfifo(p, 0o600)

    def sock(p: Path) -> None:  # bound in a short folder (socket paths are limited to ~100 bytes), moved in
        short = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(str(short / "s"))
            os.replace(short / "s", p)
        finally:
            s.close()
            short.rmdir()

    def sparse_huge(p: Path) -> None:
        with open(p, "wb") as f:
            f.truncate(600 * 1024 * 1024)  # 600 MB, no blocks: refused unread

    def garbage_large(p: Path) -> None:
        p.write_bytes(os.urandom(1024) * (40 * 1024))  # 40 MiB

    (outside / "victim.txt").write_text("a file outside the sessions folder")
    (outside / "session.json").write_bytes(good)
    return {
        "truncated to 1 byte": lambda p: p.write_bytes(good[:1]),
        "truncated to half": lambda p: p.write_bytes(good[: len(good) // 2]),
        "truncated by 1 byte": lambda p: p.write_bytes(good[:-2]),
        "1 bit flipped": flipped(1),
        "16 bits flipped": flipped(16),
        "empty": write(b""),
        "only whitespace": write(b" \n\t\n"),
        "NUL bytes": write(b"\0" * 4096),
        "invalid UTF-8": lambda p: p.write_bytes(
            dump(dict(snapshot("x"), id=p.stem)).replace(b"Be brief.", b"Be \xff\xfe.")
        ),
        "newer format version": as_own(dict(snapshot("x"), version=VERSION + 1)),
        "version not a number": as_own(dict(snapshot("x"), version="1")),
        "foreign JSON object": write(b'{"name": "package", "version": "1.0.0"}'),
        "foreign JSON list": write(b"[1, 2, 3]"),
        "JSON null": write(b"null"),
        "another format": as_own(dict(snapshot("x"), format="other.app")),
        "holds another session's id": write(good),
        "a message of the wrong shape": as_own(dict(snapshot("x"), messages=[{"role": "user"}])),
        "deeply nested": write(b"[" * 100000 + b"]" * 100000),
        "40 MiB of garbage": garbage_large,
        "600 MB (sparse)": sparse_huge,
        "symlink to a session outside": link_to(outside / "session.json"),
        "symlink to a text file": link_to(outside / "victim.txt"),
        "symlink to /dev/zero": link_to("/dev/zero"),
        "dangling symlink": link_to(outside / "missing.json"),
        "symlink loop": lambda p: os.symlink(p.name, p),
        "a FIFO": fifo,
        "a socket": sock,
        "a folder": lambda p: p.mkdir(),
    }


def test_bad_files_get_a_clear_error_and_nothing_is_overwritten(
    tmp_path: Path, user_dirs: dict[str, Path], child_env: dict[str, str]
) -> None:
    root = user_dirs["sessions"]
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FolderStore(root)
    for sid in GOOD:
        store.save(Conversation.from_json(snapshot(sid)))
    makers = _bad_files(root, outside)
    bad: dict[str, Path] = {}
    for i, (name, make) in enumerate(makers.items()):
        path = root / f"20260301-0000{i:02d}-bad{i:02d}.json"
        make(path)
        bad[name] = path
    prints = {name: fingerprint(p) for name, p in bad.items()}
    outside_before = {p.name: p.read_bytes() for p in outside.iterdir()}
    started = time.monotonic()

    # the reader: a SnapshotError naming the file, quickly, for every one
    for name, path in bad.items():
        t0 = time.monotonic()
        with pytest.raises(SnapshotError) as info:
            store.load(path.stem)
        assert str(path) in str(info.value), f"{name}: {info.value}"
        assert "\n" not in str(info.value)
        assert time.monotonic() - t0 < 5, f"{name} took {time.monotonic() - t0:.1f} s to refuse"

    # `chatcli list` lists the good ones and names every bad file; the index copes too
    r = run_cli("list", "--all", env=child_env)
    assert r.returncode == 0, r.stderr
    for sid in GOOD:
        assert sid in r.stdout
    for name, path in bad.items():
        assert str(path.name) in r.stderr, f"list does not report {name}: {r.stderr}"
    assert "Traceback" not in r.stderr
    r = run_cli("list", "--json", env=child_env)
    assert r.returncode == 0 and {row["id"] for row in orjson.loads(r.stdout)} == set(GOOD), r.stderr

    # resume, show, export and rename: one clear line naming the file, exit 1, nothing changed
    # resume and rename (the commands that write) for every kind; the read-only show and export for a
    # sample in CI, for every kind in the long run
    sample = set(list(bad)[:: 1 if LONG else 5])
    runs = [
        (name, path, args)
        for name, path in bad.items()
        for args in [["resume", path.stem], ["rename", path.stem, "new title"]]
        + ([["show", path.stem], ["export", path.stem]] if name in sample else [])
    ]
    by_file: dict[Path, list[int]] = {}
    for i, (_, path, _) in enumerate(runs):
        by_file.setdefault(path, []).append(i)
    results: list[Any] = [None] * len(runs)

    def one_file(indexes: list[int]) -> None:  # a file's commands one after another (each takes its lock)
        for i in indexes:
            results[i] = run_cli(*runs[i][2], env=child_env)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one_file, by_file.values()))
    for (name, path, args), r in zip(runs, results, strict=False):
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1, f"{name} {args}: {r.returncode} {r.stderr}"
        assert len(lines) == 1 and lines[0].startswith("error:"), f"{name} {args}: {r.stderr}"
        assert path.name in r.stderr.replace("\n", ""), f"{name} {args}: {r.stderr}"
        add(CASE_FILES, "commands refused with a clear error", 1)
    for name, path in bad.items():
        assert fingerprint(path) == prints[name], f"{name} was changed"
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == outside_before
    assert not list(root.glob("*.tmp")) and not list(root.glob(".*.tmp"))
    for sid in GOOD:  # and the good sessions still open
        assert store.load(sid).to_json() == snapshot(sid)
    figure(CASE_FILES, "kinds of bad file", len(bad))
    figure(CASE_FILES, "seconds", round(time.monotonic() - started, 1))


def test_an_unreadable_file_gets_a_clear_error(tmp_path: Path) -> None:
    """chmod 000. Root reads anything, so as root the reading is done by a child that became `nobody`."""
    base = Path(tempfile.mkdtemp(prefix="chatcli-unreadable-"))
    try:
        os.chmod(base, 0o711)
        root = base / "sessions"
        store = FolderStore(root)
        store.save(Conversation.from_json(snapshot(GOOD[0])))
        locked = "20260301-000000-nope"
        store.save(Conversation.from_json(snapshot(locked)))
        path = root / f"{locked}.json"
        os.chmod(path, 0)
        before = path.read_bytes()
        as_root = os.geteuid() == 0
        if as_root:
            for p in [root, *root.iterdir()]:
                os.chown(p, 65534, 65534)
        result = _as_nobody(root, locked) if as_root else _read(root, locked)
        assert result.startswith("SnapshotError:"), result
        assert str(path) in result and "Permission denied" in result, result
        assert "list ok: 1 good, 1 damaged" in result, result
        assert path.read_bytes() == before
        figure(CASE_FILES, "unreadable file read as", "nobody (forked from root)" if as_root else "this user")
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def _read(root: Path, sid: str) -> str:
    store = FolderStore(root)
    try:
        store.load(sid)
        out = "LOADED"
    except SnapshotError as e:
        out = f"SnapshotError: {e}"
    except BaseException as e:
        out = f"UNCAUGHT {type(e).__name__}: {e}"
    rows, damaged = store.scan()
    return out + f"; list ok: {len(rows)} good, {len(damaged)} damaged"


def _as_nobody(root: Path, sid: str) -> str:
    r, w = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() with threads; the child only reads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: drop to nobody, read, report, leave without running any cleanup
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, _read(root, sid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return data.decode()


def test_a_very_large_session_works(user_dirs: dict[str, Path], child_env: dict[str, str]) -> None:
    """A valid 40 MB session (200 turns of 100 KB pastes and replies) lists, loads and resumes."""
    root = user_dirs["sessions"]
    sid = "20260101-090000-huge"
    snap = snapshot(sid)
    for i in range(200):
        snap["messages"].append(
            {
                "role": "user",
                "content": f"paste {i} " + ("word " * 20 + "\n") * 1000,
                "created_at": "2026-01-01T09:00:00.000Z",
                "status": "ok",
            }
        )
        snap["messages"].append(
            {
                "role": "assistant",
                "content": f"reply {i} " + ("word " * 20 + "\n\n") * 1000,
                "created_at": "2026-01-01T09:00:00.000Z",
                "status": "ok",
            }
        )
    FolderStore(root).save(Conversation.from_json(snap))
    size = (root / f"{sid}.json").stat().st_size
    assert size > 40 * 10**6
    t0 = time.monotonic()
    assert FolderStore(root).load(sid).to_json() == snap
    r = run_cli("list", env=child_env)
    assert r.returncode == 0 and sid in r.stdout, r.stderr
    r = run_cli("resume", sid, "--sessions-dir", str(root), env=dict(child_env, COLUMNS="100"))
    assert r.returncode == 0, r.stderr[-2000:]
    figure(
        CASE_FILES,
        "a valid session of",
        f"{size / 1e6:.0f} MB: loads, lists and resumes in {time.monotonic() - t0:.1f} s",
    )


# ----------------------------------------------------------------------------------------------- fuzzing
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    1e308,
    "",
    "x",
    "\x00",
    "\x1b]0;t\x07",
    "💥" * 3,
    "a" * 5000,
    "2026-13-45T99:99:99Z",
    "../../etc/passwd",
    "user",
    "assistant",
    "system",
    "streaming",
    "ok",
    [],
    {},
    [1, "2"],
    {"role": "user", "content": "c"},
    {"a": {"b": {"c": []}}},
]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def mutate_json(base: dict[str, Any], r: Any) -> bytes:
    snap = copy.deepcopy(base)
    for _ in range(r.randint(1, 4)):
        paths = [p for p in _paths(snap) if p]
        if not paths:
            break
        path = r.choice(paths)
        parent, key = _get(snap, path[:-1]), path[-1]
        op = r.random()
        if op < 0.5:
            parent[key] = copy.deepcopy(r.choice(ODD_VALUES))
        elif op < 0.65:
            del parent[key]
        elif op < 0.8 and isinstance(parent, list):
            parent.insert(r.randrange(len(parent) + 1), copy.deepcopy(parent[key]))
        elif op < 0.9 and isinstance(parent, dict):
            parent[
                r.choice(
                    [
                        "extra",
                        "clears",
                        "model_path",
                        "base_url",
                        "dropped",
                        "context_start",
                        "usage",
                        "timings",
                        "params",
                        "parts",
                        "content",
                        "type",
                        "raw",
                        "is_error",
                        "arguments",
                    ]
                )
            ] = copy.deepcopy(r.choice(ODD_VALUES))
        else:
            parent[key] = copy.deepcopy(_get(snap, r.choice(paths)))
    return orjson.dumps(snap, option=orjson.OPT_INDENT_2 if r.random() < 0.5 else 0)


def mutate_bytes(data: bytes, r: Any) -> bytes:
    b = bytearray(data)
    for _ in range(r.randint(1, 6)):
        if not b:
            b = bytearray(r.randbytes(r.randint(1, 64)))
        op = r.random()
        i = r.randrange(len(b))
        if op < 0.3:
            b[i] ^= 1 << r.randrange(8)
        elif op < 0.45:
            del b[i : i + r.randint(1, 64)]
        elif op < 0.6:
            b[i:i] = r.randbytes(r.randint(1, 16))
        elif op < 0.7:
            b[i:i] = r.choice(
                [
                    b'"',
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b",",
                    b":",
                    b"\\",
                    b"\\u",
                    b"\\ud800",
                    b"1e999",
                    b"-",
                    b"null",
                    b"\xff",
                    b"\xc3",
                    b"\xed\xa0\x80",
                ]
            )
        elif op < 0.8:
            del b[i:]
        elif op < 0.9:
            j = r.randrange(len(b))
            b[i:i] = b[j : j + r.randint(1, 200)]
        else:
            b[i] = r.choice(b'0123456789"{}[],:')
    return bytes(b)


def exercise(store: FolderStore, sid: str, deep: bool) -> str:
    """Everything a resume does with a snapshot; 'refused' (a clear SnapshotError) or 'loaded'."""
    try:
        conv = store.load(sid)
    except SnapshotError as e:
        assert str(store.path_for(sid)) in str(e)
        return "refused"
    session = ConversationSession(store, conv, None, None)
    session.context()
    session.turns()
    session.stats()
    summarize(conv)
    try:
        backend = make_backend(
            session.header.backend,
            model=session.header.model,
            base_url=session.header.base_url,
            model_path=Path(session.header.model_path) if session.header.model_path else None,
        )
        backend.close()
    except ChatcliError:
        pass  # an unknown backend name: a clear error (exit 2)
    again = orjson.loads(orjson.dumps(session.to_snapshot()))
    assert again["messages"] == [m.to_json() for m in session.messages]
    if deep:
        from chatcli.render import Renderer, make_console
        from chatcli.render_history import show_history

        console = make_console(io.StringIO())
        show_history(Renderer(console, console), session, last=None)
        saved = session.to_snapshot()
        store.save(session.conv)
        assert store.load(sid).to_json() == saved  # what was saved reads back the same
    return "loaded"


def test_fuzzed_snapshots_never_raise_anything_but_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "fuzz"
    store = FolderStore(root)
    sid = "20260101-090000-fuzz"
    base = with_parts(snapshot(sid, n_turns=4))
    base_bytes = dump(base)
    r = rng("fuzz")
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    store.save(Conversation.from_json(base))
    path = store.path_for(sid)
    for n in range(FUZZ):
        kind = r.random()
        if kind < 0.45:
            data = mutate_json(base, r)
            how = "json"
        elif kind < 0.9:
            data = mutate_bytes(base_bytes, r)
            how = "bytes"
        else:
            data = mutate_bytes(mutate_json(base, r), r)
            how = "both"
        path.write_bytes(data)
        try:
            outcomes[f"{how} {exercise(store, sid, deep=n % 20 == 0)}"] += 1
        except Exception as e:
            keep = tmp_path / f"failure-{n}.json"
            keep.write_bytes(data)
            failures.append(f"case {n} ({how}, seed {SEED}): {type(e).__name__}: {e} -> {keep}")
            if len(failures) >= 10:
                break
        if n % 1000 == 999:  # the folder view too: list and the index over a handful of bad files
            for j in range(5):
                (root / f"20260101-090000-ix{j:02d}.json").write_bytes(mutate_bytes(base_bytes, r))
            store.scan()
            ix = SessionIndex(store)
            try:
                ix.page()
            finally:
                ix.close()
    assert not failures, "\n".join(failures)
    total = sum(outcomes.values())
    figure(CASE_FUZZ, "cases", total)
    figure(
        CASE_FUZZ,
        "loaded (valid after mutation)",
        sum(v for k, v in outcomes.items() if k.endswith("loaded")),
    )
    figure(
        CASE_FUZZ, "refused with a clear error", sum(v for k, v in outcomes.items() if k.endswith("refused"))
    )
    figure(CASE_FUZZ, "uncaught exceptions", len(failures))
    figure(CASE_FUZZ, "seconds", round(time.monotonic() - started, 1))
    assert total == FUZZ
