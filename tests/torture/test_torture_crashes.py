"""Crashes: SIGKILL a chatcli at random moments while it streams and saves, CHATCLI_TORTURE_KILLS times on
the folder store and on each database (sqlite, postgresql, mysql; half as many there in CI).

Several chains run side by side, each on its own session: `chatcli new`, then after every kill
`chatcli resume` of the same session, fed messages through a pipe as a user would type them (the next one
after the previous reply is shown). A third of the processes run as shipped (a checkpoint every 0.25 s of
streaming); the rest save at every token, so kills land inside saves. One kill in ten hits a `resume`
while it starts. After every kill the snapshot is checked:

* it is valid JSON and a valid session (``FolderStore.load``; on a database, as another connection loads it);
* every turn chatcli showed as complete is there, whole, with status ``ok``;
* every message the server received a request for is there (it is saved before the request is sent),
  in order, and every request carried exactly the user messages saved before it;
* a partial reply is a true prefix of the reply the server was sending;
* the next start (`resume`) leaves no temp file of the session behind (folder), and finds the session's
  lock free (every engine: a killed chatcli holds no lock), and nothing waits in the spool.
"""

from __future__ import annotations

import os
import re
import stat
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engines import ENGINES
from fakellm import FakeLLMServer, Reply, last_user_text
from torturelib import (
    KILLS,
    LONG,
    SEED,
    Chat,
    add,
    assert_no_canary,
    chatcli_args,
    figure,
    load_checked,
    rng,
    temp_files,
)

CHAINS = 4
DELAY_EACH = 0.004  # seconds between tokens: a reply takes 0.04-0.25 s
KILL_WINDOW = 1.0  # a kill comes at a random moment up to this long after the REPL is ready
CANARY = "sk-torture-canary-3e8d1f0b77"
BANNER = re.compile(rb"(?:New|Resumed) session ([0-9A-Za-z_-]+)")
WORDS = ["alpha", "naïve", "日本語", "🚀", "ünïcödé", "tab\tin", 'quote"s', "back\\slash", "<b>", "*md*"]


def umask_022() -> None:
    os.umask(0o022)


def reply_tokens(text: str) -> list[str]:
    """What the fake server answers to a message: tokens derived from the message's tag and a hash."""
    tag = text.split(" ", 1)[0]
    n = 10 + zlib.crc32(text.encode()) % 50
    return [f"{tag}.{i} " for i in range(n)]


def expected_reply(text: str) -> str:
    return "".join(reply_tokens(text))


def answer(record: dict) -> Reply:
    return Reply(tokens=reply_tokens(last_user_text(record.get("json"))), delay_each=DELAY_EACH)


class ChainState:
    def __init__(self, chain: int) -> None:
        self.chain = chain
        self.sid: str | None = None
        self.sent: list[str] = []
        self.completed: set[str] = set()
        self.phases: Counter[str] = Counter()
        self.temp_left = 0
        self.startup_kills = 0


