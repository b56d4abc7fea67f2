"""Moving between stores (``chatcli migrate``) and upgrading a database's schema: a round trip through every
engine gives back every snapshot, trash and unknown keys included; running it twice copies nothing twice; a
session that differs is reported, never overwritten; a database made with the first schema is upgraded."""

from __future__ import annotations

import copy
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli.errors import StoreError, StoreUnavailable
from chatcli.library import migrate
from chatcli.model import Conversation
from chatcli.snapshot import NO_COUNTS, message_counts
from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_rows import JSON_FIELDS, MESSAGE_COLUMNS, message_row, session_params
from chatcli.stores.sql_runner import x
from chatcli.stores.sql_schema import MIGRATION_NAMES, transaction

from engines import DATABASES
from test_stores import ODD, A, B, C, cv, put, snap

_OPEN: list[Store] = []


def opened(spec: str) -> Store:
    """A store for ``spec``, closed at the end of the test."""
    st = open_store(parse_store(spec), timeout=10)
    _OPEN.append(st)
    return st


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def fill(store: Store) -> dict[str, dict[str, Any]]:
    """Sessions of every shape, one of them in the trash; returns them by id."""
    made = {
        A: copy.deepcopy(ODD),
        B: snap(B, title="plain", turns=[("q", "a")] * 3),
        C: snap(C, title="in the trash", system="", params={}),
    }
    made[B]["messages"][3]["dropped"] = "retried"
    for s in made.values():
        put(store, s)
    store.trash(C)
    return made


def everything(store: Store) -> dict[str, tuple[bool, dict[str, Any]]]:
    out = {sid: (False, store.load(sid).to_json()) for sid in store.ids()}
    out.update({sid: (True, store.load(sid, trashed=True).to_json()) for sid in store.trashed_ids()})
    return out


def test_a_round_trip_through_every_engine_gives_back_every_snapshot(store_for: Any, tmp_path: Path) -> None:
    specs = [
        store_for("folder"),
        store_for("sqlite"),
        store_for("postgresql"),
        store_for("mysql"),
        str(tmp_path / "back"),
    ]
    first = opened(specs[0])
    made = fill(first)
    original = everything(first)
    assert {sid: s for sid, (_, s) in original.items()} == made and original[C][0] is True
    for src_spec, dst_spec in itertools.pairwise(specs):
        src, dst = opened(src_spec), opened(dst_spec)
        try:
            report = migrate(src, dst)
            assert sorted(report.copied) == [A, B, C] and not (
                report.same or report.differs or report.damaged
            )
            assert everything(dst) == original, f"{src_spec} -> {dst_spec}"
            again = migrate(src, dst)  # a second run copies nothing twice
            assert again.copied == [] and sorted(again.same) == [A, B, C] and again.differs == []
        finally:
            src.close()
            dst.close()
    back = opened(specs[-1])
    assert everything(back) == original
    assert (
        back.load(A).to_json()["messages"][0]["content"].startswith("NUL \x00")
    )  # through PostgreSQL and back


def test_a_session_that_differs_is_reported_and_never_overwritten(store_for: Any) -> None:
    src, dst = opened(store_for("folder")), opened(store_for("postgresql"))
    fill(src)
    put(dst, snap(B, title="another machine's B"))
    report = migrate(src, dst, dry_run=True)
    assert sorted(report.copied) == [A, C] and report.differs == [B]
    assert dst.ids() == [B] and dst.trashed_ids() == []  # a dry run writes nothing
    report = migrate(src, dst)
    assert report.differs == [B] and dst.load(B).header.title == "another machine's B"
    assert sorted(report.copied) == [A, C]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatcli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize("engine", DATABASES)
