"""The store contract, run against every engine: the JSON folder, SQLite, and a real PostgreSQL and MariaDB
(started by the test session, see conftest.py). Each test gets a fresh, empty store."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from chatcli.errors import (
    InvalidSessionId,
    SessionExists,
    SessionLocked,
    SessionNotFound,
    StoreConflict,
)
from chatcli.model import FORMAT, VERSION, Conversation
from chatcli.search import HIGHLIGHT
from chatcli.snapshot import resolve
from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store

from engines import DATABASES, ENGINES

A, B, C = "20260101-090000-aaaa", "20260202-100000-bbbb", "20260303-110000-cccc"


def snap(
    sid: str,
    *,
    title: str = "",
    updated: str = "2026-01-01T09:00:00.000Z",
    model: str = "fake-model",
    turns: list[tuple[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for q, a in turns if turns is not None else [("hello", "Hi!")]:
        messages.append(
            {"role": "user", "content": q, "created_at": "2026-01-01T09:00:00.000Z", "status": "ok"}
        )
        messages.append(
            {
                "role": "assistant",
                "content": a,
                "created_at": "2026-01-01T09:00:01.000Z",
                "status": "ok",
                "finish_reason": "stop",
                "model": model,
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 2},
                "timings": {
                    "ttft_s": 0.31,
                    "duration_s": 0.42,
                    "tokens_per_second": 27.3,
                    "server": {"predicted_ms": 12.5},
                },
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "id": sid,
        "title": title,
        "created_at": "2026-01-01T09:00:00.000Z",
        "updated_at": updated,
        "backend": "openai",
        "model": model,
        "base_url": "http://127.0.0.1:1/v1",
        "params": {"temperature": 0.7},
        "system": "Be brief.",
        "context_start": 0,
        "messages": messages,
        **extra,
    }


def js(conv: Conversation) -> dict[str, Any]:
    """A session as its snapshot (what the tests compare and change)."""
    return conv.to_json()


def cv(data: dict[str, Any]) -> Conversation:
    """A snapshot (a copy of it) as the session the stores take."""
    return Conversation.from_json(copy.deepcopy(data))


def opened(spec: str) -> Store:
    return open_store(parse_store(spec), timeout=10)


@pytest.fixture
def store(store_spec: str) -> Iterator[Store]:
    st = opened(store_spec)
    yield st
    st.close()


def put(store: Store, s: dict[str, Any]) -> dict[str, Any]:
    lock = store.lock(s["id"])
    try:
        store.create(cv(s))
    finally:
        lock.release()
    return s


# -- a session read back equals the snapshot written --------------------------------------------------------
ODD = snap(
    A,
    title="Café ☕ \"quotes\" and 'apostrophes'",
    forked_from="x",
    custom={"nested": [1, 2.5, None]},
    turns=[("NUL \x00 in text, emoji 👩‍💻, RTL שלום", "a\nmultiline\n```code```"), ("", "")],
    clears=[0],
    changes=[{"at": 2, "what": "model", "from": "a", "to": "b", "created_at": "t"}],
    model_path="/m.gguf",
    context_window=4096,  # a field chatcli knows that has no column of its own
)
ODD["messages"][1]["context"] = {"start": 0, "tokens": 30, "exact": True, "window": 4096}
ODD["messages"][0]["weird_key"] = {"deep": ["x", {"y": True}]}
ODD["messages"][1]["finish_reason"] = None  # explicit null, not absent
ODD["messages"][1]["error"] = 42  # a field of an unexpected type
ODD["messages"][2].pop("created_at")  # absent, not null
ODD["messages"][3]["usage"] = None


def test_round_trip_keeps_every_field_and_unknown_keys(store: Store, store_spec: str) -> None:
    put(store, ODD)
    assert js(store.load(A)) == ODD
    again = opened(store_spec)
    try:
        assert js(again.load(A)) == ODD  # a fresh connection reads the same
    finally:
        again.close()


def test_incremental_saves_write_what_changed(store: Store, store_spec: str) -> None:
    s = put(store, snap(A, turns=[("one", "1")]))
    lock = store.lock(A)
    try:
        loaded = js(store.load(A))
        loaded["messages"].append({"role": "user", "content": "two", "status": "ok"})
        store.save(cv(loaded), changed_from=2)
        loaded["messages"].append({"role": "assistant", "content": "tw", "status": "streaming"})
        store.save(cv(loaded), changed_from=3)
        loaded["messages"][3] = {"role": "assistant", "content": "two, done", "status": "ok"}
        store.save(cv(loaded), changed_from=3)
        loaded["messages"][1] = dict(loaded["messages"][1], dropped="retried")
        loaded["title"] = "renamed"
        store.save(cv(loaded), changed_from=1)
    finally:
        lock.release()
    fresh = opened(store_spec)
    try:
        back = js(fresh.load(A))
    finally:
        fresh.close()
    assert back == loaded
    assert [m["content"] for m in back["messages"]] == ["one", "1", "two", "two, done"]
    assert back["messages"][1]["dropped"] == "retried"
    assert s["title"] == "" and back["title"] == "renamed"
    row = store.page().rows[0]
    assert (row.turns, row.messages, row.tokens, row.title) == (
        2,
        3,
        0,
        "renamed",
    )  # dropped ones not counted


def test_a_save_without_a_load_writes_the_whole_snapshot(store: Store, store_spec: str) -> None:
    put(store, snap(A, turns=[("one", "1"), ("two", "2")]))
    other = opened(store_spec)
    try:
        lock = other.lock(A)
        shorter = snap(A, title="replaced", turns=[("only", "this")])
        other.save(cv(shorter))
        lock.release()
        assert js(other.load(A)) == shorter
    finally:
        other.close()


def test_create_never_overwrites(store: Store) -> None:
    put(store, snap(A))
    with pytest.raises(SessionExists):
        put(store, snap(A, title="other"))
    store.trash(A)
    with pytest.raises(SessionExists):
        put(store, snap(A, title="other"))
    assert js(store.load(A, trashed=True))["title"] == ""


def test_unknown_and_hostile_ids(store: Store) -> None:
    with pytest.raises(SessionNotFound):
        js(store.load(B))
    for bad in ("../x", "a/b", "x\x00y", "", "x y", "é"):
        for call in (store.load, store.lock, store.trash, store.restore, store.exists):
            with pytest.raises(InvalidSessionId):
                call(bad)
    assert store.ids() == []


# -- locks ---------------------------------------------------------------------------------------------------
def test_one_writer_per_session(store: Store, store_spec: str) -> None:
    put(store, snap(A))
    other = opened(store_spec)
    try:
        lock = store.lock(A)
        with pytest.raises(SessionLocked, match="open in another chatcli"):
            other.lock(A)
        with pytest.raises(SessionLocked):
            other.trash(A)
        with pytest.raises(SessionLocked):
            other.purge(A)
        other.lock(B).release()  # another session is not affected
        assert js(other.load(A)) == snap(A)  # reading is always allowed
        lock.release()
        other.lock(A).release()
    finally:
        other.close()


def test_the_lock_of_a_killed_process_is_free_again(store: Store, store_spec: str) -> None:
    put(store, snap(A))
    code = textwrap.dedent(f"""
        import time
        from chatcli.stores import open_store, parse_store
        st = open_store(parse_store({store_spec!r}))
        lock = st.lock({A!r})
        print("LOCKED", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "LOCKED"
        with pytest.raises(SessionLocked):
            store.lock(A)
        child.kill()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    store.lock(A).release()  # the server (or the OS) released it with the process


# -- ids, resolve ------------------------------------------------------------------------------------------
def test_ids_newest_titles_and_resolve(store: Store) -> None:
    put(store, snap(A, title="groceries", updated="2026-01-05T00:00:00.000Z"))
    put(store, snap(B, title="Rust lifetimes", updated="2026-01-03T00:00:00.000Z"))
    put(store, snap(C, title="groceries plan", updated="2026-01-04T00:00:00.000Z"))
    assert store.ids() == [A, B, C]
    assert store.newest_id() == A
    assert store.ids_titled("groceries") == [A]
    assert store.ids_titled("Groceries") == []  # case counts
    assert resolve(store, "last") == A
    assert resolve(store, "20260202") == B
    assert resolve(store, "cccc") == C
    assert resolve(store, "Rust lifetimes") == B
    with pytest.raises(SessionNotFound, match="3 exist"):
        resolve(store, "zzz")
    assert store.exists(A) and not store.exists(A, trashed=True)


# -- the trash ---------------------------------------------------------------------------------------------
def test_trash_restore_purge(store: Store) -> None:
    put(store, snap(A))
    put(store, snap(B))
    store.trash(A)
    assert store.ids() == [B] and store.trashed_ids() == [A]
    assert js(store.load(A, trashed=True)) == snap(A)
    with pytest.raises(SessionNotFound):
        js(store.load(A))
    with pytest.raises(SessionNotFound):
        store.trash(A)
    assert [r.id for r in store.page().rows] == [B]
    store.restore(A)
    assert store.ids() == [A, B] and store.trashed_ids() == []
    with pytest.raises(SessionNotFound):
        store.restore(A)
    store.trash(A)
    put(store, snap(C))
    store.purge(A, trashed=True)
    assert store.trashed_ids() == []
    with pytest.raises(SessionNotFound):
        store.purge(A, trashed=True)
    store.purge(B)
    assert store.ids() == [C]
    with pytest.raises(SessionNotFound):
        store.purge(B)


def test_the_trash_is_listed_newest_first(store: Store) -> None:
    assert store.page(trashed=True).rows == [] and store.page(trashed=True).damaged == []
    put(store, snap(A, title="first", updated="2026-01-01T09:00:00.000Z"))
    put(store, snap(B, title="second", updated="2026-02-02T10:00:00.000Z"))
    put(store, snap(C, title="kept"))
    store.trash(A)
    store.trash(B)
    page = store.page(trashed=True)
    rows, damaged = page.rows, page.damaged
    assert [(r.id, r.title, r.turns, r.tokens) for r in rows] == [(B, "second", 1, 15), (A, "first", 1, 15)]
    assert damaged == [] and rows[0].location == store.location(B, trashed=True)
    assert store.location(B, trashed=True) != store.location(B)
    assert page.total == 2 and [r.id for r in store.page(1, trashed=True, since="2026-02-01").rows] == [B]
    assert [r.id for r in store.page(trashed=True, title="first").rows] == [A]


# -- the catalog -----------------------------------------------------------------------------------------------
def library(store: Store) -> None:
    put(
        store,
        snap(
            A,
            title="Roman history",
            updated="2025-11-20T09:00:00.000Z",
            model="gpt-4o-mini",
            turns=[
                ("Who founded Rome?", "Romulus, by legend, in 753 BC."),
                ("And the empire?", "Augustus became the first emperor."),
            ],
        ),
    )
    put(
        store,
        snap(
            B,
            title="Cooking pasta",
            updated="2026-02-02T10:00:00.000Z",
            model="Llama3.2",
            turns=[("How long to boil pasta?", "About ten minutes, al dente.")],
        ),
    )
    put(
        store,
        snap(
            C,
            title="Café crème",
            updated="2026-03-03T11:00:00.000Z",
            model="gpt-4o-mini",
            turns=[("Naïve question about élan", "Elan means momentum; of a kind.")],
        ),
    )


def test_page_orders_filters_and_counts(store: Store) -> None:
    library(store)
    page = store.page()
    assert [r.id for r in page.rows] == [C, B, A] and page.total == 3 and page.damaged == []
    rome = page.rows[2]
    assert (rome.title, rome.backend, rome.model, rome.turns, rome.messages, rome.tokens) == (
        "Roman history",
        "openai",
        "gpt-4o-mini",
        2,
        4,
        30,
    )
    assert rome.created_at == "2026-01-01T09:00:00.000Z" and rome.updated_at == "2025-11-20T09:00:00.000Z"
    assert [r.id for r in store.page(1).rows] == [C] and store.page(1).total == 3
    assert [r.id for r in store.page(since="2026-01-01").rows] == [C, B]
    assert [r.id for r in store.page(before="2026-03-01").rows] == [B, A]
    assert [r.id for r in store.page(model="LLAMA").rows] == [B]
    assert [r.id for r in store.page(model="4o").rows] == [C, A]
    assert [r.id for r in store.page(title="Cooking pasta").rows] == [B]
    assert store.page(title="cooking pasta").rows == []
    assert store.page(0).rows == [] and store.page(0).total == 3


def test_search_every_word_as_a_prefix_case_and_accents_ignored(store: Store) -> None:
    library(store)
    check_search(store)


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_mysql_looks_for_frequent_words_newest_first_with_the_same_results(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(A word in much of a big MySQL store is looked for with REGEXP among the newest messages, not by
    FULLTEXT: made to happen here on a small store.)"""
    from chatcli.stores import mysql

    monkeypatch.setattr(mysql, "BIG", 0)
    monkeypatch.setattr(mysql, "FREQUENT", 1e-9)
    library(store)
    check_search(store)


def check_search(store: Store) -> None:

    def found(text: str, **kw: Any) -> list[tuple[str, str, int]]:
        return [(h.session_id, h.role, h.position) for h in store.search(text, **kw)]

    assert found("romulus") == [(A, "assistant", 1)]
    assert found("ROM") and all(h[0] == A for h in found("ROM"))
    assert {(h[1], h[2]) for h in found("ELAN")} == {("user", 0), ("assistant", 1)}
    assert found("naive") == [(C, "user", 0)]
    assert found("cafe") == [(C, "title", -1)]
    assert found("about ten") == [(B, "assistant", 1)]  # every word; "about" is a stopword elsewhere
    assert found("of") == [(C, "assistant", 1)]  # shorter than InnoDB's minimum word size
    assert found("pasta", role="user") == [(B, "user", 0)]
    assert found("pasta", role="title") == [(B, "title", -1)]
    assert found("pasta", session_id=A) == []
    assert found("zzz") == [] and found("  ") == [] and found("rome empire") == []
    hit = store.search("romulus")[0]
    assert hit.title == "Roman history" and hit.turn == 1
    assert hit.snippet == f"{HIGHLIGHT[0]}Romulus{HIGHLIGHT[1]}, by legend, in 753 BC."
    store.trash(A)
    assert found("romulus") == []  # the trash is not searched
    assert len(store.search("a", limit=2)) <= 2


def test_totals(store: Store) -> None:
    library(store)
    t = store.totals(active_since="2026-01-01T00:00:00.000Z")
    assert (t["sessions"], t["active"], t["messages"], t["user_messages"], t["assistant_messages"]) == (
        3,
        2,
        8,
        4,
        4,
    )
    assert (t["prompt_tokens"], t["completion_tokens"], t["cached_tokens"]) == (40, 20, 8)
    assert t["characters"] == sum(
        len(m["content"])
        for s in (js(store.load(A)), js(store.load(B)), js(store.load(C)))
        for m in s["messages"]
    )
    assert t["models"] == [("openai/gpt-4o-mini", 2), ("openai/Llama3.2", 1)]
    assert t["damaged"] == 0 and t["bytes"] > 0


# -- the version counter: another writer's save is never overwritten ------------------------------------
@pytest.mark.parametrize("engine", DATABASES, indirect=True)
def test_a_save_over_another_writers_version_is_refused(store: Store, store_spec: str) -> None:
    put(store, snap(A, turns=[("one", "1")]))
    mine = js(store.load(A))
    other = opened(store_spec)
    try:
        theirs = js(other.load(A))
        theirs["messages"].append({"role": "user", "content": "theirs", "status": "ok"})
        other.save(cv(theirs), changed_from=2)  # (a writer that lost its lock, or broke the rules)
    finally:
        other.close()
    mine["messages"].append({"role": "user", "content": "mine", "status": "ok"})
    with pytest.raises(StoreConflict, match=r"changed .* by another chatcli"):
        store.save(cv(mine), changed_from=2)
    check = opened(store_spec)
    try:
        assert js(check.load(A))["messages"][-1]["content"] == "theirs"
    finally:
        check.close()


def test_a_first_write_with_nothing_read_before_it_is_kept(store_spec: str) -> None:
    """A store that has read nothing yet (for SQLite: no file yet) keeps the first session written to it."""
    first = opened(store_spec)
    try:
        first.create(cv(snap(A, title="the very first")))
    finally:
        first.close()
    again = opened(store_spec)
    try:
        assert again.ids() == [A] and js(again.load(A)) == snap(A, title="the very first")
    finally:
        again.close()


# -- the suite itself ----------------------------------------------------------------------------------------
def test_the_contract_suite_runs_on_every_engine_chatcli_has() -> None:
    import chatcli.stores

    assert ENGINES == chatcli.stores.ENGINES  # (a new engine is an entry in tests/engines.py too)


def test_the_contract_suite_runs_on_one_engine_with_the_engine_option() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--engine",
            "sqlite",
            __file__,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert r.returncode == 0 and len(ids) > 10, r.stdout + r.stderr
    assert all(line.endswith("[sqlite]") for line in ids), ids
