"""Odd input that used to give wrong results: half a character in a model's stream, imports that hold what
chatcli never writes, a NUL shown differently by each engine, two migrations into one store at once, store
URLs taken literally. Real servers and processes where they matter, the in-process harness elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from chatcli.stores import open_store, parse_store
from chatcli.stores.base import Store
from transcript import CLI, ScriptedBackend

from engines import ENGINES
from fakellm import FakeLLMServer, Reply
from torturelib import figure


def opened(spec: str) -> Store:
    return open_store(parse_store(spec), timeout=10)


@pytest.mark.parametrize("backend", ["openai", "ollama"])
def test_half_a_character_in_a_stream_is_a_replacement_character(
    backend: str, fake_llm: FakeLLMServer, child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    fake_llm.enqueue(Reply(tokens=["Hello ", "\ud83d", " world"]))  # a server that cut an emoji in two
    url = fake_llm.url + ("/v1" if backend == "openai" else "")
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "ask", "--backend", backend, "--base-url", url, "--json", "hi"],
        capture_output=True,
        env=child_env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    reply = orjson.loads(r.stdout)
    assert (reply["reply"], reply["status"]) == ("Hello \ufffd world", "ok")
    (path,) = user_dirs["sessions"].glob("*.json")
    assert orjson.loads(path.read_bytes())["messages"][1]["content"] == "Hello \ufffd world"
    figure("odd input", f"lone surrogate in a stream ({backend})", "U+FFFD, reply complete")


def _snapshot(**changes: object) -> dict[str, object]:
    snap: dict[str, object] = {
        "format": "chatcli.session",
        "version": 1,
        "id": "20260101-000000-abcd",
        "title": "fine",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
        "backend": "openai",
        "model": "m",
        "params": {"temperature": 0.5},
        "system": "",
        "context_start": 0,
        "messages": [
            {"role": "user", "content": "hi", "status": "ok"},
            {"role": "assistant", "content": "hello", "status": "ok", "usage": {"prompt_tokens": 3}},
        ],
    }
    snap.update(changes)
    return snap


def _message(**changes: object) -> dict[str, object]:
    return {"role": "assistant", "content": "hello", "status": "ok", **changes}


@pytest.mark.parametrize(
    "changes, why",
    [
        ({"title": "a\x00b"}, "the title is refused: a title cannot hold control characters"),
        ({"title": "a\x1b]0;x\x07"}, "the title is refused: a title cannot hold control characters"),
        ({"title": "x" * 507}, "the title is refused: a title can be at most 200 characters"),
        ({"params": {"temperature": "hot"}}, "params: temperature must be a number, not 'hot'"),
        ({"params": {"temperature": 7}}, "params: temperature must be between 0 and 2, not 7"),
        ({"params": {"max_tokens": 0}}, "params: max_tokens must be 1 or more"),
        ({"messages": [_message(status="bogus")]}, "message 0 has a status chatcli does not know: 'bogus'"),
        ({"messages": [_message(dropped="eaten")]}, "message 0 has a dropped chatcli does not know: 'eaten'"),
        (
            {"messages": [_message(usage={"prompt_tokens": 10**30})]},
            "message 0 has token counts that are not counts",
        ),
        (
            {"messages": [_message(usage={"prompt_tokens": -1})]},
            "message 0 has token counts that are not counts",
        ),
        ({"messages": [_message(content="x" * (4 * 2**20 + 1))]}, "message 0 is 4.0 MiB"),
    ],
)
def test_import_refuses_what_chatcli_would_never_write(
    changes: dict[str, object], why: str, cli: CLI, tmp_path: Path
) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(_snapshot(**changes)))  # (orjson cannot write 10**30)
    line = cli("import", str(path)).error(1)
    assert line.startswith(f"error: {path}: {why}"), line
    assert cli("list").stdout.startswith("No sessions yet")


def test_import_takes_a_byte_order_mark(cli: CLI, tmp_path: Path) -> None:
    for n, data in enumerate(
        [orjson.dumps(_snapshot()), orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})]
    ):
        path = tmp_path / f"bom{n}.json"
        path.write_bytes(b"\xef\xbb\xbf" + data)
        assert cli("import", str(path)).exit_code == 0, n
    assert len(cli("list").stdout.splitlines()) == 3  # a header and two sessions


def test_a_nul_is_shown_the_same_on_every_engine(
    cli: CLI, scripted: ScriptedBackend, store_for: Callable[[str], str], tmp_path: Path
) -> None:
    path = tmp_path / "nul.json"
    path.write_bytes(orjson.dumps(_snapshot(title="fine", messages=[_message(content="ab\x00cd nulword")])))
    shown = {}
    for engine in ENGINES:
        store = store_for(engine)
        assert cli("import", str(path), "--store", store).exit_code == 0
        (sid,) = [row["id"] for row in orjson.loads(cli("list", "--json", "--store", store).ok)]
        shown[engine] = (
            cli("search", "nulword", "--store", store).stdout,
            [line for line in cli("show", sid, "--store", store).stdout.splitlines() if "nulword" in line],
        )
        st = opened(store)
        assert st.load(sid).messages[0].content == "ab\x00cd nulword", engine  # kept exactly
        st.close()
    assert all(v == shown["folder"] for v in shown.values()), shown
    assert shown["folder"][1] == ["abcd nulword"] and "\ufffd" not in shown["folder"][0]


@pytest.mark.parametrize("engine", ENGINES)
def test_two_migrations_into_one_store_at_once_copy_each_session_once(
    engine: str, cli: CLI, store_for: Callable[[str], str], child_env: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    for n in range(12):
        path = tmp_path / f"s{n}.json"
        path.write_bytes(orjson.dumps(_snapshot(id=f"20260101-0000{n:02d}-abcd", title=f"s{n}")))
        assert cli("import", str(path), "--store", str(source)).exit_code == 0
    target = store_for(engine)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "chatcli", "migrate", "--from", str(source), "--to", target, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
        )
        for _ in range(2)
    ]
    reports = []
    for p in runs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        reports.append(orjson.loads(out))
    copied = [sid for r in reports for sid in r["copied"]]
    assert sorted(copied) == sorted(set(copied)) and len(copied) == 12, reports  # each once, by one run
    assert all(not r["differs"] for r in reports)
    st = opened(target)
    try:
        assert len(st.ids()) == 12
    finally:
        st.close()
    figure("odd input", f"two migrates at once into {engine}", "12 sessions, each copied once")


def test_sqlite_urls_are_read_as_urls(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    spaced = f"sqlite:///{tmp_path}/db/my%20chats.db"
    assert cli("new", "--store", spaced, input="hi\n").exit_code == 0
    assert (tmp_path / "db" / "my chats.db").is_file()
    assert cli("list", "--store", f"sqlite:///{tmp_path}/db/s.db?mode=ro").error(2) == (
        f"error: 'sqlite:///{tmp_path}/db/s.db?mode=ro': an SQLite store takes no options (?mode=ro); "
        f"a '?' in a file name is written %3F"
    )
    assert not [p.name for p in (tmp_path / "db").iterdir() if "?" in p.name or "%" in p.name]


def test_an_index_that_is_a_folder_is_one_line_and_nothing_is_lost(
    cli: CLI, user_dirs: dict[str, Path]
) -> None:
    sid = cli.new("hello")
    index = user_dirs["sessions"] / ".index.sqlite"
    index.unlink(missing_ok=True)
    index.mkdir()
    (index / "mine.txt").write_text("someone's file")
    for args in (["list"], ["search", "hello"], ["stats"]):
        line = cli(*args).error(1)
        assert line == (
            f"error: cannot use {index}, the sessions folder's index (Is a directory): it is only a cache of "
            f"the session files; move it away and chatcli makes it again"
        ), line
    assert cli("show", sid).exit_code == 0 and (index / "mine.txt").read_text() == "someone's file"
