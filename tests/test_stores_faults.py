"""Faults on every engine, through real chatcli processes: SIGKILL mid-reply, the database stopped hard in the
middle of a session and started again, chatcli killed while the database is away, another machine writing
meanwhile, two machines sharing one PostgreSQL and one MariaDB, and a password that must end up in no file."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chatcli.model import Message
from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store

from chatproc import Chat, Turns
from engines import SERVER_ENGINES, SERVERS
from fakellm import FakeLLMServer, Reply


def opened(spec: str) -> Store:
    return open_store(parse_store(spec), timeout=10)


def messages(spec: str) -> list[tuple[str, str, str]]:
    """(role, content, status) of every message of the store's only session."""
    st = opened(spec)
    try:
        (sid,) = st.ids()
        return [(m["role"], m["content"], m["status"]) for m in st.load(sid).to_json()["messages"]]
    finally:
        st.close()


def chatcli(*args: str) -> list[str]:
    return ["-m", "chatcli", *args]


def hard_stop(engine: str, srv: Any) -> None:
    srv.stop(SERVERS[engine].hard_stop)


def spool_files(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["CHATCLI_STATE_DIR"]).glob("spool/*/*.json"))


def test_sigkill_mid_reply_keeps_the_message_and_the_reply_so_far(
    store_spec: str, fake_llm: FakeLLMServer, child_env: dict[str, str]
) -> None:
    words = [f"w{i} " for i in range(300)]
    fake_llm.enqueue(Reply(tokens=words, delay_each=0.02))
    chat = Chat(chatcli("new", "--base-url", fake_llm.url + "/v1", "--store", store_spec), child_env)
    try:
        chat.send("tell me a long story")
        assert chat.wait_for(b"w80 ", 30), chat.text("err")
        time.sleep(0.7)  # a reply is saved every 0.25 s while it streams
    finally:
        chat.kill()
        chat.wait()
    shown = chat.text()
    (user, reply) = messages(store_spec)
    assert user == ("user", "tell me a long story", "ok")
    assert reply[0] == "assistant" and reply[2] == "interrupted"  # saved while streaming: read back as cut
    assert "".join(words).startswith(reply[1]) and len(reply[1]) >= len("".join(words[:80]))
    assert shown.count("w") >= reply[1].count("w") - 15  # what was on screen, up to the last quarter second
    chat = Chat(chatcli("resume", "last", "--store", store_spec), child_env)  # the lock died with the process
    chat.send("history")
    chat.close_stdin()
    assert chat.wait() == 0, chat.text("err")
    assert "[interrupted]" in chat.text()


@pytest.mark.parametrize("engine", SERVER_ENGINES, indirect=True)
def test_the_database_stopped_hard_mid_session_loses_nothing(
    engine: str, store_spec: str, server: Any, fake_llm: FakeLLMServer, child_env: dict[str, str]
) -> None:
    chat = Chat(chatcli("new", "--base-url", fake_llm.url + "/v1", "--store", store_spec), child_env)
    turns = Turns(chat)
    assert "Echo: first" in turns.turn("first")[0]
    hard_stop(engine, server)
    try:
        out, err = turns.turn("second, the database is down")
        assert "Echo: second, the database is down" in out
        assert "kept on this machine" in err and err.count("kept on this machine") == 1, err
        assert len(spool_files(child_env)) == 1
        out, err = turns.turn("third, still down")
        assert "Echo: third, still down" in out and "kept on this machine" not in err  # said once
    finally:
        server.start()
    out, err = turns.turn("fourth, it is back")
    assert "answers again" in err, (out, err, chat.text("err"))
    chat.send("quit")
    assert chat.wait() == 0, chat.text("err")
    assert "is saved. Resume it with" in chat.text()
    assert spool_files(child_env) == []
    assert [(r, c) for r, c, _ in messages(store_spec)] == [
        ("user", "first"),
        ("assistant", "Echo: first"),
        ("user", "second, the database is down"),
        ("assistant", "Echo: second, the database is down"),
        ("user", "third, still down"),
        ("assistant", "Echo: third, still down"),
        ("user", "fourth, it is back"),
        ("assistant", "Echo: fourth, it is back"),
    ]


