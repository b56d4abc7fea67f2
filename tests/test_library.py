"""The session library commands (list, show, search, rename, delete, restore, prune, export, import, fork,
stats) as a user runs them, over a folder of snapshots: in this process (tests/transcript.py: stdout and
stderr piped), and in a child process where another process must hold a session's lock."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatcli.model import FORMAT, VERSION, Conversation
from chatcli.stores.folder import FolderStore
from chatcli.stores.folder_index import INDEX_NAME
from transcript import CLI

NOW = datetime.now(UTC)


def iso(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make(
    store: FolderStore,
    sid: str,
    title: str,
    turns: list[tuple[str, str]],
    *,
    days_ago: float = 0,
    model: str = "gpt-4o-mini",
    statuses: list[str] | None = None,
    **extra: Any,
) -> dict:
    msgs = []
    for i, (q, a) in enumerate(turns):
        msgs.append({"role": "user", "content": q, "created_at": iso(days_ago), "status": "ok"})
        msgs.append(
            {
                "role": "assistant",
                "content": a,
                "created_at": iso(days_ago),
                "status": statuses[i] if statuses else "ok",
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 2},
            }
        )
    snap = {
        "format": FORMAT,
        "version": VERSION,
        "id": sid,
        "title": title,
        "created_at": iso(days_ago),
        "updated_at": iso(days_ago),
        "backend": "openai",
        "model": model,
        "base_url": "",
        "params": {},
        "system": "",
        "context_start": 0,
        "messages": msgs,
        **extra,
    }
    store.save(Conversation.from_json(snap))
    return snap


A, B, C = "20260101-090000-aaaa", "20260202-100000-bbbb", "20260303-110000-cccc"


@pytest.fixture
def store(user_dirs: dict[str, Path]) -> FolderStore:
    s = FolderStore(user_dirs["sessions"])
    make(
        s,
        A,
        "Roman history",
        [
            ("Who founded Rome?", "Romulus, by legend, in 753 BC."),
            ("And the empire?", "Augustus became the first emperor."),
        ],
        days_ago=40,
    )
    make(
        s,
        B,
        "Cooking pasta",
        [("How long to boil pasta?", "About ten minutes, al dente.")],
        days_ago=3,
        model="llama3.2",
    )
    make(
        s,
        C,
        "Rust lifetimes",
        [
            ("Explain lifetimes", "A lifetime names how long a borrow lives."),
            ("Retry that", "cut sho"),
            ("Again", ""),
        ],
        days_ago=0.01,
        statuses=["ok", "interrupted", "timeout"],
    )
    return s


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.json"))}


# -- list -----------------------------------------------------------------------------------------------
def test_list_newest_first_with_tokens(cli: CLI, store: FolderStore) -> None:
    out = cli("list").ok
    rows = [ln for ln in out.splitlines() if ln[:8].isdigit()]
    assert [r.split()[0] for r in rows] == [C, B, A]
    assert "Roman history" in rows[2] and "openai/gpt-4o-mini" in rows[2]
    assert re.search(r"openai/gpt-4o-mini\s+2\s+30\s", rows[2])  # turns, tokens (2 replies x 15)


def test_list_json_filters_and_limit(cli: CLI, store: FolderStore) -> None:
    data = json.loads(cli("list", "--json").ok)
    assert [d["id"] for d in data] == [C, B, A]
    assert data[2] | {"location": None} == {
        "id": A,
        "title": "Roman history",
        "backend": "openai",
        "model": "gpt-4o-mini",
        "turns": 2,
        "messages": 4,
        "tokens": 30,
        "created_at": iso(40),
        "updated_at": iso(40),
        "location": None,
    }
    ids = lambda *a: [d["id"] for d in json.loads(cli("list", "--json", *a).ok)]  # noqa: E731
    assert ids("--limit", "1") == [C]
    assert ids("--since", "7d") == [C, B]
    assert ids("--since", (NOW - timedelta(days=10)).strftime("%Y-%m-%d")) == [C, B]
    assert ids("--model", "LLAMA") == [B]
    assert ids("--limit", "1", "--all") == [C, B, A]


def test_list_default_limit_says_how_many_more(cli: CLI, user_dirs: dict[str, Path]) -> None:
    s = FolderStore(user_dirs["sessions"])
    for i in range(53):
        make(s, f"20260101-0000{i:02d}-zzzz", f"t{i}", [("q", "a")], days_ago=i)
    out = cli("list").ok
    assert len([ln for ln in out.splitlines() if ln[:8].isdigit()]) == 50
    assert "3 more; use --all" in out


def test_list_reports_damaged_and_foreign_files(cli: CLI, store: FolderStore) -> None:
    (store.root / "20260404-000000-dddd.json").write_text('{"format": "chatcli.session", "version": 1, "id"')
    (store.root / "notes.json").write_text('{"hello": "world"}')
    r = cli("list")
    assert r.exit_code == 0
    assert [ln.split()[0] for ln in r.stdout.splitlines() if ln[:8].isdigit()] == [C, B, A]
    damaged, foreign = store.root / "20260404-000000-dddd.json", store.root / "notes.json"
    assert r.stderr.splitlines() == [
        f"damaged: {damaged} is not valid JSON (damaged or truncated)",
        f"damaged: {foreign} is not a chatcli session file",
    ]


def test_list_piped_cuts_nothing(cli: CLI, store: FolderStore) -> None:
    long_title = "A rather long title about the history of the Roman Republic and its fall, in detail"
    make(
        store, "20260606-000000-ffff", long_title, [("q", "a")], model="a-model-with-a-long-name-for-testing"
    )
    out = cli("list").ok  # stdout is a pipe: printed at its natural width
    row = next(line for line in out.splitlines() if line.startswith("20260606-000000-ffff"))
    assert long_title in row and "openai/a-model-with-a-long-name-for-testing" in row and "…" not in row


def test_list_bad_since(cli: CLI, store: FolderStore) -> None:
    assert "not a date" in cli("list", "--since", "yesterday").error(2)


# -- show -----------------------------------------------------------------------------------------------
def test_show_transcript_with_statuses(cli: CLI, store: FolderStore) -> None:
    out = cli("show", "Rust lifetimes").ok  # an exact title works as an id
    assert "# Rust lifetimes" in out and f"`{C}`" in out
    assert "## You (turn 2)" in out and "## Model — *interrupted*" in out and "## Model — *timeout*" in out
    assert "cut sho" in out and "*(no text)*" in out
    snap = json.loads(cli("show", "last", "--json").ok)
    assert snap == json.loads((store.root / f"{C}.json").read_text())
    assert "## You (turn 1)" in cli("show", "20260202", "--raw").ok  # a unique prefix


def test_title_and_last_through_the_index(cli: CLI, store: FolderStore) -> None:
    assert cli("list").ok  # builds the index, so the lookups below read it
    assert (store.root / ".index.sqlite").exists()
    assert cli("show", "last", "--json").ok.count(C) >= 1
    assert "# Cooking pasta" in cli("show", "  Cooking pasta ").ok
    make(store, "20260404-000000-dddd", "Cooking pasta", [("q", "a")], days_ago=1)
    line = cli("show", "Cooking pasta").error()
    assert "2 sessions are titled 'Cooking pasta'" in line and B in line and "20260404-000000-dddd" in line
    assert (
        "'cooking pasta' is not a session id (letters, digits, '-' and '_') nor the exact title of one"
        in cli("show", "cooking pasta").error()
    )
    assert json.loads(cli("show", "last", "--json").ok)["id"] == C  # C is still the newest


def test_show_never_prints_escape_sequences(cli: CLI, store: FolderStore) -> None:
    make(store, "20260505-000000-eeee", "esc", [("hi", "red \x1b[31mALERT\x1b]0;pwned\x07 \x9b2J done")])
    out = cli("show", "20260505-000000-eeee").ok
    assert "ALERT" in out and "done" in out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    raw = json.loads((store.root / "20260505-000000-eeee.json").read_text())
    assert "\x1b[31m" in raw["messages"][1]["content"]  # stored raw


def test_id_by_its_last_part(cli: CLI, store: FolderStore) -> None:
    assert "# Cooking pasta" in cli("show", "bbbb").ok
    assert "# Cooking pasta" in cli("show", "bb").ok  # a unique start of the last part
    make(store, "20260707-000000-bbzz", "Another b", [("q", "a")])
    line = cli("show", "bb").error()
    assert "'bb' matches 2 sessions" in line and B in line and "20260707-000000-bbzz" in line
    assert f"# {'Cooking pasta'}" in cli("show", "202602").ok  # a prefix of the whole id wins


def test_purge_of_an_unknown_id_names_both_places(cli: CLI, store: FolderStore) -> None:
    line = cli("delete", "zzzz", "--purge", "--yes").error()
    assert "no session 'zzzz'" in line and "nor is it in the trash" in line
    assert "matches 3 sessions" in cli("delete", "2026", "--purge", "--yes").error()
    assert len(list(store.root.glob("*.json"))) == 3


@pytest.mark.parametrize(
    "ref, says",
    [
        ("20269999", "no session"),
        ("2026", "matches 3 sessions"),
        ("../etc/passwd", "not a session id"),
        ("Roman", "no session"),
    ],
)
def test_show_bad_ids(cli: CLI, store: FolderStore, ref: str, says: str) -> None:
    assert says in cli("show", ref).error()


# -- search ---------------------------------------------------------------------------------------------
def test_search_hits_show_where_and_a_snippet(cli: CLI, store: FolderStore) -> None:
    assert cli("search", "emperor").ok == (
        f"{A} · Roman history · turn 2 · assistant\n  Augustus became the first emperor.\n1 hit\n"
    )
    hits = json.loads(cli("search", "rome", "--json").ok)
    assert {(h["session_id"], h["turn"], h["role"]) for h in hits} == {(A, 1, "user")}
    assert hits[0]["snippet"] == "Who founded Rome?"
    # several words: every one must be in the message; prefixes match; case ignored
    assert [h["turn"] for h in json.loads(cli("search", "FIRST", "emp", "--json").ok)] == [2]
    assert json.loads(cli("search", "first", "pasta", "--json").ok) == []


def test_search_titles_roles_sessions_and_limit(cli: CLI, store: FolderStore) -> None:
    hits = json.loads(cli("search", "pasta", "--json").ok)
    assert {h["role"] for h in hits} == {"title", "user"}
    assert [h["role"] for h in json.loads(cli("search", "pasta", "--role", "title", "--json").ok)] == [
        "title"
    ]
    assert json.loads(cli("search", "the", "--session", "Cooking pasta", "--json").ok) == []
    assert len(json.loads(cli("search", "a", "--json").ok)) > 1
    assert len(json.loads(cli("search", "a", "--limit", "1", "--json").ok)) == 1
    assert "role must be" in cli("search", "x", "--role", "system").error(2)
    assert cli("search", "zebra").ok == "No message or title matches 'zebra'.\n"


def test_search_follows_file_changes_and_the_index_is_only_a_cache(cli: CLI, store: FolderStore) -> None:
    assert json.loads(cli("search", "gnocchi", "--json").ok) == []
    snap = json.loads((store.root / f"{B}.json").read_text())
    snap["messages"][1]["content"] = "Gnocchi take two minutes."
    store.save(Conversation.from_json(snap))
    assert [h["session_id"] for h in json.loads(cli("search", "gnocchi", "--json").ok)] == [B]
    os.unlink(store.root / f"{B}.json")
    assert json.loads(cli("search", "gnocchi", "--json").ok) == []
    before = json.loads(cli("search", "rome", "--json").ok)
    for suffix in ("", "-wal", "-shm"):  # delete the index: nothing is lost
        Path(str(store.root / INDEX_NAME) + suffix).unlink(missing_ok=True)
    assert json.loads(cli("search", "rome", "--json").ok) == before
    (store.root / INDEX_NAME).write_bytes(b"this is not a database" * 100)  # a damaged index is rebuilt
    for suffix in ("-wal", "-shm"):
        Path(str(store.root / INDEX_NAME) + suffix).unlink(missing_ok=True)
    assert json.loads(cli("search", "rome", "--json").ok) == before
    sqlite3.connect(store.root / INDEX_NAME).close()
    assert oct((store.root / INDEX_NAME).stat().st_mode & 0o777) == "0o600"


# -- rename, delete, restore, prune ---------------------------------------------------------------------
def test_rename(cli: CLI, store: FolderStore) -> None:
    assert (
        cli("rename", "Roman history", "  Ancient Rome ").ok == f"Session {A} is now titled 'Ancient Rome'.\n"
    )
    assert json.loads((store.root / f"{A}.json").read_text())["title"] == "Ancient Rome"
    assert [h["session_id"] for h in json.loads(cli("search", "ancient", "--json").ok)] == [A]
    before = files(store.root)
    assert "control characters" in cli("rename", A, "bad\x1b[2Jtitle").error(2)
    assert "control characters" in cli("rename", A, "two\nlines").error(2)
    assert files(store.root) == before


def test_library_commands_refuse_a_session_open_elsewhere(
    child_env: dict[str, str], store: FolderStore
) -> None:
    """A lock held by another process (this one, as a running REPL would hold it): chatcli in a child
    process refuses to change the session, and still shows it."""

    def child(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chatcli", *args],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=60,
        )

    lock = store.lock(A)
    try:
        before = files(store.root)
        for args in (["rename", A, "x"], ["delete", A], ["delete", "--purge", "--yes", A]):
            r = child(*args)
            assert (r.returncode, r.stdout) == (1, ""), r
            [line] = r.stderr.splitlines()
            assert line.startswith("error: ") and "is open in another chatcli" in line, line
        assert files(store.root) == before
        r = child("show", A)  # reading is fine
        assert r.returncode == 0 and r.stdout.startswith("# Roman history\n"), r
    finally:
        lock.release()


def test_delete_restore_purge(cli: CLI, store: FolderStore) -> None:
    assert cli("delete", A, "20260202").ok == (
        f"Moved {A} to the trash (chatcli restore {A} brings it back).\n"
        f"Moved {B} to the trash (chatcli restore {B} brings it back).\n"
    )
    assert not (store.root / f"{A}.json").exists()
    assert (store.root / ".trash" / f"{A}.json").exists()
    assert [d["id"] for d in json.loads(cli("list", "--json").ok)] == [C]
    assert json.loads(cli("search", "rome", "--json").ok) == []
    assert cli("restore", A[:10]).ok == f"Restored {A}.\n"
    assert [d["id"] for d in json.loads(cli("list", "--json").ok)] == [C, A]
    # restore never overwrites
    make(store, B, "a new session with the same id", [("q", "a")])
    assert "already exists" in cli("restore", B).error()
    assert json.loads((store.root / f"{B}.json").read_text())["title"] == "a new session with the same id"
    # --purge asks; without a terminal it needs --yes
    assert "--yes" in cli("delete", "--purge", C).error()
    assert (store.root / f"{C}.json").exists()
    assert cli("delete", "--purge", "--yes", C, B).ok  # B: the live one; the trashed B stays
    assert not (store.root / f"{C}.json").exists() and not (store.root / f"{B}.json").exists()
    assert (store.root / ".trash" / f"{B}.json").exists()
    assert cli("delete", "--purge", "--yes", B).ok  # now from the trash
    assert not (store.root / ".trash" / f"{B}.json").exists()
    assert "no session" in cli("restore", B).error()
    assert "no session" in cli("delete", "nope").error()


def test_prune(cli: CLI, store: FolderStore) -> None:
    assert (
        cli("prune", "--older-than", "30d", "--dry-run").ok
        == f"{A}\n1 session would be moved to the trash.\n"
    )
    assert (store.root / f"{A}.json").exists()
    assert cli("prune", "--older-than", "30d").ok == "Moved 1 session to the trash.\n"  # A: 40 days old
    assert "Moved 1 session " in cli("prune", "--older-than", "2d").ok  # B: 3 days old
    assert cli("prune", "--older-than", "2d").ok == "Moved 0 sessions to the trash.\n"
    assert sorted(p.name for p in (store.root / ".trash").iterdir()) == [f"{A}.json", f"{B}.json"]
    assert "not an age" in cli("prune", "--older-than", "soon").error(2)


# -- export and import ----------------------------------------------------------------------------------
def test_export_formats(cli: CLI, store: FolderStore, tmp_path: Path) -> None:
    md = cli("export", A, "--format", "md").ok
    assert md.startswith("# Roman history") and "Augustus" in md
    assert json.loads(cli("export", A, "-f", "snapshot").ok) == json.loads(
        (store.root / f"{A}.json").read_text()
    )
    lines = [json.loads(x) for x in cli("export", A, "-f", "jsonl").ok.splitlines()]
    assert [(x["role"], x["content"]) for x in lines][:2] == [
        ("user", "Who founded Rome?"),
        ("assistant", "Romulus, by legend, in 753 BC."),
    ]
    target = tmp_path / "out.md"
    assert cli("export", A, "-o", str(target)).ok == f"Wrote {target} ({target.stat().st_size} bytes).\n"
    assert target.read_text().startswith("# Roman history")
    target.write_text("mine")
    assert "already exists" in cli("export", B, "-o", str(target)).error()
    assert target.read_text() == "mine"
    assert "unknown export format" in cli("export", A, "-f", "pdf").error(2)


def test_import_round_trip_and_openai_shapes(cli: CLI, store: FolderStore, tmp_path: Path) -> None:
    exported = tmp_path / "a.json"
    exported.write_text(cli("export", A, "-f", "snapshot").ok)
    before = files(store.root)
    new_id = cli("import", str(exported)).ok.strip().splitlines()[-1]
    assert new_id != A  # A exists: the import gets a new id, nothing is overwritten
    assert files(store.root).items() >= before.items()
    assert (
        json.loads((store.root / f"{new_id}.json").read_text())["messages"]
        == json.loads(exported.read_text())["messages"]
    )

    plain = tmp_path / "openai.json"
    plain.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Be terse."},
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        )
    )
    sid = cli("import", str(plain)).ok.strip().splitlines()[-1]
    snap = json.loads((store.root / f"{sid}.json").read_text())
    assert snap["system"] == "Be terse." and [m["content"] for m in snap["messages"]] == ["Hi", "Hello"]
    assert snap["title"] == "Hi"

    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]))
    assert cli("import", str(listed)).ok
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text(cli("export", B, "-f", "jsonl").ok)
    sid = cli("import", str(jsonl)).ok.strip().splitlines()[-1]
    assert [m["content"] for m in json.loads((store.root / f"{sid}.json").read_text())["messages"]] == [
        "How long to boil pasta?",
        "About ten minutes, al dente.",
    ]


@pytest.mark.parametrize(
    "content, says",
    [
        ('{"hello": "world"}', "neither a chatcli session"),
        ('"just a string"', "neither a chatcli session"),
        ('[{"role": "wizard", "content": "x"}]', "needs a role"),
        ('[{"role": "user"}]', "needs a role"),
        ("[42]", "is not an object"),
        ('[{"role": "system", "content": "only a system prompt"}]', "no user or assistant messages"),
        ("", "is empty"),
        ("not json at all", "not JSON"),
        ('{"format": "chatcli.session", "version": 99, "id": "x"}', "newer"),
        ('{"format": "chatcli.session", "version": 1, "id": "../../x"}', ""),
    ],
)
def test_import_wrong_shapes(cli: CLI, store: FolderStore, tmp_path: Path, content: str, says: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    before = files(store.root)
    line = cli("import", str(bad)).error()
    assert says in line
    assert files(store.root) == before


def test_import_missing_file(cli: CLI, store: FolderStore, tmp_path: Path) -> None:
    assert "cannot read" in cli("import", str(tmp_path / "nope.json")).error()


# -- fork and stats -------------------------------------------------------------------------------------
def test_fork(cli: CLI, store: FolderStore) -> None:
    new = cli("fork", A, "--at", "1").ok.strip().splitlines()[-1]
    snap = json.loads((store.root / f"{new}.json").read_text())
    assert [m["content"] for m in snap["messages"]] == ["Who founded Rome?", "Romulus, by legend, in 753 BC."]
    assert snap["forked_from"] == A and snap["title"] == "Roman history (fork)"
    whole = cli("fork", "Roman history").ok.strip().splitlines()[-1]
    assert len(json.loads((store.root / f"{whole}.json").read_text())["messages"]) == 4
    assert "past its end" in cli("fork", A, "--at", "5").error(2)
    assert len(json.loads((store.root / f"{A}.json").read_text())["messages"]) == 4  # the source is untouched


def test_stats(cli: CLI, store: FolderStore) -> None:
    (store.root / "20260404-000000-dddd.json").write_text("{")
    t = json.loads(cli("stats", "--json").ok)
    assert t["sessions"] == 3 and t["active_7d"] == 2 and t["damaged"] == 1
    assert (t["messages"], t["user_messages"], t["assistant_messages"]) == (12, 6, 6)
    assert (t["prompt_tokens"], t["completion_tokens"], t["cached_tokens"]) == (60, 30, 12)
    assert t["models"] == [
        {"model": "openai/gpt-4o-mini", "sessions": 2},
        {"model": "openai/llama3.2", "sessions": 1},
    ]
    assert t["mean_messages"] == 4.0
    assert t["bytes"] == sum((store.root / f"{i}.json").stat().st_size for i in (A, B, C))
    assert cli("stats").ok == (
        "sessions    3 (2 active in the last 7 days); 1 damaged file\n"
        "messages    12 (6 user, 6 assistant); 4.0 per session on average\n"
        f"characters  {t['characters']}\n"
        "tokens      60 prompt · 30 completion · 12 cached\n"
        "models      openai/gpt-4o-mini (2), openai/llama3.2 (1)\n"
        f"disk used   {t['bytes']:,} bytes in {store.root}\n"
    )


def test_the_lock_folder_is_out_of_sight_of_every_listing(
    cli: CLI, store: FolderStore, tmp_path: Path
) -> None:
    for sid in (B, C):
        assert cli("rename", sid, f"title {sid[-4:]}").ok  # takes and lets go of the session's lock
    assert cli("prune", "--older-than", "30d").ok == "Moved 1 session to the trash.\n"  # A, locked likewise
    assert [d["id"] for d in json.loads(cli("list", "--trash", "--json").ok)] == [A]
    assert cli("restore", A).ok == f"Restored {A}.\n"
    locks = store.root / ".locks"
    assert sorted(p.name for p in locks.iterdir()) == [f"{A}.lock", f"{B}.lock", f"{C}.lock"]
    assert not list(store.root.glob(".*.lock"))
    assert [d["id"] for d in json.loads(cli("list", "--json").ok)] == [C, B, A]  # (ok: no damaged file)
    t = json.loads(cli("stats", "--json").ok)
    assert (t["sessions"], t["damaged"]) == (3, 0)
    assert t["bytes"] == sum((store.root / f"{i}.json").stat().st_size for i in (A, B, C))
    assert [h["session_id"] for h in json.loads(cli("search", "rome", "--json").ok)] == [A]
    assert json.loads(cli("migrate", "--to", str(tmp_path / "copy"), "--json").ok)["copied"] == [A, B, C]
    assert sorted(p.name for p in (tmp_path / "copy").glob("*.json")) == [f"{i}.json" for i in (A, B, C)]


def test_every_library_command_has_help(cli: CLI) -> None:
    for cmd in (
        "list",
        "show",
        "search",
        "rename",
        "delete",
        "restore",
        "prune",
        "export",
        "import",
        "fork",
        "stats",
    ):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Usage: chatcli " + cmd in r.stdout, cmd