def test_a_migrate_killed_half_way_copies_the_rest_when_run_again(
    engine: str, store_for: Any, child_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatcli import library

    src_root = tmp_path / "many"
    src = open_store(parse_store(str(src_root)), timeout=10)
    turns = [(f"question {k}", "answer " * 40) for k in range(20)]
    ids = [f"20260101-{9000 + k // 100:06d}-a{k % 100:03d}" for k in range(300)]
    for sid in ids:
        put(src, snap(sid, title=f"t {sid}", turns=turns))
    spec = store_for(engine)
    code = (
        "import sys, time; from chatcli import library; from chatcli.stores import open_store, parse_store\n"
        "made = library._copy_batch\n"
        "def slow(dst, batch, report):\n"
        "    made(dst, batch, report); print('BATCH', flush=True); time.sleep(30)\n"
        "library.BATCH_SESSIONS = 100; library._copy_batch = slow\n"
        f"library.migrate(open_store(parse_store({str(src_root)!r})), open_store(parse_store({spec!r})))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=child_env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"BATCH"
    finally:
        proc.kill()  # killed after its first batch was committed
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    dst = open_store(parse_store(spec), timeout=10)
    try:
        assert len(dst.ids()) == 100  # one whole batch: a transaction each
        monkeypatch.setattr(library, "BATCH_SESSIONS", 100)
        report = migrate(src, dst)  # run again: the rest, nothing twice
        assert len(report.copied) == 200 and len(report.same) == 100 and not report.differs
        assert sorted(dst.ids()) == sorted(ids)
        for sid in ids[::37]:
            assert dst.load(sid).to_json() == src.load(sid).to_json()
    finally:
        dst.close()
        src.close()


def test_the_migrate_command(store_for: Any, child_env: dict[str, str]) -> None:
    folder, mysql = store_for("folder"), store_for("mysql")
    made = fill(opened(folder))
    r = run(child_env, "migrate", "--to", mysql, "--dry-run")  # --from: the configured store (the folder)
    assert r.returncode == 0, r.stderr
    assert "would copy 3 sessions; 0 already there" in r.stdout
    assert opened(mysql).ids() == []
    r = run(child_env, "migrate", "--from", folder, "--to", mysql, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert sorted(report["copied"]) == [A, B, C] and report["to"] == parse_store(mysql).display
    assert "chatcli-secret" not in r.stdout  # the password stays out of the report
    r = run(child_env, "migrate", "--from", folder, "--to", mysql)
    assert r.returncode == 0 and "copied 0 sessions; 3 already there" in r.stdout, r.stdout
    st = opened(mysql)
    lock = st.lock(A)
    changed = st.load(A)
    changed.header.title = "changed there"
    st.save(changed, changed_from=len(changed.messages))
    lock.release()
    r = run(child_env, "migrate", "--from", folder, "--to", mysql)
    assert r.returncode == 1 and f"{A} is in both stores with different content" in r.stderr
    assert opened(mysql).load(A).header.title == "changed there" and made[A]["title"] != "changed there"
    r = run(child_env, "migrate", "--from", mysql, "--to", mysql)
    assert r.returncode == 2 and "the same store" in r.stderr


# -- the schema ----------------------------------------------------------------------------------------------
def write_as_first_schema(store: SQLStore, s: dict[str, Any], upto: int = 1) -> None:
    """Rows as a chatcli with schema ``upto`` wrote them: 1 had no search index yet, 2 the engines' own
    full-text search (SQLite's triggers index the rows as they go in)."""
    d = store.dialect
    conv = Conversation.from_json(s)
    total = NO_COUNTS
    for m in conv.messages:
        total = total.plus(message_counts(m))
    header = session_params(conv.header, total, len(conv.messages))
    names = ["id", *header, "version", "writer"]
    rows, turn = [], 0
    keep = [k for k, c in enumerate(MESSAGE_COLUMNS, 1) if c != "parts"]  # those schemas had no parts column
    for i, m in enumerate(conv.messages):
        turn += m.role == "user"
        row = message_row(conv.id, i, max(turn, 1), m, d.holds_nul)
        rows.append((row[0], *(row[k] for k in keep)))
    mcols = ["session_id", *(c for c in MESSAGE_COLUMNS if c != "parts")]

    def insert(cur: Any) -> None:
        x(
            cur,
            f"INSERT INTO chatcli_sessions ({', '.join(d.q(c) for c in names)}) VALUES "
            f"({', '.join(d.value(c in JSON_FIELDS) for c in names)})",
            [s["id"], *header.values(), 1, None],
        )
        for row in rows:
            marks = [d.value(c in ("usage", "timings", "extra")) for c in mcols]
            x(
                cur,
                f"INSERT INTO chatcli_messages ({', '.join(d.q(c) for c in mcols)}) VALUES ({', '.join(marks)})",
                row,
            )

    store.engine.writing()  # (an SQLite file is made for a write)
    conn = store.engine.connect(None)
    try:
        store.schema.migrate(conn, upto=upto)
        with transaction(conn.cursor(), d.begin_write) as cur:
            insert(cur)
        assert store.schema.version(conn) == upto
    finally:
        conn.close()


def schema_versions(st: SQLStore) -> list[int]:
    """The versions chatcli_schema records, in order."""
    rows = x(
        st.runner.connection().cursor(), "SELECT version FROM chatcli_schema ORDER BY version"
    ).fetchall()
    return [int(v[0]) for v in rows]


@pytest.mark.parametrize("engine", DATABASES, indirect=True)
def test_a_database_made_with_the_first_schema_is_upgraded(store_spec: str) -> None:
    old = opened(store_spec)
    assert isinstance(old, SQLStore) and len(old.engine.migrations) == len(MIGRATION_NAMES)
    write_as_first_schema(old, copy.deepcopy(ODD))
    write_as_first_schema(old, snap(B, title="Roman history", turns=[("Who founded Rome?", "Romulus.")]))
    st = opened(store_spec)  # the current chatcli: the missing migration runs on first use
    try:
        assert st.load(A).to_json() == ODD
        assert [h.session_id for h in st.search("romulus")] == [B]  # the new search index holds the old rows
        assert [h.role for h in st.search("roman")] == ["title"]
        assert {r.id for r in st.page().rows} == {A, B}
        assert isinstance(st, SQLStore)
        assert schema_versions(st) == list(range(1, len(MIGRATION_NAMES) + 1))
    finally:
        st.close()


@pytest.mark.parametrize("engine", DATABASES, indirect=True)
def test_a_database_of_todays_release_is_indexed_again_by_chatclis_words(store_spec: str) -> None:
    old = opened(store_spec)
    assert isinstance(old, SQLStore) and [name for name, _ in old.engine.migrations] == list(MIGRATION_NAMES)
    turns = [("안녕하세요 친구", "हिंदी भाषा"), ("がぎぐ ＡＢＣ", "foo_bar x.y")]
    write_as_first_schema(old, snap(A, title="Ελληνικά ΆΛΦΑ", turns=turns), upto=2)
    st = opened(store_spec)  # "search words" runs on first use
    try:
        for query, role in [
            ("안녕", "user"),
            ("हिंदी", "assistant"),
            ("ぎぐ", "user"),
            ("abc", "user"),
            ("bar", "assistant"),
            ("y", "assistant"),
            ("αλφα", "title"),
        ]:
            assert [(h.session_id, h.role) for h in st.search(query)] == [(A, role)], query
        assert isinstance(st, SQLStore)
        assert schema_versions(st) == list(range(1, len(MIGRATION_NAMES) + 1))
    finally:
        st.close()


@pytest.mark.parametrize("engine", DATABASES, indirect=True)
def test_a_schema_newer_than_this_chatcli_is_refused(store_spec: str) -> None:
    st = opened(store_spec)
    assert isinstance(st, SQLStore)
    put(st, snap(A))  # the tables exist once a session was saved (an SQLite file is made then)
    p = st.dialect.mark
    x(
        st.runner.connection().cursor(),
        f"INSERT INTO chatcli_schema (version, applied_at) VALUES ({p}, {p})",
        (9, "2030-01-01T00:00:00.000Z"),
    )
    st.close()
    with pytest.raises(StoreError, match="schema version 9, newer than this chatcli knows"):
        opened(store_spec).ids()


@pytest.mark.parametrize("engine", DATABASES, indirect=True)
def test_chatclis_opening_a_new_database_at_once_make_the_tables_once(
    store_spec: str, child_env: dict[str, str]
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "chatcli", "list", "--store", store_spec],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "No sessions yet" in out
    st = opened(store_spec)
    assert isinstance(st, SQLStore)
    assert schema_versions(st) == list(range(1, len(MIGRATION_NAMES) + 1))
    st.close()


@pytest.mark.parametrize("engine", DATABASES)
def test_the_bulk_path_indexes_what_it_loads_and_leaves_the_indexing_of_saves_as_it_was(
    engine: str, store_for: Any
) -> None:
    """``create_many`` loads messages by the engine's bulk path (COPY; SQLite sets its insert triggers
    aside): search finds their text, reasoning and titles, and a save afterwards is indexed as before."""
    spec = store_for(engine)
    dst = opened(spec)
    if engine == "sqlite":
        put(dst, snap(A, title="before the batch", turns=[("earlier words", "fine")]))
        triggers = _sqlite_triggers(dst)
    batch = []
    for k, sid in enumerate((B, C)):
        s = snap(sid, title=f"batch title{k}", turns=[(f"loadedword{k} question", "an answer")])
        s["messages"][1]["parts"] = [
            {"type": "reasoning", "text": f"thoughtword{k} first"},
            {"type": "text", "text": "an answer"},
        ]
        del s["messages"][1]["content"]
        batch.append((Conversation.from_json(s), False))
    assert dst.create_many(batch) == [B, C]
    assert [(h.session_id, h.role) for h in dst.search("loadedword1")] == [(C, "user")]
    assert [(h.session_id, h.role) for h in dst.search("thoughtword0", reasoning=True)] == [(B, "reasoning")]
    assert dst.search("thoughtword0") == []  # reasoning only when asked for, as before
    assert {h.session_id for h in dst.search("title1", role="title")} == {C}
    conv = dst.load(B)
    conv.messages.append(conv.messages[0].__class__("user", "afterwards savedword"))
    lock = dst.lock(B)
    try:
        dst.save(conv, changed_from=len(conv.messages) - 1)
    finally:
        lock.release()
    assert [(h.session_id, h.position) for h in dst.search("savedword")] == [(B, 2)]
    if engine == "sqlite":
        assert _sqlite_triggers(dst) == triggers  # set aside and put back as they were
        assert [h.session_id for h in dst.search("earlier")] == [A]


def _sqlite_triggers(store: Store) -> list[tuple[str, str]]:
    assert isinstance(store, SQLStore)
    return sorted(
        store.runner.run(
            "read the schema",
            lambda cur: x(cur, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall(),
        )
    )


def test_a_batch_that_fails_stops_the_migrate_with_the_batches_before_it_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error of a batch is raised by migrate, after the batches before it were written and before any
    after it is."""
    from chatcli import library
    from chatcli.errors import SaveError

    src, dst = opened(str(tmp_path / "from")), opened(str(tmp_path / "to"))
    ids = [f"20260101-0000{k:02d}-b{k:03d}" for k in range(7)]
    for sid in ids:
        put(src, snap(sid, turns=[("q", "a")]))
    calls: list[list[str]] = []
    real = dst.create_many

    def failing(items: Any) -> list[str]:
        calls.append([c.id for c, _ in items])
        if len(calls) == 2:
            raise SaveError("the disk is full", "to")
        return real(items)

    monkeypatch.setattr(dst, "create_many", failing)
    monkeypatch.setattr(library, "BATCH_SESSIONS", 3)
    with pytest.raises(SaveError, match="the disk is full"):
        migrate(src, dst)
    assert calls == [ids[:3], ids[3:6]]  # the third batch never went
    assert sorted(dst.ids()) == ids[:3]


def test_migrate_draws_a_progress_bar_at_a_terminal_and_none_in_a_pipe(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    import pexpect

    from ptyproc import plain

    src = opened(str(tmp_path / "from"))
    for k in range(40):
        put(src, snap(f"20260101-0001{k:02d}-p{k:03d}", turns=[("q", "a")]))
    (tmp_path / "db").mkdir()
    args = ["-m", "chatcli", "migrate", "--from", str(tmp_path / "from")]
    child = pexpect.spawn(
        sys.executable,
        [*args, "--to", f"sqlite:///{tmp_path / 'db' / 'tty.db'}"],
        env=child_env,
        dimensions=(24, 100),
        timeout=60,
        encoding="utf-8",
    )
    child.expect(pexpect.EOF)
    child.close()
    shown = plain(str(child.before))
    assert child.exitstatus == 0, shown
    assert re.search(r"migrating sessions .*40/40", shown), shown  # rich's bar: the count of sessions read
    assert shown.rstrip().endswith("copied 40 sessions; 0 already there")
    piped = run(child_env, *args[2:], "--to", f"sqlite:///{tmp_path / 'db' / 'piped.db'}")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr  # nothing drawn in a pipe


def _slow_rows(st: SQLStore, seconds: float, then: Any = None) -> None:
    """Make ``st`` take ``seconds`` to make each session's message rows (a batch far larger than a test's),
    calling ``then(n)`` after the ``n``-th session's."""
    make, made = st.message_rows, [0]

    def slow(*args: Any) -> Any:
        time.sleep(seconds)
        made[0] += 1
        if then is not None:
            then(made[0])
        return make(*args)

    st.message_rows = slow  # type: ignore[method-assign]


def test_a_copy_that_keeps_sending_outlasts_the_store_timeout(store_for: Any) -> None:
    # PostgreSQL's bulk path streams: the rows of a batch are made while COPY sends the ones before. The
    # watchdog (which cuts a call the network holds up past the store timeout) must see that as progress:
    # here the batch takes 2.4 s to make, against a deadline of 0.5 + 1 s without a row sent.
    st = open_store(parse_store(store_for("postgresql")), timeout=0.5)
    try:
        assert isinstance(st, SQLStore)
        _slow_rows(st, 0.3)
        sessions = [cv(snap(f"20260101-0000{n:02d}-copy", turns=[("q", "a")])) for n in range(8)]
        t = time.monotonic()
        assert st.create_many([(c, False) for c in sessions]) == [c.id for c in sessions]
        assert time.monotonic() - t > 1.5  # (longer than the deadline: it was moved on)
        assert sorted(st.ids()) == sorted(c.id for c in sessions)
        assert all(st.load(c.id) == c for c in sessions)
    finally:
        st.close()


def test_a_network_that_stalls_in_the_middle_of_a_copy_fails_the_batch_within_the_timeout(
    store_for: Any,
) -> None:
    from stallproxy import StallProxy

    spec = store_for("postgresql")
    (server,) = parse_store(spec).hosts
    proxy = StallProxy((server.name, server.port or 0))
    st = open_store(parse_store(proxy.proxied_url(spec)), timeout=1)
    try:
        assert isinstance(st, SQLStore)
        st.ids()  # (connected while the network flows)
        _slow_rows(st, 0.05, lambda n: n == 3 and proxy.stall())
        sessions = [cv(snap(f"20260101-0000{n:02d}-stal", turns=[("q", "a")])) for n in range(6)]
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            st.create_many([(c, False) for c in sessions])
        took = time.monotonic() - t
        # (the watchdog cuts the COPY 1 + 1 s after its last row; the store tries one new connection, which
        # the stalled network holds for its connect timeout, 1 s)
        assert took < 2 * 1 + 3, f"a stalled COPY held the migrate {took:.1f} s"
        proxy.resume()
        assert opened(spec).ids() == []  # the batch's transaction rolled back: nothing half written
    finally:
        st.close()
        proxy.close()


def test_a_migrate_stopped_with_ctrl_c_says_what_it_copied_and_the_next_run_copies_the_rest(
    store_for: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    src_root = tmp_path / "many"
    src = open_store(parse_store(str(src_root)), timeout=10)
    ids = [f"20260101-{9000 + k // 100:06d}-c{k % 100:03d}" for k in range(250)]
    for sid in ids:
        put(src, snap(sid, title=f"t {sid}", turns=[("q", "a")]))
    src.close()
    spec = store_for("sqlite")
    code = (
        "import sys, time; from chatcli import library\n"
        "made = library._copy_batch\n"
        "def slow(dst, batch, report):\n"
        "    made(dst, batch, report); print('BATCH', flush=True); time.sleep(30)\n"
        "library.BATCH_SESSIONS = 100; library._copy_batch = slow\n"
        "sys.argv[0] = 'chatcli'\n"
        "from chatcli.cli import main\n"
        "main()\n"
    )
    args = [sys.executable, "-c", code, "migrate", "--from", str(src_root), "--to", spec]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"BATCH"
    proc.send_signal(signal.SIGINT)  # Ctrl-C, once the first batch is in
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode().strip() == (
        f"stopped: 100 sessions copied to {spec} so far, in whole batches; run the same command again to copy "
        f"the rest"
    )
    again = run(child_env, "migrate", "--from", str(src_root), "--to", spec)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{src_root} → {spec}: copied 150 sessions; 100 already there"