class Where:
    """The store a chain runs on: its command-line arguments, how a session is read back, its temp files."""

    def __init__(self, engine: str, spec: str, state: Path) -> None:
        self.engine, self.spec, self.state = engine, spec, state
        self.root = Path(spec) if engine == "folder" else None
        self.args = ["--sessions-dir", spec] if engine == "folder" else ["--store", spec]

    def snapshot(self, sid: str) -> dict[str, Any]:
        if self.root is not None:
            return load_checked(self.root, sid)
        from chatcli.stores import open_store, parse_store

        st = open_store(parse_store(self.spec), timeout=20)
        try:
            return st.load(sid).to_json()
        finally:
            st.close()

    def folders(self) -> list[Path]:
        """The folders that hold the store's files (none for a database server)."""
        if self.root is not None:
            return [self.root]
        if self.engine != "sqlite":
            return []
        from chatcli.stores import parse_store

        path = parse_store(self.spec).path
        assert path is not None
        return [path.parent]

    def temp_files(self, sid: str) -> list[Path]:
        return temp_files(self.root, sid) if self.root is not None else []

    def spooled(self) -> list[Path]:
        spool = self.state / "spool"
        return sorted(p for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


def chain_requests(llm: FakeLLMServer, chain: int) -> list[list[str]]:
    """The user messages of every chat request of this chain, in arrival order."""
    out = []
    for r in list(llm.requests):
        body = r.get("json")
        if r["path"].endswith("/chat/completions") and last_user_text(body).startswith(f"c{chain}k"):
            out.append([m["content"] for m in body["messages"] if m.get("role") == "user"])
    return out


def verify(where: Where, st: ChainState, llm: FakeLLMServer) -> tuple[dict[str, Any], set[str]]:
    """Check the chain's snapshot against everything chatcli showed and the server received."""
    assert st.sid is not None
    snap = where.snapshot(st.sid)
    msgs = snap["messages"]
    users = [m["content"] for m in msgs if m["role"] == "user"]
    where = f"(chain {st.chain}, session {st.sid}, {where.engine}, seed {SEED})"
    # user messages on disk: sent ones, in order, each once
    it = iter(st.sent)
    assert all(any(u == s for s in it) for u in users), f"user messages out of order or unknown {where}"
    assert len(set(users)) == len(users), f"a user message was saved twice {where}"
    # every request the server got was for a saved message and carried exactly the saved history
    requested = set()
    for req_users in chain_requests(llm, st.chain):
        last = req_users[-1]
        requested.add(last)
        assert last in users, f"the server got {last!r} but it is not on disk {where}"
        k = users.index(last)
        assert req_users == users[: k + 1], (
            f"the request for {last!r} did not carry the saved context {where}"
        )
    # replies: each follows its user message and is a prefix of what the server sent
    replies: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        assert i > 0 and msgs[i - 1]["role"] == "user", f"a reply without its message {where}"
        full = expected_reply(msgs[i - 1]["content"])
        assert full.startswith(m["content"]), f"reply {m['content'][:60]!r} is not what was sent {where}"
        assert m["status"] in ("ok", "streaming", "interrupted"), f"status {m['status']!r} {where}"
        if m["status"] == "ok":
            assert m["content"] == full and m.get("finish_reason") == "stop", (
                f"an 'ok' reply is short {where}"
            )
        replies[msgs[i - 1]["content"]] = m
    for u in st.completed:
        assert u in replies and replies[u]["status"] == "ok", (
            f"a turn shown as complete was lost: {u!r} {where}"
        )
    return snap, requested


def phase_of(last: str | None, st: ChainState, snap: dict[str, Any], requested: set[str]) -> str:
    """Where the kill landed, judged from the last message sent to this process."""
    if last is None:
        return "at the prompt, nothing sent yet"
    if last in st.completed:
        return "at the prompt after a completed turn"
    msgs = snap["messages"]
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if last not in users:
        return "before the typed message was saved"
    if last not in requested:
        return "after saving the message, before the request"
    i = next(i for i, m in enumerate(msgs) if m["role"] == "user" and m["content"] == last)
    if i + 1 >= len(msgs) or msgs[i + 1]["role"] != "assistant":
        return "request sent, no reply saved yet"
    if msgs[i + 1]["status"] == "ok":
        return "after the final save, before the turn was shown as done"
    return "mid-reply, partial reply on disk"


def run_chain(chain: int, kills: int, llm: FakeLLMServer, env: dict[str, str], where: Where) -> ChainState:
    st = ChainState(chain)
    r = rng("crash", where.engine, chain)
    base = where.args
    for k in range(kills):
        checkpoint = None if k % 3 == 0 else 0.0
        if st.sid is None:
            args = chatcli_args(
                "new", "--backend", "openai", "--base-url", f"{llm.url}/v1", *base, checkpoint=checkpoint
            )
        else:
            args = chatcli_args("resume", st.sid, *base, checkpoint=checkpoint)
        if st.sid is not None and r.random() < 0.1:
            # kill a resume while it opens the session: it must change nothing
            before = where.snapshot(st.sid)
            chat = Chat(args, env, preexec_fn=umask_022)
            time.sleep(r.uniform(0.0, 0.3))
            chat.kill()
            chat.wait()
            assert where.snapshot(st.sid) == before
            st.startup_kills += 1
            continue
        chat = Chat(args, env, preexec_fn=umask_022)
        m = chat.wait_for(BANNER, 20)
        assert m is not None, (
            f"chatcli did not start: {chat.text()[-3000:]} {chat.text('err')[-2000:]} {chat.proc.poll()}"
        )
        assert not isinstance(m, int)
        st.sid = m.group(1).decode()
        assert where.temp_files(st.sid) == [], "a temp file survived the restart"
        kill_at = time.monotonic() + r.uniform(0.0, KILL_WINDOW)
        mine: list[str] = []
        for j in range(12):
            words = " ".join(r.choice(WORDS) for _ in range(r.randint(1, 6)))
            msg = f"c{chain}k{k}m{j} {words}"
            st.sent.append(msg)
            mine.append(msg)
            chat.send(msg)
            left = kill_at - time.monotonic()
            if left <= 0 or chat.wait_for((expected_reply(msg) + "\n").encode(), left) is None:
                break
            if r.random() < 0.3:  # the user reads the reply a moment before typing the next message
                time.sleep(max(0.0, min(kill_at - time.monotonic(), r.uniform(0.0, 0.15))))
                if time.monotonic() >= kill_at:
                    break
        chat.kill()
        rc = chat.wait()
        assert rc == -9, f"chatcli ended by itself ({rc}) before the kill: {chat.text('err')[-2000:]}"
        for msg in mine:  # what chatcli showed as complete before it died
            if (expected_reply(msg) + "\n").encode() in chat.out:
                st.completed.add(msg)
        left_behind = where.temp_files(st.sid)
        st.temp_left += bool(left_behind)
        for p in left_behind:  # even a torn temp file is private
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p} is {stat.S_IMODE(p.stat().st_mode):o}"
        snap, requested = verify(where, st, llm)
        st.phases[phase_of(mine[-1] if mine else None, st, snap, requested)] += 1
        assert not chat.error_lines(), chat.text("err")
    # a last, normal run: resume, one more turn, quit; everything is there
    assert st.sid is not None
    chat = Chat(chatcli_args("resume", st.sid, *base), env)
    assert chat.wait_for(b"Resumed session", 20) is not None, chat.text("err")
    assert where.temp_files(st.sid) == []
    msg = f"c{chain}k{kills}m0 final"
    st.sent.append(msg)
    chat.send(msg)
    assert chat.wait_for((expected_reply(msg) + "\n").encode(), 20) is not None, chat.text("err")
    st.completed.add(msg)
    chat.close_stdin()
    assert chat.wait() == 0, chat.text("err")
    assert f"Session {st.sid} is saved" in chat.text()
    verify(where, st, llm)
    assert where.temp_files(st.sid) == []
    assert where.spooled() == [], "a turn waits in the spool though the database never went away"
    return st