@pytest.mark.parametrize("engine", SERVER_ENGINES, indirect=True)
def test_killed_while_the_database_is_away_the_turn_comes_back_at_resume(
    engine: str, store_spec: str, server: Any, fake_llm: FakeLLMServer, child_env: dict[str, str]
) -> None:
    chat = Chat(chatcli("new", "--base-url", fake_llm.url + "/v1", "--store", store_spec), child_env)
    turns = Turns(chat)
    turns.turn("before")
    hard_stop(engine, server)
    try:
        turns.turn("while it was away")
        chat.kill()
        chat.wait()
        chat = Chat(chatcli("resume", "last", "--store", store_spec), child_env)
        chat.close_stdin()
        assert chat.wait() == 1
        err = chat.text("err")
        assert err.count("\n") == 1 and "1 session with turns kept on this machine" in err, err
    finally:
        server.start()
    chat = Chat(chatcli("resume", "last", "--store", store_spec), child_env)
    chat.send("history")
    chat.close_stdin()
    assert chat.wait() == 0, chat.text("err")
    assert "the turns kept on this machine are in" in chat.text("err")
    assert "while it was away" in chat.text()
    assert [c for _, c, _ in messages(store_spec)] == [
        "before",
        "Echo: before",
        "while it was away",
        "Echo: while it was away",
    ]
    assert spool_files(child_env) == []


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_turns_kept_locally_never_overwrite_another_machines_turns(
    engine: str,
    store_spec: str,
    server: Any,
    fake_llm: FakeLLMServer,
    child_env: dict[str, str],
    tmp_path: Path,
) -> None:
    chat = Chat(chatcli("new", "--base-url", fake_llm.url + "/v1", "--store", store_spec), child_env)
    turns = Turns(chat)
    turns.turn("mine, saved")
    hard_stop(engine, server)
    try:
        turns.turn("mine, kept locally")
        chat.kill()
        chat.wait()
    finally:
        server.start()
    other = opened(store_spec)  # another machine continues the session meanwhile
    try:
        (sid,) = other.ids()
        lock = other.lock(sid)
        conv = other.load(sid)
        conv.messages.append(Message("user", "theirs"))
        other.save(conv, changed_from=2)
        lock.release()
    finally:
        other.close()
    r = Chat(chatcli("sync", "--store", store_spec), child_env)
    assert r.wait() == 1
    assert "was not written back" in r.text("err") and "nothing was overwritten" in r.text("err")
    (kept,) = spool_files(child_env)
    assert [c for _, c, _ in messages(store_spec)][-1] == "theirs"
    r = Chat(chatcli("import", str(kept), "--store", store_spec), child_env)
    assert r.wait() == 0, r.text("err")
    st = opened(store_spec)
    try:
        new = r.text().split()[-1]
        assert [m["content"] for m in st.load(new).to_json()["messages"]][-2:] == [
            "mine, kept locally",
            "Echo: mine, kept locally",
        ]
    finally:
        st.close()
    assert "it is no longer in the local spool" in r.text()
    assert spool_files(child_env) == []  # brought in: no warning at every later command, sync has nothing
    r = Chat(chatcli("sync", "--store", store_spec), child_env)
    assert r.wait() == 0 and "Nothing to sync" in r.text(), r.text("err")


def machine(child_env: dict[str, str], root: Path) -> dict[str, str]:
    """The environment of another computer: its own home, config and state folders."""
    (root / "home").mkdir(parents=True)
    return dict(
        child_env,
        HOME=str(root / "home"),
        CHATCLI_STATE_DIR=str(root / "state"),
        CHATCLI_CONFIG=str(root / "config.toml"),
        XDG_CONFIG_HOME=str(root / "home" / ".config"),
    )


