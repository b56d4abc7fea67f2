"""Hostile failures of the database stores: a save refused for any reason is kept in the local spool (not
only an unreachable server), the spool belongs to the database however its URL is spelled, a message no
store keeps is refused before anything is written, and a password never shows, however it is spelled.

Real PostgreSQL 15 and MariaDB servers (tests/dbservers.py), real chatcli processes where a kill matters,
the in-process harness elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from chatcli.messages import MAX_MESSAGE_BYTES
from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store
from transcript import CLI, ScriptedBackend

import torturelib
from chatproc import Chat, Turns
from engines import ENGINES, SERVER_ENGINES, SERVERS
from fakellm import FakeLLMServer
from torturelib import figure


def opened(spec: str) -> Store:
    return open_store(parse_store(spec), timeout=10)


def contents(spec: str) -> list[str]:
    """The text of every message of every session in the store, sessions in id order."""
    st = opened(spec)
    try:
        return [m.content for sid in st.ids() for m in st.load(sid).messages]
    finally:
        st.close()


def spool_files(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["CHATCLI_STATE_DIR"]).glob("spool/*/*.json"))


@pytest.fixture
def server(engine: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    srv = request.getfixturevalue(SERVERS[engine].fixture)
    yield srv
    _writable(engine, srv)


def _read_only(engine: str, srv: Any) -> None:
    """The database refuses writes, as after a failover to a standby: PostgreSQL's
    default_transaction_read_only for every session, MariaDB's read_only (chatcli's user has no SUPER)."""
    if engine == "postgresql":
        srv._sql(("ALTER SYSTEM SET default_transaction_read_only = on", ()), ("SELECT pg_reload_conf()", ()))
    else:
        srv._sql(("SET GLOBAL read_only = 1", ()))


def _writable(engine: str, srv: Any) -> None:
    if engine == "postgresql":
        srv._sql(("ALTER SYSTEM RESET default_transaction_read_only", ()), ("SELECT pg_reload_conf()", ()))
    else:
        srv._sql(("SET GLOBAL read_only = 0", ()))


def _other_spellings(engine: str, url: str) -> list[str]:
    """The same database named otherwise: the scheme's other name, localhost for 127.0.0.1, the default
    port left in, a connection option added."""
    other = {"postgresql": "postgres", "mysql": "mariadb"}[engine]
    spelled = url.replace(f"{engine}://", f"{other}://", 1).replace("@127.0.0.1:", "@localhost:")
    option = "connect_timeout=5" if engine == "postgresql" else "ssl_verify_cert=false"
    return [spelled, f"{url}?{option}"]


@pytest.mark.parametrize("engine", SERVER_ENGINES, indirect=True)
def test_a_save_the_database_refuses_is_kept_and_synced_under_any_spelling(
    engine: str, store_spec: str, server: Any, fake_llm: FakeLLMServer, child_env: dict[str, str]
) -> None:
    chat = Chat(
        ["-m", "chatcli", "new", "--base-url", fake_llm.url + "/v1", "--store", store_spec], child_env
    )
    turns = Turns(chat)
    turns.turn("first, saved")
    _read_only(engine, server)
    try:
        out, err = turns.turn("second, while the database is read-only")
        assert "kept on this machine" in err and "read" in err.lower(), err
        assert "Echo: second" in out
        time.sleep(0.2)
        chat.kill()  # the turn must outlive chatcli: it is in the spool, not only in memory
        chat.wait()
        (kept,) = spool_files(child_env)
        assert b"second, while the database is read-only" in kept.read_bytes()
        r = Chat(["-m", "chatcli", "sync", "--store", store_spec], child_env)
        assert r.wait() == 1, r.text("err")
        assert "could not save session" in r.text("err") and f"its turns stay in {kept}" in r.text("err")
        assert spool_files(child_env) == [kept]
    finally:
        _writable(engine, server)
    first, second = _other_spellings(engine, store_spec)
    r = Chat(["-m", "chatcli", "sync", "--store", first], child_env)
    assert r.wait() == 0, r.text("err")
    assert "are in" in r.text() and spool_files(child_env) == []
    r = Chat(["-m", "chatcli", "sync", "--store", second], child_env)
    assert r.wait() == 0 and "Nothing to sync" in r.text(), r.text("err")
    assert contents(store_spec) == [
        "first, saved",
        "Echo: first, saved",
        "second, while the database is read-only",
        "Echo: second, while the database is read-only",
    ]
    figure("store failures", f"{engine}: read-only save kept, killed, synced by another spelling", "yes")


def test_one_spool_per_database_however_the_url_is_spelled() -> None:
    same = [
        "postgresql://ann:pw@127.0.0.1/chats",
        "postgres://ann@localhost:5432/chats",
        "postgresql://bob@[::1]/chats?connect_timeout=5&sslmode=require",
        "postgresql:///chats?host=/var/run/postgresql",
    ]
    assert len({parse_store(u).identity for u in same}) == 1
    differ = [
        "postgresql://ann@127.0.0.1/other",
        "postgresql://ann@127.0.0.1:5433/chats",
        "mysql://a@127.0.0.1/chats",
    ]
    assert len({parse_store(u).identity for u in [same[0], *differ]}) == 4
    mysql = ["mysql://u@127.0.0.1/c", "mariadb://v:x@localhost:3306/c?unix_socket=/run/mysqld/mysqld.sock"]
    assert len({parse_store(u).identity for u in mysql}) == 1


# -- a message no store keeps ----------------------------------------------------------------------------
def test_a_message_too_large_for_any_store_is_refused_before_anything_is_written(
    cli: CLI, scripted: ScriptedBackend, store_for: Callable[[str], str]
) -> None:
    huge = "x" * (MAX_MESSAGE_BYTES + 1)
    fits = "é" * (MAX_MESSAGE_BYTES // 2 - 64)  # 4 MiB of UTF-8 less a little: MariaDB takes it too
    refused = []
    for engine in ENGINES:
        store = store_for(engine)
        r = cli("ask", "--store", store, input=huge)
        refused.append(r.error(2))
        assert cli("list", "--store", store).stdout.startswith("No sessions yet"), engine
        r = cli("new", "--store", store, input=f"{huge}\nhello\n")
        assert r.exit_code == 1 and "chatcli keeps at most 4 MiB" in r.stderr, (engine, r.stderr)
        assert "error: 1 of 2 turns failed (turn 1)" in r.stderr, r.stderr
        r = cli("ask", "--store", store, input=fits)
        assert r.exit_code == 0, (engine, r.stderr)
        kept = contents(store)
        assert sorted(kept) == sorted(["hello", "Echo: hello", fits, f"Echo: {fits}"]), engine
    assert len(set(refused)) == 1, refused
    assert refused[0] == (
        "error: the message is 4.0 MiB; chatcli keeps at most 4 MiB of text in one message, on every "
        "store; nothing was sent or saved"
    )
    assert not any(len(r.messages[-1]["content"]) > MAX_MESSAGE_BYTES for r in scripted.requests)
    figure("store failures", "message over 4 MiB: refused on", "folder, sqlite, postgresql, mysql")


# -- a password, however it is spelled --------------------------------------------------------------------
CANARY = "Ca#n?a/r@y p%zz9"  # every character that breaks a URL: #, ?, /, @, a space, a bad % escape


def _spellings(url: str) -> list[str]:
    """The canary's URL of a working login written every way a user might: not encoded, half encoded,
    encoded, as libpq's ?password= option; then a wrong port and an unreachable host with the same
    password."""
    scheme, rest = url.split("://", 1)
    login, where = rest.rsplit("@", 1)
    user = login.split(":", 1)[0]
    host, db = where.split("/", 1)
    spelled = [
        f"{scheme}://{user}:{CANARY}@{host}/{db}",
        f"{scheme}://{user}:{CANARY.replace(' ', '%20')}@{host}/{db}",
        f"{scheme}://{user}:{quote(CANARY, safe='')}@{host}/{db}",
        f"{scheme}://{user}:{CANARY}@{host}:1/{db}",
        f"{scheme}://{user}:{CANARY}@{host.split(':')[0]}:99999/{db}",
        f"{scheme}://{user}:{CANARY}@[::zz]/{db}",
    ]
    if scheme == "postgresql":
        spelled += [f"{scheme}://{user}@{host}/{db}?password={quote(CANARY, safe='')}"]
    return spelled


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_a_password_never_shows_however_the_url_spells_it(
    engine: str, request: pytest.FixtureRequest, cli: CLI, scripted: ScriptedBackend, tmp_path: Path
) -> None:
    srv = request.getfixturevalue(SERVERS[engine].fixture)
    url = srv.new_database(user=f"canary_{engine}", password=CANARY)
    commands = [
        ["new"],
        ["ask", "hi"],
        ["list"],
        ["search", "hi"],
        ["stats"],
        ["show", "last"],
        ["export", "last", "--format", "json", "-o", str(tmp_path / "export.json")],
        ["resume", "last"],
        ["sync"],
    ]
    forms = [
        CANARY,
        quote(CANARY, safe=""),
        quote(CANARY),
        CANARY.replace(" ", "%20"),
        "Ca#n",
        "r@y",
        "p%zz9",
    ]
    ran = 0
    for n, spelled in enumerate(_spellings(url)):
        copy = ["migrate", "--from", spelled, "--to", f"sqlite:///{tmp_path / f'copy{n}.db'}"]
        for args in [[*a, "--store", spelled] for a in commands] + [copy]:
            r = cli(*args, input="hello\n")
            ran += 1
            for form in forms:
                assert form not in r.stdout + r.stderr, (spelled, args, r)
            assert "internal error" not in r.stderr and "Usage:" not in r.stderr, (spelled, args, r.stderr)
        exported = tmp_path / "export.json"
        if exported.exists():
            assert not any(form.encode() in exported.read_bytes() for form in forms), spelled
            exported.unlink()
    checked = torturelib.assert_no_canary(CANARY, tmp_path)
    for form in forms[1:4]:
        torturelib.assert_no_canary(form, tmp_path)
    assert contents(url) and checked > 3  # the spellings that can work did work (and wrote files)
    figure("store failures", f"{engine}: password spellings x commands, canary shown", f"{ran}, 0 times")
    figure("store failures", f"{engine}: files checked for the canary", checked)


def test_a_non_ascii_mariadb_password_works_as_the_mariadb_client_sends_it(
    mariadb_server: Any, cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = mariadb_server.new_database(user="accented", password="pé-ß-пароль")
    assert cli("list", "--store", url).ok.startswith("No sessions yet")  # percent-encoded
    raw = url.replace(quote("pé-ß-пароль", safe=""), "pé-ß-пароль")
    assert cli("list", "--store", raw).ok.startswith("No sessions yet")
    monkeypatch.setenv("MYSQL_PWD", "pé-ß-пароль")
    assert cli("list", "--store", raw.replace(":pé-ß-пароль@", "@")).ok.startswith("No sessions yet")


# -- a lost connection while the REPL waits ----------------------------------------------------------------
def _drop_connections(engine: str, srv: Any, url: str) -> int:
    """The server ends every connection to the database of ``url`` (a restart or a proxy would); the
    session locks held on them go with them. Returns how many it ended."""
    db = url.rsplit("/", 1)[1]
    if engine == "postgresql":
        row = srv._sql(
            ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (db,))
        )
        return int(row[0])
    conn = srv._connect(srv.admin_user, srv.superuser_password, "", 10)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (db,))
        ids = [r[0] for r in cur.fetchall()]
        for i in ids:
            cur.execute(f"KILL {int(i)}")
    return len(ids)


@pytest.mark.parametrize("engine", SERVER_ENGINES, indirect=True)
def test_a_lost_connection_takes_the_session_lock_back_at_once(
    engine: str, store_spec: str, server: Any, fake_llm: FakeLLMServer, child_env: dict[str, str]
) -> None:
    from chatcli.stores.sql_keepalive import LockKeeper

    chat = Chat(
        ["-m", "chatcli", "new", "--base-url", fake_llm.url + "/v1", "--store", store_spec], child_env
    )
    turns = Turns(chat)
    turns.turn("mine")
    st = opened(store_spec)
    (sid,) = st.ids()
    st.close()
    assert _drop_connections(engine, server, store_spec) >= 1
    time.sleep(LockKeeper.interval + 2)  # the REPL sits at its prompt meanwhile
    r = Chat(["-m", "chatcli", "delete", "--purge", "--yes", sid, "--store", store_spec], child_env)
    assert r.wait() == 1 and "is open in another chatcli" in r.text("err"), r.text("err")
    out, err = turns.turn("still mine")
    assert "Echo: still mine" in out and err == "", err
    chat.close_stdin()
    assert chat.wait() == 0, chat.text("err")
    assert contents(store_spec) == ["mine", "Echo: mine", "still mine", "Echo: still mine"]
    figure("store failures", f"{engine}: lock taken back after a lost connection, purge refused", "yes")


def test_a_message_over_a_small_max_allowed_packet_is_kept_and_says_why(
    mariadb_server: Any,
    cli: CLI,
    scripted: ScriptedBackend,
    child_env: dict[str, str],
    user_dirs: dict[str, Path],
) -> None:
    url = mariadb_server.new_database()
    assert cli("list", "--store", url).exit_code == 0  # the tables, made before the setting changes
    text = "y" * 2_000_000  # within chatcli's limit, over a server's 1 MiB packet
    mariadb_server._sql(("SET GLOBAL max_allowed_packet = 1048576", ()))
    try:
        r = cli("ask", "--store", url, "-v", input=text)
        assert r.exit_code == 0, r.stderr  # the reply came; the turn is kept on this machine
        assert "takes statements of at most 1,048,576 bytes (its max_allowed_packet)" in r.stderr
        assert "is kept on this machine" in r.stderr or "kept on this machine" in r.stderr
        assert len(spool_files(child_env)) == 1
        r = cli("sync", "--store", url)
        assert r.exit_code == 1 and "max_allowed_packet" in r.stderr
    finally:
        mariadb_server._sql(("SET GLOBAL max_allowed_packet = 16777216", ()))
    r = cli("sync", "--store", url)
    assert r.exit_code == 0 and spool_files(child_env) == [], r.stderr
    assert contents(url) == [text, f"Echo: {text}"]
    figure(
        "store failures",
        "mysql: message over a 1 MiB max_allowed_packet",
        "kept, said why, synced once raised",
    )


def test_migrate_dry_run_says_what_would_not_fit(
    cli: CLI, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    sid = cli.new("hello")
    path = user_dirs["sessions"] / f"{sid}.json"
    snap = orjson.loads(path.read_bytes())
    snap["messages"][1]["content"] = "z" * (MAX_MESSAGE_BYTES + 10)  # as an older chatcli could have kept it
    path.write_bytes(orjson.dumps(snap))
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    r = cli("migrate", "--to", target, "--dry-run")
    assert r.exit_code == 1
    assert f"would not copy: session {sid}: message 1 is 4.0 MiB" in r.stderr
    r = cli("migrate", "--to", target, "--json")
    assert r.exit_code == 1 and orjson.loads(r.stdout)["too_large"][0]["session_id"] == sid


def test_turns_an_older_chatcli_kept_are_found_under_the_new_spool_name(
    pg_server: Any, cli: CLI, user_dirs: dict[str, Path]
) -> None:
    url = pg_server.new_database()
    assert cli("new", "--store", url, input="first\n").exit_code == 0
    st = opened(url)
    (sid,) = st.ids()
    snap = st.load(sid).to_json()
    version = st.row_version(sid)
    st.close()
    assert version is not None
    snap["messages"] = [*snap["messages"], {"role": "user", "content": "kept by 0.1", "status": "ok"}]
    legacy = parse_store(url).legacy_spool
    assert legacy is not None
    folder = user_dirs["state"] / "spool" / legacy
    folder.mkdir(parents=True)
    record = {
        "format": "chatcli.spool",
        "version": 1,
        "store": parse_store(url).display,
        "session_id": sid,
        "base_version": version[0],
        "writer": None,
        "changed_from": 2,
        "reason": "x",
        "conflict": False,
        "spooled_at": "2026-12-01T00:00:00.000Z",
        "snapshot": snap,
    }
    (folder / f"{sid}.json").write_bytes(orjson.dumps(record))
    r = cli("sync", "--store", url)
    assert r.exit_code == 0 and "are in" in r.stdout, r.stderr
    assert contents(url)[-1] == "kept by 0.1" and not folder.exists()
