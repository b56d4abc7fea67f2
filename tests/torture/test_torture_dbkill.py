"""The database server killed while chatcli talks (PostgreSQL: ``pg_ctl stop -m immediate``; MariaDB: the
server SIGKILLed), CHATCLI_TORTURE_DBKILLS times per engine, each at a random moment of a scripted
conversation: while a reply streams and saves, between turns, or right as a turn starts. Each cycle is one
REPL (``new``, then ``resume`` of the same session): a turn or two, the kill, a turn while the database is
away (it must be answered: the REPL goes on), the server started again, one more turn, quit; then
``chatcli sync`` and a check of the session as the database holds it: every turn typed so far there once,
whole and in order, the spool empty.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chatcli.stores import open_store, parse_store

from chatproc import Chat
from engines import SERVER_ENGINES, SERVERS
from fakellm import FakeLLMServer, Reply, last_user_text
from torturelib import LONG, SEED, add, chatcli_args, figure, rng, size

DBKILLS = size("DBKILLS", 100 if LONG else 10)
BANNER = re.compile(rb"(?:New|Resumed) session ([0-9A-Za-z_-]+)")
TOKENS = 30
DELAY = 0.01  # seconds between tokens: a reply takes 0.3 s


def reply_to(text: str) -> str:
    return "".join(f"{text}.{i} " for i in range(TOKENS))


def answer(record: dict[str, Any]) -> Reply:
    text = last_user_text(record.get("json"))
    return Reply(tokens=[f"{text}.{i} " for i in range(TOKENS)], delay_each=DELAY)


def stored(spec: str, sid: str) -> list[tuple[str, str, str]]:
    st = open_store(parse_store(spec), timeout=20)
    try:
        return [(m.role, m.content.strip(), m.status) for m in st.load(sid).messages]
    finally:
        st.close()


def turn(chat: Chat, text: str) -> None:
    chat.send(text)
    assert chat.wait_for(reply_to(text).strip().encode(), 60) is not None, (
        f"no reply to {text!r} (seed {SEED}): {chat.text('err')[-1500:]}"
    )


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_the_database_killed_at_random_moments_loses_nothing(
    engine: str, server: Any, store_for: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    spec = store_for(engine)
    r = rng("dbkill", engine)
    typed: list[str] = []
    landed: dict[str, int] = {}
    sid: str | None = None
    kept = 0
    started = time.monotonic()
    with FakeLLMServer(answer) as llm:
        for k in range(DBKILLS):
            args = ["new", "--base-url", f"{llm.url}/v1"] if sid is None else ["resume", sid]
            chat = Chat(chatcli_args(*args, "--store", spec), child_env)
            m = chat.wait_for(BANNER, 30)
            assert m is not None and not isinstance(m, int), chat.text("err")
            sid = m.group(1).decode()
            for j in range(r.randint(0, 2)):
                typed.append(f"k{k}a{j}")
                turn(chat, typed[-1])
            moment = r.choice(["mid-reply", "between turns", "as a turn starts"])
            landed[moment] = landed.get(moment, 0) + 1
            typed.append(f"k{k}b")
            kill = threading.Timer(
                {"mid-reply": r.uniform(0.05, 0.25), "between turns": 0.0, "as a turn starts": 0.0}[moment],
                server.stop,
                (SERVERS[engine].hard_stop,),
            )
            if moment == "between turns":
                kill.run()  # now, before the turn
                turn(chat, typed[-1])
            else:
                kill.start()  # while the turn is sent (at once) or streams (a moment later)
                turn(chat, typed[-1])
                kill.join()
            typed.append(f"k{k}c")
            turn(chat, typed[-1])  # the database is away: the REPL goes on
            server.start()
            typed.append(f"k{k}d")
            turn(chat, typed[-1])
            chat.close_stdin()
            assert chat.wait(60) == 0, chat.text("err")
            kept += "kept on this machine" in chat.text("err")  # the turn while it was away: the spool
            sync = Chat(chatcli_args("sync", "--store", spec), child_env)
            assert sync.wait(60) == 0, sync.text("err")
            got = stored(spec, sid)
            want = [x for t in typed for x in (("user", t, "ok"), ("assistant", reply_to(t).strip(), "ok"))]
            assert got == want, f"after kill {k} ({moment}, seed {SEED}): {got[-6:]} != {want[-6:]}"
            spool = Path(child_env["CHATCLI_STATE_DIR"]) / "spool"
            assert not any(p.is_file() for p in spool.rglob("*")) if spool.exists() else True
    case = f"crash: the database server killed ({engine})"
    figure(case, "kills", DBKILLS)
    for moment, n in sorted(landed.items()):
        figure(case, f"landed: {moment}", n)
    figure(case, "turns typed (all in the database once, in order)", len(typed))
    figure(case, "cycles whose turns went to the spool and then to the database", kept)
    figure(case, "seconds", round(time.monotonic() - started, 1))
    add(case, "sessions verified after sync", DBKILLS)
    assert kept == DBKILLS  # every cycle had a turn while the database was away


@pytest.mark.parametrize("engine", SERVER_ENGINES)
def test_a_network_that_stalls_sends_the_turn_to_the_spool_and_never_holds_up_the_reply(
    engine: str, store_for: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    from chatcli.stores import parse_store

    from stallproxy import StallProxy

    spec = store_for(engine)
    (server,) = parse_store(spec).hosts
    proxy = StallProxy((server.name, server.port or 0))
    config = tmp_path / "stall.toml"
    config.write_text("store_timeout = 2\n")
    env = {**child_env, "CHATCLI_CONFIG": str(config)}
    try:
        with FakeLLMServer(answer) as llm:
            chat = Chat(
                chatcli_args("new", "--base-url", f"{llm.url}/v1", "--store", proxy.proxied_url(spec)), env
            )
            m = chat.wait_for(BANNER, 30)
            assert m is not None and not isinstance(m, int), chat.text("err")
            sid = m.group(1).decode()
            turn(chat, "before")
            proxy.stall()
            t0 = time.monotonic()
            turn(chat, "stalled")  # answered: the save gives up after the store's timeout
            took = time.monotonic() - t0
            assert chat.wait_for(b"kept on this machine", 10, stream="err") is not None, chat.text("err")
            t1 = time.monotonic()
            turn(chat, "still stalled")  # the spool takes it at once: no second wait
            again = time.monotonic() - t1
            proxy.resume()
            turn(chat, "flowing")
            chat.close_stdin()
            assert chat.wait(60) == 0, chat.text("err")
        assert took < 2 * 2 + 3, f"the reply was held up {took:.1f} s by a stalled network"
        assert again < 2, f"a turn while the network stalls waited {again:.1f} s"
        said = chat.text("err")
        sync = Chat(
            chatcli_args("sync", "--store", proxy.proxied_url(spec)), env
        )  # (its spool: that address)
        assert sync.wait(60) == 0, sync.text("err")
        want = [
            x
            for t in ("before", "stalled", "still stalled", "flowing")
            for x in (("user", t, "ok"), ("assistant", reply_to(t).strip(), "ok"))
        ]
        assert stored(spec, sid) == want, said
    finally:
        proxy.close()
    case = f"a network that stalls ({engine})"
    figure(case, "seconds until the stalled turn's reply (store_timeout 2)", round(took, 1))
    figure(case, "seconds for the next turn while stalled", round(again, 1))
