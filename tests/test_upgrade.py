"""Sessions written by the release before parts (48a35c0: snapshot format 1, SQL schema 2) read with this
chatcli: a sessions folder, an SQLite file, and PostgreSQL and MariaDB databases loaded from that release's
dumps (tests/fixtures/v1, made by tests/fixtures/make_v1.py). Every session loads as that release loaded
it (the format version now 2), the databases run the named migrations (the same names on every engine),
search still finds the old rows, a resumed session goes on, and what an older chatcli checks before it
refuses (the format version, the ``chatcli_schema`` integer) says "newer"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chatcli.backends.openai import OpenAIBackend
from chatcli.session import ConversationSession, Timeouts
from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store
from chatcli.stores.sql import SQLStore
from chatcli.stores.sql_runner import x
from chatcli.stores.sql_schema import MIGRATION_NAMES

from fakellm import FakeLLMServer, Reply

V1 = Path(__file__).parent / "fixtures" / "v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())
RELEASE_SCHEMA = 2  # the newest chatcli_schema version that release knows: it refuses a database above it


def as_now(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What this chatcli makes of a version-1 snapshot: the same, version 2."""
    return dict(snapshot, version=2)


def stored(engine: str, tmp_path: Path, store_for: Any) -> str:
    """A store of ``engine`` holding what the release wrote (a copy of the folder or the file, or a new
    database the dump was loaded into), as a ``--store`` value."""
    if engine == "folder":
        shutil.copytree(V1 / "sessions", tmp_path / "sessions")
        return str(tmp_path / "sessions")
    if engine == "sqlite":
        shutil.copy(V1 / "chats.db", tmp_path / "chats.db")
        return f"sqlite:///{tmp_path / 'chats.db'}"
    url = store_for(engine)
    parts = parse_store(url)
    if engine == "postgresql":
        psql = next(p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True))
        cmd = [str(psql), "-v", "ON_ERROR_STOP=1", "-q", "--dbname", url, "-f", str(V1 / "postgresql.sql")]
        env = {**os.environ, "PGPASSWORD": parts.password or ""}
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=60)
    else:
        client = shutil.which("mariadb") or shutil.which("mysql")
        assert client, "the MariaDB client (mariadb) is missing"
        my = parts.pymysql_params()
        cmd = [client, "-h", my["host"], "-P", str(my["port"]), "-u", my["user"]]
        cmd += [f"-p{parts.password}", parts.database]
        with (V1 / "mysql.sql").open("rb") as dump:
            subprocess.run(cmd, check=True, stdin=dump, capture_output=True, timeout=60)
    return url


def everything(st: Store) -> dict[str, dict[str, Any]]:
    return {
        "live": {sid: st.load(sid).to_json() for sid in st.ids()},
        "trash": {sid: st.load(sid, trashed=True).to_json() for sid in st.trashed_ids()},
    }


@pytest.mark.parametrize("engine", ["folder", "sqlite", "postgresql", "mysql"])
def test_what_the_release_wrote_loads_whole(engine: str, tmp_path: Path, store_for: Any) -> None:
    st = open_store(parse_store(stored(engine, tmp_path, store_for)), timeout=10)
    try:
        got = everything(st)
        for where in ("live", "trash"):
            assert got[where] == {sid: as_now(s) for sid, s in EXPECTED[where].items()}, where
        assert len(got["live"]) == 5 and len(got["trash"]) == 1
        hits = st.search("capital france")
        assert sorted(h.role for h in hits) == ["assistant", "title", "user"], hits  # indexed by these words
        assert [h.session_id for h in st.search("東京都")] != []
        if isinstance(st, SQLStore):
            cur = st.runner.connection().cursor()
            names = x(cur, "SELECT name FROM chatcli_migrations").fetchall()
            assert sorted(str(n[0]) for n in names) == sorted(MIGRATION_NAMES)
            versions = x(cur, "SELECT max(version) FROM chatcli_schema").fetchall()
            assert int(versions[0][0]) == len(MIGRATION_NAMES) > RELEASE_SCHEMA  # that release refuses it
    finally:
        st.close()


@pytest.mark.parametrize("engine", ["folder", "sqlite", "postgresql", "mysql"])
def test_a_session_of_the_release_resumes_with_every_turn_and_goes_on(
    engine: str, tmp_path: Path, store_for: Any, fake_llm: FakeLLMServer
) -> None:
    spec = stored(engine, tmp_path, store_for)
    sid = next(sid for sid, s in EXPECTED["live"].items() if s["title"] == "Edited along the way")
    st = open_store(parse_store(spec), timeout=10)
    s = ConversationSession.resume(st, sid, lambda x: OpenAIBackend(fake_llm.url + "/v1", x.header.model))
    try:
        s.timeouts = Timeouts(connect=2, idle=5, total=10)
        fake_llm.enqueue(Reply(text="Still here."))
        s.send("are you still there?")
        sent = fake_llm.requests[-1]["json"]["messages"]
        # the system prompt as changed, the context since the release's clear (its failed partial reply
        # included: the user saw it), then the new message
        assert sent == [
            {"role": "system", "content": "Be briefer."},
            {"role": "user", "content": "after the clear"},
            {"role": "assistant", "content": "Echo: after the clear"},
            {"role": "user", "content": "this one breaks"},
            {"role": "assistant", "content": "Half a rep"},
            {"role": "user", "content": "are you still there?"},
        ]
    finally:
        s.close()
        st.close()
    again = open_store(parse_store(spec), timeout=10)
    try:
        conv = again.load(sid).to_json()
        old = EXPECTED["live"][sid]["messages"]
        assert conv["version"] == 2 and conv["messages"][: len(old)] == old
        assert [m["content"] for m in conv["messages"][len(old) :]] == ["are you still there?", "Still here."]
    finally:
        again.close()
    if engine == "folder":  # the file is version 2 now: the release refuses it as "newer"
        assert json.loads((Path(spec) / f"{sid}.json").read_bytes())["version"] == 2
