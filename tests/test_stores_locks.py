"""Row locks between writers on one real database (PostgreSQL, MariaDB): a save the database picks as a
deadlock's victim is run again as a whole transaction and lands once; a save that waits on a row lock past
the store's timeout is rolled back and says the database did not answer (StoreUnavailable: the session
keeps the turn in its spool), leaving nothing half written; the next save goes through."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from chatcli.errors import StoreUnavailable
from chatcli.stores import open_store, parse_store

from engines import SERVER_ENGINES
from test_dbservers import my_connect, pg_connect
from test_stores import A, B, put, snap


def other_writer(engine: str, spec: str) -> Any:
    """A connection of another program to the same database, in a transaction of its own."""
    if engine == "postgresql":
        conn = pg_connect(spec)
    else:
        conn = my_connect(spec)
        conn.cursor().execute("SET SESSION innodb_lock_wait_timeout = 30")
    return conn


def saved_in_thread(st: Any, conv: Any, changed_from: int) -> tuple[threading.Thread, list[Any]]:
    """``st.save`` run in a thread (it blocks on a lock); its result or error lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(st.save(conv, changed_from=changed_from))
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_a_save_chosen_as_a_deadlock_victim_is_run_again_and_lands_once(engine: str, store_for: Any) -> None:
    spec = store_for(engine)
    st = open_store(parse_store(spec), timeout=20)
    reader = open_store(parse_store(spec), timeout=20)
    other = other_writer(engine, spec)
    try:
        put(st, snap(A, turns=[("q1", "a1"), ("q2", "a2")]))
        put(st, snap(B, turns=[(f"q{i}", f"a{i}") for i in range(40)]))
        conv = st.load(A)
        conv.messages[1].content = "a1, changed"
        lock = st.lock(A)
        cur = other.cursor()
        # the other writer changes many rows (the database rolls back the smaller transaction), then the
        # message row chatcli's save is about to write
        cur.execute("UPDATE chatcli_messages SET status = status WHERE session_id = %s", (B,))
        cur.execute("UPDATE chatcli_messages SET status = status WHERE session_id = %s AND idx = 1", (A,))
        thread, out = saved_in_thread(st, conv, 1)  # takes the session row, then waits on the message row
        time.sleep(0.5)
        # now the other writer waits on the session row chatcli's transaction holds: a deadlock
        cur.execute("UPDATE chatcli_sessions SET title = title WHERE id = %s", (A,))
        time.sleep(0.3)
        other.commit()
        thread.join(30)
        assert out and not isinstance(out[0], Exception), out
        assert st.runner.deadlocks_retried >= 1  # it was the victim, and ran again
        lock.release()
        got = reader.load(A)
        assert [m.content for m in got.messages] == ["q1", "a1, changed", "q2", "a2"]
        assert reader.row_version(A) == (st.saved_version(A), st.writer)  # one version step, by chatcli
    finally:
        other.close()
        reader.close()
        st.close()


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_a_save_held_up_by_a_row_lock_is_rolled_back_and_said_unavailable(
    engine: str, store_for: Any
) -> None:
    spec = store_for(engine)
    st = open_store(parse_store(spec), timeout=2)
    reader = open_store(parse_store(spec), timeout=20)
    other = other_writer(engine, spec)
    try:
        put(st, snap(A, turns=[("q1", "a1")]))
        conv = st.load(A)
        lock = st.lock(A)
        conv.messages[1].content = "a1, changed"
        conv.messages[1].status = "ok"
        before = reader.row_version(A)
        other.cursor().execute("UPDATE chatcli_sessions SET title = title WHERE id = %s", (A,))
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not answer within 2 s"):
            st.save(conv, changed_from=1)
        assert time.monotonic() - t0 < 10
        other.commit()
        assert reader.row_version(A) == before  # nothing of the save was written
        assert [m.content for m in reader.load(A).messages] == ["q1", "a1"]
        st.save(conv, changed_from=1)  # the database answers again: the same save goes through
        assert [m.content for m in reader.load(A).messages] == ["q1", "a1, changed"]
        lock.release()
    finally:
        other.close()
        reader.close()
        st.close()