@pytest.mark.parametrize("engine", ENGINES)
def test_sigkill_at_random_moments_loses_nothing(
    engine: str, child_env: dict[str, str], user_dirs: dict[str, Path], store_for: Any
) -> None:
    where = Where(engine, store_for(engine), user_dirs["state"])
    kills = KILLS if engine == "folder" or LONG else KILLS // 2  # (CI: 100 on each database)
    env = dict(child_env, OPENAI_API_KEY=CANARY)
    started = time.monotonic()
    per_chain = [kills // CHAINS + (1 if c < kills % CHAINS else 0) for c in range(CHAINS)]
    with FakeLLMServer(answer) as llm, ThreadPoolExecutor(CHAINS) as pool:
        futures = [pool.submit(run_chain, c, per_chain[c], llm, env, where) for c in range(CHAINS)]
        states = [f.result() for f in futures]
        requests = len(llm.requests)
    for st in states:  # every session is still whole at the end, side by side
        where.snapshot(st.sid or "")
    checked = assert_no_canary(CANARY, *where.folders(), user_dirs["state"])
    phases: Counter[str] = Counter()
    for st in states:
        phases.update(st.phases)
    case = "crash: SIGKILL while streaming and saving" + ("" if engine == "folder" else f" ({engine})")
    figure(case, "kills", sum(per_chain))
    figure(case, "kills during resume start-up", sum(st.startup_kills for st in states))
    figure(case, "messages typed", sum(len(st.sent) for st in states))
    figure(case, "requests received", requests)
    figure(case, "turns shown complete (all found whole)", sum(len(st.completed) for st in states))
    if engine == "folder":
        figure(
            case,
            "kills that left a temp file (all removed at the next start)",
            sum(st.temp_left for st in states),
        )
    for name, n in sorted(phases.items()):
        figure(case, f"landed: {name}", n)
    figure(case, "files checked for the key canary", checked)
    figure(case, "seconds", round(time.monotonic() - started, 1))
    add(case, "snapshots verified", sum(per_chain))
    assert sum(per_chain) >= min(kills, 100) or kills < 100
    assert phases["mid-reply, partial reply on disk"] > 0 or kills < 40


@pytest.mark.parametrize("moment", [0.0, 0.05, 0.15])
def test_sigkill_of_new_at_start_up_leaves_a_usable_folder(
    moment: float, child_env: dict[str, str], user_dirs: dict[str, Path], fake_llm: FakeLLMServer
) -> None:
    """A `chatcli new` killed while it creates its session: whatever it left, the folder still lists and the
    next `new` works."""
    root = user_dirs["sessions"]
    chat = Chat(chatcli_args("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"), child_env)
    time.sleep(moment)
    chat.kill()
    chat.wait()
    for p in root.glob("*.json"):
        load_checked(root, p.stem)
    chat = Chat(chatcli_args("new", "--backend", "openai", "--base-url", f"{fake_llm.url}/v1"), child_env)
    chat.send("hello")
    assert chat.wait_for(b"Echo: hello\n", 20) is not None, chat.text("err")
    chat.close_stdin()
    assert chat.wait() == 0
    add("crash: SIGKILL while streaming and saving", "kills of `new` at start-up", 1)
