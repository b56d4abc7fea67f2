"""Every library command and the REPL on every engine, with the same output and the same errors whatever
the store: the library's transcript in-process (tests/transcript.py), sessions started, resumed and broken
stores as a user runs them (``python -m chatcli`` in a child process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatcli.model import FORMAT, VERSION
from chatcli.stores import parse_store
from transcript import CLI, ScriptedBackend, masked

from engines import DATABASES, ENGINES
from fakellm import FakeLLMServer

A, B, C = "20260101-090000-aaaa", "20260202-100000-bbbb", "20260303-110000-cccc"
ID_RE = re.compile(r"\b\d{8}-\d{6}-[0-9a-z]{4}\b")


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def snapshot(
    sid: str, title: str, updated: str, turns: list[tuple[str, str]], model: str = "gpt-4o-mini", **extra: Any
) -> dict[str, Any]:
    msgs: list[dict[str, Any]] = []
    for q, a in turns:
        msgs.append({"role": "user", "content": q, "created_at": updated, "status": "ok"})
        msgs.append(
            {
                "role": "assistant",
                "content": a,
                "created_at": updated,
                "status": "ok",
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 2},
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "id": sid,
        "title": title,
        "created_at": updated,
        "updated_at": updated,
        "backend": "openai",
        "model": model,
        "base_url": "",
        "params": {},
        "system": "",
        "context_start": 0,
        "messages": msgs,
        **extra,
    }


SESSIONS = [
    snapshot(
        A,
        "Roman history",
        "2025-10-01T09:00:00.000Z",
        [("Who founded Rome?", "Romulus, by legend."), ("And the empire?", "Augustus was first.")],
    ),
    snapshot(
        B,
        "Cooking pasta",
        "2026-02-02T10:00:00.000Z",
        [("How long to boil pasta?", "About ten minutes.")],
        model="llama3.2",
    ),
    snapshot(
        C, "Rust lifetimes", "2026-03-03T11:00:00.000Z", [("Explain lifetimes", "A lifetime names a borrow.")]
    ),
]


def normalised(text: str, store: str, tmp_path: Path) -> str:
    """Output with what differs by engine taken out: the store's name, file paths, sizes on disk."""
    text = (
        text.replace(store, "<STORE>")
        .replace(parse_store(store).display, "<STORE>")
        .replace(str(tmp_path), "<TMP>")
    )
    text = re.sub(
        r"<STORE>(/(\.trash/)?[0-9a-z-]+\.json| \(session [0-9a-z-]+(, in the trash)?\))",
        "<STORE>(session)",
        text,
    )
    text = re.sub(r"[\d,]+ bytes in", "N bytes in", text)
    text = re.sub(r'"bytes": \d+', '"bytes": N', text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "<TIME>", text)  # when an import or rename ran
    return re.sub(r"\b\d\d:\d\d\b", "<HH:MM>", text)


SCRIPT: list[tuple[str, ...]] = [
    ("list",),
    ("list", "--json"),
    ("list", "--model", "LLAMA"),
    ("list", "--since", "2026-01-01", "--limit", "1"),
    ("show", "aaaa"),
    ("show", "Cooking pasta", "--raw"),
    ("show", "last", "--json"),
    ("search", "romulus"),
    ("search", "pasta", "--role", "user", "--json"),
    ("search", "zzzz"),
    ("stats",),
    ("stats", "--json"),
    ("rename", "bbbb", "Boiling pasta"),
    ("show", "bbbb", "--raw"),
    ("export", "cccc", "--format", "jsonl"),
    ("export", "aaaa", "--format", "md"),
    ("delete", "aaaa"),
    ("list",),
    ("list", "--trash", "--json"),
    ("restore", "aaaa"),
    ("list", "--trash"),
    ("delete", "cccc", "--purge", "--yes"),
    ("prune", "--older-than", "30d", "--dry-run"),
    ("prune", "--older-than", "30d"),
    ("list", "--all"),
    ("show", "zzzz"),
    ("show", "../etc"),
    ("rename", "bbbb", "bad\ntitle"),
    ("restore", "bbbb"),
    ("delete", "cccc"),
    ("search", "x", "--role", "bot"),
]


