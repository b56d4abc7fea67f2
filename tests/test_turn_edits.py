"""retry, undo/redo and the recorded changes of model, system prompt and title: in ConversationSession
through real HTTP (the fake server), and as REPL commands in a child chatcli with piped stdin."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli.backends.openai import OpenAIBackend
from chatcli.errors import BackendHTTPError, CommandError, ConfigError, NothingToDo
from chatcli.model import Conversation
from chatcli.repl import parse_command
from chatcli.session import ConversationSession, Timeouts
from chatcli.stores.folder import FolderStore

from fakellm import FakeLLMServer, Reply


@pytest.fixture
def session(tmp_path: Path, fake_llm: FakeLLMServer) -> Iterator[ConversationSession]:
    store = FolderStore(tmp_path / "sessions")
    s = ConversationSession.create(
        store, OpenAIBackend(fake_llm.url + "/v1", "m1"), model="m1", base_url=fake_llm.url + "/v1"
    )
    s.timeouts = Timeouts(connect=2.0, idle=5.0, total=10.0)
    yield s
    s.close()


def sent_messages(llm: FakeLLMServer, n: int) -> list[dict]:
    return llm.requests[n]["json"]["messages"]


def on_disk(s: ConversationSession) -> dict:
    return json.loads(s.store.path_for(s.id).read_text())


def test_retry_replaces_the_reply_and_keeps_the_old_one(
    session: ConversationSession, fake_llm: FakeLLMServer
) -> None:
    fake_llm.enqueue(Reply(text="first answer"), Reply(text="second answer"))
    session.send("question")
    reply = session.retry()
    assert reply.content == "second answer"
    # the retry sent the same context as the first request: the old reply is not part of it
    assert sent_messages(fake_llm, 1) == [{"role": "user", "content": "question"}]
    snap = on_disk(session)
    assert [(m["content"], m.get("dropped")) for m in snap["messages"]] == [
        ("question", None),
        ("first answer", "retried"),
        ("second answer", None),
    ]
    assert [(u.content, r.content if r else None) for u, r in session.turns()] == [
        ("question", "second answer")
    ]
    fake_llm.enqueue(Reply(text="third"))
    session.send("next")
    assert sent_messages(fake_llm, 2) == [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "next"},
    ]
    assert session.stats().messages_by_role == {"user": 2, "assistant": 2}


def test_retry_after_a_failed_reply_and_with_nothing_to_retry(
    session: ConversationSession, fake_llm: FakeLLMServer
) -> None:
    with pytest.raises(NothingToDo):
        session.retry()
    fake_llm.enqueue(Reply(status=500), Reply(text="now it works"))
    with pytest.raises(BackendHTTPError):
        session.send("try me")
    assert on_disk(session)["messages"][1]["status"] == "error"
    assert session.retry().content == "now it works"
    assert [m.get("dropped") for m in on_disk(session)["messages"]] == [None, "retried", None]


def test_undo_and_redo(session: ConversationSession, fake_llm: FakeLLMServer) -> None:
    session.send("one")
    session.send("two")
    taken = session.undo()
    assert taken.content == "two"
    assert [m.get("dropped") for m in on_disk(session)["messages"]] == [None, None, "undone", "undone"]
    assert len(session.turns()) == 1
    session.send("three")  # the undone turn is not sent
    assert [m["content"] for m in sent_messages(fake_llm, 2)] == ["one", "Echo: one", "three"]
    with pytest.raises(NothingToDo):
        session.redo()  # a new turn came after it: it stays in the file only
    session.undo()
    back = session.redo()
    assert back.content == "three"
    assert [u.content for u, _ in session.turns()] == ["one", "three"]
    session.undo()
    session.undo()
    with pytest.raises(NothingToDo):
        session.undo()
    assert len(on_disk(session)["messages"]) == 6  # nothing was destroyed


def test_undo_survives_resume(session: ConversationSession, fake_llm: FakeLLMServer) -> None:
    session.send("keep")
    session.send("drop")
    session.undo()
    store, sid = session.store, session.id
    session.close()
    again = ConversationSession.resume(
        store, sid, lambda s: OpenAIBackend(fake_llm.url + "/v1", s.header.model)
    )
    try:
        assert [u.content for u, _ in again.turns()] == ["keep"]
        again.send("after")
        assert [m["content"] for m in sent_messages(fake_llm, 2)] == ["keep", "Echo: keep", "after"]
        with pytest.raises(NothingToDo):
            again.redo()  # "after" came after the undone turn
    finally:
        again.close()


def test_model_and_system_changes_are_recorded_and_survive_resume(
    session: ConversationSession, fake_llm: FakeLLMServer
) -> None:
    session.send("hi")
    session.set_model("m2")
    session.set_system("Be brief.")
    session.send("again")
    req = fake_llm.requests[1]["json"]
    assert req["model"] == "m2"
    assert req["messages"][0] == {"role": "system", "content": "Be brief."}
    snap = on_disk(session)
    assert snap["model"] == "m2" and snap["system"] == "Be brief."
    assert [(c["at"], c["what"], c["from"], c["to"]) for c in snap["changes"]] == [
        (2, "model", "m1", "m2"),
        (2, "system", "", "Be brief."),
    ]
    assert snap["messages"][1]["model"] == "m1" and snap["messages"][3]["model"] == "m2"
    with pytest.raises(NothingToDo):
        session.set_model("m2")
    store, sid = session.store, session.id
    session.close()
    again = ConversationSession.resume(
        store, sid, lambda s: OpenAIBackend(fake_llm.url + "/v1", s.header.model)
    )
    try:
        assert (
            again.header.model == "m2"
            and again.header.system == "Be brief."
            and len(again.header.change_list()) == 2
        )
        again.set_title("Renamed")
        again.send("third")
        assert fake_llm.requests[2]["json"]["model"] == "m2"
    finally:
        again.close()
    snap = json.loads(store.path_for(sid).read_text())
    assert snap["title"] == "Renamed" and snap["changes"][-1]["what"] == "title"


def test_local_backend_model_cannot_be_switched(tmp_path: Path) -> None:
    from chatcli.backends.local import LocalBackend

    store = FolderStore(tmp_path / "s")
    backend = LocalBackend(model_path=tmp_path / "none.gguf", log_path=tmp_path / "log")
    s = ConversationSession.create(store, backend, model="x")
    try:
        with pytest.raises(ConfigError, match="--model-path"):
            s.set_model("other")
    finally:
        s.close()


def test_unknown_keys_in_a_snapshot_are_kept(session: ConversationSession, fake_llm: FakeLLMServer) -> None:
    store, sid = session.store, session.id
    session.send("x")
    session.close()
    snap = json.loads(store.path_for(sid).read_text())
    snap["forked_from"] = "20260101-000000-aaaa"
    store.save(Conversation.from_json(snap))
    again = ConversationSession.resume(
        store, sid, lambda s: OpenAIBackend(fake_llm.url + "/v1", s.header.model)
    )
    try:
        again.send("y")
    finally:
        again.close()
    assert json.loads(store.path_for(sid).read_text())["forked_from"] == "20260101-000000-aaaa"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("retry", ("retry", [])),
        ("/undo", ("undo", [])),
        ("redo", ("redo", [])),
        ("model", ("model", [])),
        ("model gpt-4o", ("model", ["gpt-4o"])),
        ("/model gpt-4o", ("model", ["gpt-4o"])),
        ("/system Be  brief. ", ("system", ["Be  brief."])),
        ("/title My notes", ("title", ["My notes"])),
        ("title", ("title", [])),
        ("export", ("export", [])),
        ("export jsonl", ("export", ["jsonl"])),
        ("fork", ("fork", [])),
        # free text without the slash stays a message; so does anything that is not exactly a command
        ("title of my thesis?", None),
        ("system design interview tips", None),
        ("retry it please", None),
        ("model a b", None),
        ("export pdf", None),
    ],
)
def test_parse_the_new_commands(line: str, expected: tuple[str, list[str]] | None) -> None:
    parsed = parse_command(line)
    assert (None if parsed is None else (parsed[0].name, parsed[1])) == expected


@pytest.mark.parametrize("line", ["/export pdf", "/model a b", "/retry now"])
def test_slash_command_with_bad_arguments_is_an_error(line: str) -> None:
    with pytest.raises(CommandError, match="usage"):
        parse_command(line)


def test_repl_commands_in_a_child_process(
    child_env: dict[str, str], fake_llm: FakeLLMServer, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    fake_llm.enqueue(Reply(text="A1"), Reply(text="A2"), Reply(text="A2 again"), Reply(text="A3"))
    script = (
        "\n".join(
            [
                "q1",
                "q2",
                "retry",
                "undo",
                "redo",
                "/model m9",
                "/system Be kind.",
                "/title  Edited title ",
                "/title bad\x07title",
                "q3",
                "export jsonl",
                "fork",
                "model",
                "history",
            ]
        )
        + "\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatcli",
            "new",
            "--backend",
            "openai",
            "--base-url",
            f"{fake_llm.url}/v1",
            "--model",
            "m1",
        ],
        input=script,
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    sid = re.search(r"New session (\S+)", r.stdout).group(1)
    out = r.stdout
    assert "Took back the last turn ('q2')" in out and "Brought back the turn 'q2'" in out
    assert "Model m1 → m9" in out and "model: openai/m9" in out
    assert "Session titled 'Edited title'" in out
    assert "control characters" in r.stderr  # the bad title: one error, the REPL went on
    fork_id = re.search(r"Forked as (\S+);", out).group(1)
    # the history shows the changes where they happened
    assert re.search(
        r"model changed to 'm9'.*system changed to 'Be kind\.'.*title changed to 'Edited title'.*q3.*A3",
        out,
        re.S,
    )

    snap = json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())
    assert [(m["content"], m.get("dropped")) for m in snap["messages"]] == [
        ("q1", None),
        ("A1", None),
        ("q2", None),
        ("A2", "retried"),
        ("A2 again", None),
        ("q3", None),
        ("A3", None),
    ]
    assert snap["title"] == "Edited title" and snap["model"] == "m9" and snap["system"] == "Be kind."
    last = fake_llm.requests[-1]["json"]
    assert last["model"] == "m9"
    assert [m["content"] for m in last["messages"]] == ["Be kind.", "q1", "A1", "q2", "A2 again", "q3"]

    exported = work / f"chatcli-{sid}.jsonl"
    lines = [json.loads(x) for x in exported.read_text().splitlines()]
    assert lines[0] == {"role": "system", "content": "Be kind."}
    assert [x["content"] for x in lines[1:]] == [m["content"] for m in snap["messages"]]
    assert lines[4]["dropped"] == "retried"
    fork = json.loads((user_dirs["sessions"] / f"{fork_id}.json").read_text())
    assert fork["forked_from"] == sid and fork["messages"] == snap["messages"]
