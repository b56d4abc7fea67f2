"""The REPL and ConversationSession on every engine: the turn's save points reach the database when they
should, every REPL command leaves the same session whatever the store, and a database that hangs holds the
REPL up no longer than the store timeout."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli.backends.openai import OpenAIBackend
from chatcli.session import ConversationSession, Timeouts
from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store

from chatproc import Chat, Turns
from engines import DATABASES, ENGINES, SERVER_ENGINES
from fakellm import FakeLLMServer, Reply

_OPEN: list[Any] = []


def opened(spec: str) -> Store:
    st = open_store(parse_store(spec), timeout=10)
    _OPEN.append(st)
    return st


@pytest.fixture(autouse=True)
def _close_all() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def test_each_save_point_of_a_turn_reaches_the_store(store_spec: str, fake_llm: FakeLLMServer) -> None:
    store = opened(store_spec)
    session = ConversationSession.create(
        store, OpenAIBackend(fake_llm.url + "/v1", "fake-model"), model="fake-model", system="Be brief."
    )
    _OPEN.append(session)
    session.timeouts = Timeouts(connect=2, idle=5, total=20)
    seen_at_request: list[list[tuple[str, str]]] = []
    mid_reply: list[tuple[str, str, str]] = []

    def read_back() -> list[dict[str, Any]]:
        other = opened(store_spec)  # another connection (another process, for a database)
        return list(other.load(session.id).to_json()["messages"])

    fake_llm.on_request = lambda record: seen_at_request.append(
        [(m["role"], m["content"]) for m in read_back()]
    )
    fake_llm.enqueue(Reply(tokens=[f"t{i} " for i in range(40)], delay_each=0.02))

    def on_delta(text: str) -> None:
        if text == "t30 ":
            last = read_back()[-1]
            mid_reply.append((last["role"], last["status"], last["content"]))

    reply = session.send("hello", on_delta=on_delta)
    assert seen_at_request == [[("user", "hello")]]  # saved before the request was sent
    assert (
        mid_reply
        and mid_reply[0][:2] == ("assistant", "interrupted")
        and mid_reply[0][2].startswith("t0 t1 ")
    )  # (a reply saved while it streams reads back as interrupted: its writer may be gone)
    final = read_back()
    assert final[-1]["status"] == "ok" and final[-1]["content"] == reply.content == "".join(
        f"t{i} " for i in range(40)
    )
    assert final[-1]["finish_reason"] == "stop" and final[-1]["timings"]["ttft_s"] is not None


SCRIPT = [
    "first question",
    "second question",
    "retry",
    "undo",
    "redo",
    "/model other-model",
    "/system Be terse.",
    "/title A test session",
    "third question",
    "undo",
    "history",
    "title",
    "system",
    "model",
    "export json",
    "fork",
    "help",
]


def repl(env: dict[str, str], spec: str, llm: FakeLLMServer, cwd: Path) -> tuple[list[str], dict[str, Any]]:
    cwd.mkdir(parents=True)
    chat = Chat(["-m", "chatcli", "new", "--base-url", llm.url + "/v1", "--store", spec], env, cwd=cwd)
    turns = Turns(chat)
    shown = []
    for line in SCRIPT:
        out, err = turns.turn(line)
        shown.append(out + "|" + err)
    chat.send("quit")
    assert chat.wait() == 0, chat.text("err")
    st = opened(spec)
    sessions = [st.load(sid).to_json() for sid in st.ids()]  # the session and the REPL's fork
    (fork,) = [s for s in sessions if "forked_from" in s]
    (original,) = [s for s in sessions if s["id"] == fork["forked_from"]]
    return shown, original


def normalised(text: str, spec: str) -> str:
    text = text.replace(spec, "<STORE>").replace(parse_store(spec).display, "<STORE>")
    text = re.sub(r"\d{8}-\d{6}-[0-9a-z]{4}", "<ID>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d\.\d{3}Z)?", "<TIME>", text)
    return re.sub(r"chatcli-<ID>\.json|<STORE>/<ID>\.json", "<FILE>", text)


def session_shape(s: dict[str, Any]) -> dict[str, Any]:
    """A snapshot with what differs from run to run taken out: ids, times, durations."""

    def clean(m: dict[str, Any]) -> dict[str, Any]:
        m = {k: v for k, v in m.items() if k not in ("created_at", "timings")}
        return m

    keep = {k: v for k, v in s.items() if k not in ("id", "created_at", "updated_at", "base_url")}
    keep["messages"] = [clean(m) for m in s["messages"]]
    keep["changes"] = [{k: v for k, v in c.items() if k != "created_at"} for c in s.get("changes", [])]
    return keep


def test_every_repl_command_gives_the_same_session_on_every_engine(
    store_for: Any, fake_llm: FakeLLMServer, child_env: dict[str, str], tmp_path: Path
) -> None:
    runs = {engine: repl(child_env, store_for(engine), fake_llm, tmp_path / engine) for engine in ENGINES}
    out, snap = runs["folder"]
    assert [m["content"] for m in snap["messages"] if m.get("dropped") is None][:2] == [
        "first question",
        "Echo: first question",
    ]
    assert (
        snap["title"] == "A test session" and snap["model"] == "other-model" and snap["system"] == "Be terse."
    )
    assert {c["what"] for c in snap["changes"]} == {"model", "system", "title"}
    for engine in DATABASES:
        their_out, their_snap = runs[engine]
        assert session_shape(their_snap) == session_shape(snap), engine
        spec = store_for(engine)
        for line, mine, theirs in zip(SCRIPT, out, their_out, strict=True):
            assert normalised(theirs.replace(str(tmp_path / engine), "<CWD>"), spec) == normalised(
                mine.replace(str(tmp_path / "folder"), "<CWD>"), store_for("folder")
            ), f"{engine}: {line}"
        assert len(list((tmp_path / engine).glob("chatcli-*.json"))) == 1  # `export json` wrote one file


@pytest.mark.parametrize("engine", SERVER_ENGINES, indirect=True)
def test_a_hung_database_holds_the_repl_up_no_longer_than_the_store_timeout(
    engine: str, store_spec: str, fake_llm: FakeLLMServer, child_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "hung.toml"
    config.write_text("store_timeout = 1\n")
    env = dict(child_env, CHATCLI_CONFIG=str(config))
    chat = Chat(["-m", "chatcli", "new", "--base-url", fake_llm.url + "/v1", "--store", store_spec], env)
    turns = Turns(chat)
    turns.turn("before")
    locked = threading.Event()
    release = threading.Event()

    def hold_the_tables() -> None:  # another client keeps the tables locked: statements wait
        st = opened(store_spec)
        conn = st.runner.connection()  # type: ignore[attr-defined]
        cur = conn.cursor()
        if engine == "postgresql":
            cur.execute("BEGIN")
            cur.execute("LOCK TABLE chatcli_sessions, chatcli_messages IN ACCESS EXCLUSIVE MODE")
        else:
            cur.execute("LOCK TABLES chatcli_sessions WRITE, chatcli_messages WRITE")
        locked.set()
        release.wait(30)
        cur.execute("ROLLBACK" if engine == "postgresql" else "UNLOCK TABLES")

    holder = threading.Thread(target=hold_the_tables)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        out, err = turns.turn("while the tables are locked")
        took = time.monotonic() - started
        assert "Echo: while the tables are locked" in out
        assert "did not answer within 1 s" in err and "kept on this machine" in err, err
        assert took < 8, took  # a few 1 s timeouts at most, never a hang
    finally:
        release.set()
        holder.join(30)
    turns.turn("after")  # (a database that was slow to answer is tried again only after a while)
    chat.send("quit")
    assert chat.wait() == 0
    sync = Chat(["-m", "chatcli", "sync", "--store", store_spec], env)
    assert sync.wait() == 0, sync.text("err")
    assert list(Path(env["CHATCLI_STATE_DIR"]).glob("spool/*/*.json")) == []
    st = opened(store_spec)
    (sid,) = st.ids()
    assert [m["content"] for m in st.load(sid).to_json()["messages"]] == [
        "before",
        "Echo: before",
        "while the tables are locked",
        "Echo: while the tables are locked",
        "after",
        "Echo: after",
    ]


def test_a_password_left_out_of_the_url_is_asked_for_at_a_terminal(
    pg_server: Any, mariadb_server: Any, fake_llm: FakeLLMServer, child_env: dict[str, str]
) -> None:
    import pexpect

    env = dict(child_env, PROMPT_TOOLKIT_NO_CPR="1")
    for srv in (pg_server, mariadb_server):
        spec = srv.new_database(user="asked", password="typed-at-the-prompt")
        bare = spec.replace(":typed-at-the-prompt@", "@")
        child = pexpect.spawn(
            sys.executable,
            ["-m", "chatcli", "new", "--base-url", fake_llm.url + "/v1", "--store", bare],
            env=env,
            dimensions=(40, 100),
            timeout=20,
            encoding="utf-8",
            codec_errors="replace",
        )
        child.expect("Password for ")
        assert "***" not in child.before
        child.sendline("typed-at-the-prompt")  # (not echoed: getpass)
        child.expect("›")
        child.sendline("hello")
        child.expect("Echo: hello")
        child.expect("›")
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "typed-at-the-prompt" not in child.before
        wrong = pexpect.spawn(
            sys.executable,
            ["-m", "chatcli", "list", "--store", bare],
            env=env,
            timeout=20,
            encoding="utf-8",
            codec_errors="replace",
        )
        wrong.expect("Password for ")
        wrong.sendline("not-it")
        wrong.expect(pexpect.EOF)
        wrong.close()
        assert wrong.exitstatus == 1 and "refused the login" in wrong.before