def transcript(cli: CLI, store: str, tmp_path: Path) -> list[tuple[tuple[str, ...], int, str, str]]:
    """SESSIONS imported into ``store``, then every command of SCRIPT run on it (in this process: see
    tests/transcript.py): (args, exit code, stdout, stderr), normalised."""
    files = tmp_path / "in"
    files.mkdir(parents=True, exist_ok=True)
    for s in SESSIONS:
        path = files / f"{s['id']}.json"
        path.write_text(json.dumps(s))
        r = cli("import", str(path), "--store", store)
        assert r.exit_code == 0 and r.stdout.split()[-1] == s["id"], r.stderr
    out = []
    for args in SCRIPT:
        r = cli(*args, "--store", store)
        out.append(
            (args, r.exit_code, normalised(r.stdout, store, tmp_path), normalised(r.stderr, store, tmp_path))
        )
    return out


def test_every_library_command_gives_the_same_output_on_every_engine(
    cli: CLI, store_for: Any, tmp_path: Path
) -> None:
    results = {engine: transcript(cli, store_for(engine), tmp_path / engine) for engine in ENGINES}
    folder = results["folder"]
    failing = {
        ("show", "zzzz"),
        ("show", "../etc"),
        ("rename", "bbbb", "bad\ntitle"),
        ("restore", "bbbb"),
        ("delete", "cccc"),
        ("search", "x", "--role", "bot"),
    }
    for args, code, _, err in folder:
        assert "Traceback" not in err, (args, err)
        if args in failing:
            assert code != 0 and len(err.strip().splitlines()) == 1, (args, code, err)
        else:
            assert code == 0, (args, err)
    for engine in DATABASES:
        for (args, code, out, err), (_, fcode, fout, ferr) in zip(results[engine], folder, strict=True):
            assert (code, out, err) == (fcode, fout, ferr), f"{engine}: chatcli {' '.join(args)}"


def test_a_match_in_an_attached_file_shows_its_name_and_line_on_every_engine(
    cli: CLI, scripted: ScriptedBackend, store_spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plan.md").write_text(
        "# Plan\n\n- buy flour\n- bake the bread at 220 degrees for forty minutes, then let it cool\n- eat\n"
    )
    scripted.enqueue("At 220 degrees.")
    question = "what temperature for the bread?"
    assert cli("ask", "-f", "notes/plan.md", question, "--store", store_spec).ok == "At 220 degrees.\n"

    def search(*words: str) -> str:
        return masked(cli("search", *words, "--role", "user", "--store", store_spec).ok)

    head = f"<ID> · {question} · turn 1 · user\n"
    assert search("degrees") == (
        f"{head}  [file notes/plan.md, line 4] - bake the bread at 220 degrees for forty minutes, then let it "
        "cool\n1 hit\n"
    )
    assert search("plan") == f"{head}  [file notes/plan.md]\n1 hit\n"  # (the header's own words)
    assert search("temperature") == f"{head}  {question}\n1 hit\n"  # the text typed, without the file