@pytest.mark.parametrize("engine", SERVER_ENGINES, indirect=True)
def test_two_machines_share_sessions_and_one_writes_at_a_time(
    store_spec: str, fake_llm: FakeLLMServer, child_env: dict[str, str], tmp_path: Path
) -> None:
    laptop, workstation = (
        machine(child_env, tmp_path / "laptop"),
        machine(child_env, tmp_path / "workstation"),
    )
    a = Chat(chatcli("new", "--base-url", fake_llm.url + "/v1", "--store", store_spec), laptop)
    Turns(a).turn("my secret word is ostrich")
    listed = Chat(chatcli("list", "--store", store_spec), workstation)
    assert listed.wait() == 0 and "my secret word is ostrich" in listed.text()
    found = Chat(chatcli("search", "ostri", "--store", store_spec), workstation)
    assert found.wait() == 0 and "ostrich" in found.text()
    refused = Chat(chatcli("resume", "last", "--store", store_spec), workstation)
    assert refused.wait() == 1 and "is open in another chatcli" in refused.text("err")
    a.send("quit")
    assert a.wait() == 0
    b = Chat(chatcli("resume", "last", "--store", store_spec), workstation)
    assert "Echo: what is my secret word" in Turns(b).turn("what is my secret word")[0]
    assert [m["content"] for m in fake_llm.requests[-1]["json"]["messages"]] == [
        "my secret word is ostrich",
        "Echo: my secret word is ostrich",
        "what is my secret word",
    ]
    refused = Chat(chatcli("resume", "last", "--store", store_spec), laptop)
    assert refused.wait() == 1 and "is open in another chatcli" in refused.text("err")
    b.kill()  # the server lets go of a killed chatcli's lock with its connection
    b.wait()
    for _ in range(50):  # (the server notices the closed connection a moment later)
        a = Chat(chatcli("resume", "last", "--store", store_spec), laptop)
        a.send("history")
        a.close_stdin()
        if a.wait() == 0:
            break
        time.sleep(0.1)
    assert "what is my secret word" in a.text(), a.text("err")


def test_a_database_password_is_written_to_no_file(
    pg_server: Any, mariadb_server: Any, fake_llm: FakeLLMServer, child_env: dict[str, str], tmp_path: Path
) -> None:
    canary = "canary-" + secrets.token_hex(6)
    cwd = tmp_path / "work"
    cwd.mkdir()
    for srv in (pg_server, mariadb_server):
        spec = srv.new_database(user="canary" + srv.kind[:2].lower(), password=canary)
        chat = Chat(chatcli("new", "--base-url", fake_llm.url + "/v1", "--store", spec), child_env, cwd=cwd)
        turns = Turns(chat)
        turns.turn("hello")
        turns.turn("export")
        turns.turn("stats")
        srv.stop("immediate" if srv.kind == "PostgreSQL" else "kill")
        try:
            turns.turn("while it is away")  # a spool file and a notice that names the store
            chat.send("quit")
            assert chat.wait() == 0
            down = Chat(chatcli("list", "--store", spec), child_env, cwd=cwd)
            assert down.wait() == 1 and "***" in down.text("err")
            kept = spool_files(child_env)
            assert kept and all(canary.encode() not in p.read_bytes() for p in kept)
            assert all(b"***" in p.read_bytes() for p in kept)  # the store is named in it, masked
        finally:
            srv.start()
        for args in (
            ("list",),
            ("search", "hello"),
            ("show", "last"),
            ("stats",),
            ("sync",),
            ("export", "last", "-o", str(cwd / f"out-{srv.kind}.md")),
            ("fork", "last"),
            ("rename", "last", "renamed"),
            ("resume", "last"),
        ):
            r = Chat(chatcli(*args, "--store", spec), child_env, cwd=cwd)
            r.close_stdin()
            assert r.wait() == 0, (args, r.text("err"))
            assert canary not in r.text() and canary not in r.text("err"), args
        assert canary not in chat.text() and canary not in chat.text("err")
    checked = []
    for folder in (tmp_path, Path(child_env["CHATCLI_STATE_DIR"]), Path(child_env["HOME"])):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert canary.encode() not in path.read_bytes(), path
                checked.append(path.name)
    assert (
        len([n for n in checked if n.startswith("chatcli-") and n.endswith(".md")]) == 2
    )  # the REPL's exports
    assert {"out-PostgreSQL.md", "out-MariaDB.md"} <= set(checked)


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_a_lock_check_that_waited_on_close_opens_no_connection(engine: str, store_for: Any) -> None:
    from chatcli.stores.sql import SQLStore

    st = opened(store_for(engine))
    sql = getattr(st, "primary", st)
    assert isinstance(sql, SQLStore)
    lock = sql.lock("20260101-000000-keep")
    checked: list[bool] = []
    runner = sql.runner
    with runner._mutex:  # the keeper wakes while close holds the connection ...
        keeper = threading.Thread(target=lambda: checked.append(runner.keep_locks()))
        keeper.start()
        time.sleep(0.2)
        runner._close()  # ... which releases the locks and drops the connection
    keeper.join(10)
    assert checked == [False] and runner._conn is None  # the check found nothing held: nothing reopened
    lock.release()
    st.close()