@pytest.mark.parametrize("engine", DATABASES, indirect=True)
def test_new_resume_fork_and_import_on_a_database(
    child_env: dict[str, str], store_spec: str, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    base = ["--base-url", fake_llm.url + "/v1", "--store", store_spec]
    r = run(child_env, "new", *base, stdin="my name is Ada\nand I like tea\n")
    assert r.returncode == 0, r.stderr
    sid = ID_RE.search(r.stdout).group(0)  # type: ignore[union-attr]
    assert "Resume it with: chatcli resume" in r.stdout and "--store" in r.stdout
    assert "***" not in r.stdout  # the resume hint carries no password at all
    r = run(child_env, "resume", "last", "--store", store_spec, stdin="what is my name\n")
    assert r.returncode == 0, r.stderr
    assert "my name is Ada" in r.stdout  # the history is shown
    sent = fake_llm.requests[-1]["json"]["messages"]
    assert [m["content"] for m in sent] == [
        "my name is Ada",
        "Echo: my name is Ada",
        "and I like tea",
        "Echo: and I like tea",
        "what is my name",
    ]
    r = run(child_env, "fork", sid, "--at", "1", "--store", store_spec)
    assert r.returncode == 0, r.stderr
    fork = r.stdout.strip().splitlines()[-1]
    shown = json.loads(run(child_env, "show", fork, "--json", "--store", store_spec).stdout)
    assert shown["forked_from"] == sid and len(shown["messages"]) == 2
    exported = tmp_path / "x.json"
    assert (
        run(
            child_env, "export", sid, "--format", "json", "-o", str(exported), "--store", store_spec
        ).returncode
        == 0
    )
    r = run(child_env, "import", str(exported), "--store", store_spec)
    assert r.returncode == 0 and r.stdout.split()[-1] != sid  # the id is taken: a new one
    r = run(child_env, "stats", "--store", store_spec)
    assert "3 (3 active" in r.stdout, r.stdout
    r = run(child_env, "new", *base, stdin="hi\nstats\n")
    assert r.returncode == 0, r.stderr
    new = ID_RE.search(r.stdout).group(0)  # type: ignore[union-attr]
    stats = "".join(r.stdout.split())  # (a long address is folded over two lines)
    assert f"storedin{parse_store(store_spec).display}(session{new})" in stats, r.stdout


@pytest.mark.parametrize(
    "spec, phrase, code",
    [
        (
            "postgresql://nobody@127.0.0.1:9/chats",
            "cannot connect to postgresql://nobody@127.0.0.1:9/chats",
            1,
        ),
        ("mysql://nobody:pw@127.0.0.1:9/chats", "cannot connect to mysql://nobody:***@127.0.0.1:9/chats", 1),
        ("redis://127.0.0.1/0", "unknown store", 2),
        ("mysql://u@h", "names no database", 2),
    ],
)
def test_a_store_that_cannot_be_used_is_one_line_and_writes_nothing(
    child_env: dict[str, str], tmp_path: Path, spec: str, phrase: str, code: int
) -> None:
    for args in (
        ("list",),
        ("new", "--base-url", "http://127.0.0.1:9/v1"),
        ("resume", "last"),
        ("search", "x"),
        ("sync",),
        ("migrate", "--to", str(tmp_path / "out")),
    ):
        r = (
            run(child_env, *args, "--store", spec)
            if args[0] != "migrate"
            else run(child_env, *args, "--from", spec)
        )
        assert r.returncode == code, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0], (args, r.stderr)
        assert "pw@" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "sessions").exists()
    assert not Path(child_env["CHATCLI_STATE_DIR"]).exists()  # no state folder, no log, no spool


def test_wrong_password_missing_database_and_unsupported_server(
    child_env: dict[str, str], pg_server: Any, mariadb_server: Any
) -> None:
    pg = pg_server.new_database(user="pwtest", password="right-one")
    my = mariadb_server.new_database(user="pwtest", password="right-one")
    cases = [
        (
            pg.replace("right-one", "wrong-one"),
            'refused the login (FATAL: password authentication failed for user "pwtest"): give the password in '
            "the URL, PGPASSWORD or ~/.pgpass",
        ),
        (
            my.replace("right-one", "wrong-one"),
            "refused the login (Access denied for user 'pwtest'@'127.0.0.1' (using password: YES)): give the "
            "password in the URL or MYSQL_PWD",
        ),
        (
            pg.rsplit("/", 1)[0] + "/no_such_db",
            "the database 'no_such_db' does not exist; create it (e.g. `createdb`)",
        ),
        (
            my.rsplit("/", 1)[0] + "/no_such_db",
            "the database 'no_such_db' does not exist or user 'pwtest' may not use it",
        ),
    ]
    for spec, phrase in cases:
        r = run(child_env, "list", "--store", spec)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and phrase in r.stderr, r.stderr
        assert "wrong-one" not in r.stderr and "right-one" not in r.stderr
    # libpq's own PGPASSWORD, and MYSQL_PWD, stand in for a password left out of the URL
    env = dict(child_env, PGPASSWORD="right-one", MYSQL_PWD="right-one")
    for spec in (pg, my):
        r = run(env, "list", "--store", spec.replace(":right-one@", "@"))
        assert r.returncode == 0, r.stderr
    code = (
        "import sys, chatcli.stores.postgresql as p; p.MIN_VERSION = 990000; sys.argv = ['chatcli', 'list', "
        f"'--store', {pg!r}]; from chatcli.cli import main; main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env, timeout=60
    )
    assert r.returncode == 1 and "chatcli needs PostgreSQL 12 or newer" in r.stderr, r.stderr


def test_a_missing_driver_says_which_extra_to_install(
    child_env: dict[str, str], pg_server: Any, mariadb_server: Any
) -> None:
    for module, spec, extra in (
        ("psycopg", pg_server.new_database(), "chatcli[postgresql]"),
        ("pymysql", mariadb_server.new_database(), "chatcli[mysql]"),
    ):
        code = (
            f"import sys; sys.modules[{module!r}] = None; sys.argv = ['chatcli', 'list', '--store', {spec!r}]; "
            "from chatcli.cli import main; main()"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=child_env, timeout=60
        )
        assert r.returncode == 1 and extra in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_the_folder_store_needs_no_database_driver(
    child_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    code = (
        "import sys; sys.argv = ['chatcli', 'new', '--base-url', sys.argv[1]]; from chatcli.cli import main\n"
        "try:\n    main()\nfinally:\n"
        "    loaded = sorted(m for m in ('psycopg', 'pymysql', 'sqlite3') if m in sys.modules)\n"
        "    print('LOADED', loaded, file=sys.stderr)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, fake_llm.url + "/v1"],
        input="hi\n",
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stderr  # a driver is imported only when its engine is used


def test_a_new_sqlite_store_is_named_in_a_form_every_tool_reads_alike(
    cli: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert not Path("/chats.db").exists()
    assert cli("new", "--store", "sqlite:///chats.db", input="hi\n").error(2) == (
        "error: 'sqlite:///chats.db' could name /chats.db or ./chats.db, and neither exists yet: write "
        "sqlite:////chats.db for /chats.db or sqlite://chats.db for ./chats.db"
    )
    assert not (tmp_path / "chats.db").exists()
    out = cli("new", "--store", "sqlite://chats.db", input="hi\n").ok
    sid = ID_RE.search(out).group(0)  # type: ignore[union-attr]
    assert f"Resume it with: chatcli resume {sid} --store sqlite://chats.db" in out
    listed = cli("list", "--store", "sqlite:///chats.db").ok  # the file exists now: ./chats.db, not /chats.db
    assert [line.split()[0] for line in listed.splitlines()[1:]] == [sid]


def test_reading_an_sqlite_store_that_does_not_exist_creates_nothing(
    cli: CLI, scripted: ScriptedBackend, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'new' / 'chats.db'}"  # (tmp_path also holds the user's home)
    for args in (["list"], ["new"], ["search", "x"]):  # a folder that does not exist is never made
        assert cli(*args, "--store", store, input="hi\n").error(1) == (
            f"error: cannot use {store}: the folder {tmp_path / 'new'} does not exist (chatcli makes the "
            f"database file, not its folder): create it, or fix the path"
        )
    assert not (tmp_path / "new").exists() and not scripted.requests
    (tmp_path / "new").mkdir()
    for args in (["list"], ["list", "--trash"], ["search", "x"], ["stats"], ["prune", "--older-than", "1d"]):
        assert cli(*args, "--store", store).exit_code == 0, args
    assert cli("show", "last", "--store", store).error(1).startswith("error: there are no sessions in ")
    assert cli("delete", "aaaa", "--store", store).error(1).startswith("error: no session 'aaaa'")
    assert list((tmp_path / "new").iterdir()) == []
    r = cli("new", "--store", store, input="hello\n")
    sid = ID_RE.search(r.ok).group(0)  # type: ignore[union-attr]
    assert (tmp_path / "new" / "chats.db").is_file()
    assert [m.split()[0] for m in cli("list", "--store", store).ok.splitlines()[1:]] == [sid]
    assert scripted.requests[0].pairs() == [("user", "hello")]
