"""The command line and the REPL as transcripts: chatcli runs in this process on a scripted model
(tests/transcript.py), stdin piped (the REPL reads plain lines and quits at EOF); a short output is
compared whole. What needs a real process or the real backends is in test_cli.py, test_pty.py, test_kill.py."""

from __future__ import annotations

import json
import re
import time
from itertools import pairwise
from pathlib import Path

import pytest

from chatcli.errors import StreamError
from chatcli.messages import Usage
from chatcli.model import Conversation
from chatcli.stores.folder import FolderStore
from transcript import CLI, ID_RE, Reply, Run, ScriptedBackend, masked


def snapshot(user_dirs: dict[str, Path], sid: str) -> dict:
    return json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())


def saved(sid: str, tmp_path: Path) -> str:
    """The line chatcli ends a REPL with (the sessions folder is tmp_path's, so it is named)."""
    return f"Session {sid} is saved. Resume it with: chatcli resume {sid} --store {tmp_path}/sessions"


# -- the REPL ------------------------------------------------------------------------------------------------
def test_new_with_two_messages_piped(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    scripted.enqueue("Hi there!", "Fine, thanks.")
    r = cli("new", input="hello\nhow are you\n")
    sid = ID_RE.search(r.stdout).group(0)
    assert r.ok == (
        f"New session {sid} · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "Hi there!\n"
        "Fine, thanks.\n"
        f"{saved(sid, tmp_path)}\n"
    )
    assert [q.pairs() for q in scripted.requests] == [
        [("user", "hello")],
        [("user", "hello"), ("assistant", "Hi there!"), ("user", "how are you")],
    ]
    snap = snapshot(user_dirs, sid)
    assert [(m["role"], m["content"], m["status"]) for m in snap["messages"]] == [
        ("user", "hello", "ok"),
        ("assistant", "Hi there!", "ok"),
        ("user", "how are you", "ok"),
        ("assistant", "Fine, thanks.", "ok"),
    ]
    assert (snap["title"], snap["backend"], snap["model"]) == ("hello", "openai", "gpt-4o-mini")


def test_history_shows_every_turn(cli: CLI, scripted: ScriptedBackend, tmp_path: Path) -> None:
    sid = cli.new("hello", "how are you")
    r = cli("new", input="first\nsecond\nhistory\nhistory 1\n")
    assert masked(r.ok, tmp=str(tmp_path)) == (
        "New session <ID> · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "Echo: first\nEcho: second\n"
        "you <time>\nfirst\nmodel <time>\nEcho: first\n\n"
        "you <time>\nsecond\nmodel <time>\nEcho: second\n\n"
        "… 1 earlier turn not shown (history N shows more)\n"
        "you <time>\nsecond\nmodel <time>\nEcho: second\n\n"
        "Session <ID> is saved. Resume it with: chatcli resume <ID> --store <tmp>/sessions\n"
    )
    assert sid not in r.stdout  # a new session: nothing of the other one


def test_stats_clear_and_clear_undo(
    cli: CLI, scripted: ScriptedBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the stats table on one line a row, whatever tmp_path's length
    scripted.enqueue(Reply("Hi!", usage=Usage(7, 2, 0)), Reply("Bye.", usage=Usage(5, 3, 4)))
    r = cli("new", input="hello\nclear\nafter\nclear undo\nstats\n")
    sid = ID_RE.search(r.stdout).group(0)
    shown = masked(r.ok, tmp=str(tmp_path), id=sid)
    shown = re.sub(r"last [\d.]+( s)? · mean [\d.]+", r"last <n>\1 · mean <n>", shown)
    assert re.sub(r"\(\d[\d,]* bytes\)", "(<n> bytes)", shown) == (
        "New session <id> · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "Hi!\n"
        "Context cleared: the next turn starts afresh (2 messages stay in the session file; `clear undo` "
        "brings them back).\n"
        "Bye.\n"
        "2 messages back in the context.\n"
        "turns                2\n"
        "messages             4 (2 user, 2 assistant); 4 in context\n"
        "characters           17\n"
        "tokens               12 prompt · 5 completion · 4 cached\n"
        "time to first token  last <n> s · mean <n> s\n"
        "tokens/s             last <n> · mean <n>\n"
        "context              5 tokens in the last request; window unknown (set context_window); 1 turn "
        "sent, 1 left out\n"
        "stored in            <tmp>/sessions/<id>.json (<n> bytes)\n"
        "last saved           <time>\n"
        "Session <id> is saved. Resume it with: chatcli resume <id> --store <tmp>/sessions\n"
    )
    # after the clear, the turn was sent alone
    assert [q.pairs() for q in scripted.requests] == [[("user", "hello")], [("user", "after")]]


def test_piped_lines_are_whole_not_wrapped_at_the_width(
    cli: CLI, scripted: ScriptedBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # what rich takes when the output is not a terminal
    title = "Notes on the history of the Roman Empire, from Augustus to Romulus Augustulus"
    missing = tmp_path / "a" / "file" / "that" / "is" / "not" / "there.md"
    r = cli("new", "--title", title, input=f"hello\n/file {missing}\nclear\nstats\n")
    shown = masked(r.stdout, tmp=str(tmp_path))
    shown = re.sub(r"last [\d.]+( s)? · mean [\d.]+", r"last <n>\1 · mean <n>", shown)
    assert re.sub(r"\(\d[\d,]* bytes\)", "(<n> bytes)", shown) == (
        f"New session <ID> · {title} · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "Echo: hello\n"
        "Context cleared: the next turn starts afresh (2 messages stay in the session file; `clear undo` "
        "brings them back).\n"
        "turns                1\n"
        "messages             2 (1 user, 1 assistant); 0 in context\n"
        "characters           16\n"
        "tokens               0 prompt · 0 completion · 0 cached\n"
        "time to first token  last <n> s · mean <n> s\n"
        "tokens/s             last <n> · mean <n>\n"
        "context              the last request's size is unknown; window unknown (set context_window); 1 turn "
        "sent\n"
        "stored in            <tmp>/sessions/<ID>.json (<n> bytes)\n"
        "last saved           <time>\n"
        "Session <ID> is saved. Resume it with: chatcli resume <ID> --store <tmp>/sessions\n"
    )
    assert r.stderr == f"error: {missing}: no such file; nothing was sent\n"


def test_the_window_notice_is_said_when_it_changes_not_at_every_turn(
    cli: CLI, scripted: ScriptedBackend, tmp_path: Path
) -> None:
    scripted.window = 400  # two of these turns fit, with the room kept for a reply of 60 tokens
    scripted.enqueue(*["Noted."] * 7)
    notes = [f"note {i}: " + "lorem " * 60 for i in range(6)]
    r = cli(
        "new", "--max-tokens", "60", input="\n".join([*notes, "stats", "note 6: " + "lorem " * 90]) + "\n"
    )
    shown = masked(r.stdout, tmp=str(tmp_path))
    shown = re.sub(r"last [\d.]+( s)? · mean [\d.]+", r"last <n>\1 · mean <n>", shown)
    assert re.sub(r"\(\d[\d,]* bytes\)", "(<n> bytes)", shown) == (
        "New session <ID> · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        + "Noted.\n" * 6
        + "turns                6\n"
        "messages             12 (6 user, 6 assistant); 12 in context\n"
        "characters           2,244\n"
        "tokens               0 prompt · 0 completion · 0 cached\n"
        "time to first token  last <n> s · mean <n> s\n"
        "tokens/s             last <n> · mean <n>\n"
        "context              263 of 400 tokens (66 %) in the last request; 2 turns sent, 4 left out\n"
        "stored in            <tmp>/sessions/<ID>.json (<n> bytes)\n"
        "last saved           <time>\n"
        "Noted.\n"
        "Session <ID> is saved. Resume it with: chatcli resume <ID> --store <tmp>/sessions\n"
    )
    # once when the window begins to leave turns out, not again while it slides on by a turn at a time
    # (stats has the figure), and again when a longer turn leaves room for fewer turns
    assert r.stderr == (
        "1 earlier turn not sent to the model (context 400 tokens); it stays in the session\n"
        "6 earlier turns not sent to the model (context 400 tokens); they stay in the session\n"
    )


def test_compact_on_request_summarises_all_but_the_newest_turns_even_when_they_fit(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from chatcli.context import SUMMARY_HEADER

    scripted.window = 8192  # everything fits, many times over
    summary = "The user asked when Rome was founded: 753 BC."
    scripted.enqueue(
        "Rome was founded in 753 BC.", "Augustus.", "Romulus Augustulus, in 476.", summary, "Noted."
    )
    lines = [
        "compact",
        "When was Rome founded?",
        "The first emperor?",
        "The last one?",
        "compact",
        "And then?",
    ]
    r = cli("new", input="\n".join([*lines, "compact undo", "Anything else?"]) + "\n")
    assert masked(r.stdout, tmp=str(tmp_path)) == (
        "New session <ID> · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "Nothing to compact: no turn since the last clear, and compact keeps the newest 2 whole (compact_keep).\n"
        "Rome was founded in 753 BC.\nAugustus.\nRomulus Augustulus, in 476.\n"
        "summarising 1 earlier turn with gpt-4o-mini…\n"
        "Summary of 1 turn saved (about 19 tokens): it is sent in their place from now on, with the newest 2 "
        "turns whole (compact_keep = 2); the turns stay in the session (`compact undo` takes the summary back).\n"
        "Noted.\n"
        "Summary taken back (it stays in the session file, marked undone): the turns it stood for (1 turn) are "
        "sent as they are again, as far as the window holds them.\n"
        "Echo: Anything else?\n"
        "Session <ID> is saved. Resume it with: chatcli resume <ID> --store <tmp>/sessions\n"
    )
    assert r.stderr == (
        "1 earlier turn sent as a summary (context 8,192 tokens); it stays in the session\n"
        "every turn since the last clear is sent again (context 8,192 tokens)\n"
    )
    turns = [("user", "When was Rome founded?"), ("assistant", "Rome was founded in 753 BC.")]
    turns += [("user", "The first emperor?"), ("assistant", "Augustus.")]
    turns += [("user", "The last one?"), ("assistant", "Romulus Augustulus, in 476.")]
    assert scripted.requests[4].pairs() == [
        ("system", f"{SUMMARY_HEADER}\n{summary}"),
        *turns[2:],
        ("user", "And then?"),
    ]
    assert scripted.requests[5].pairs() == [
        *turns,
        ("user", "And then?"),
        ("assistant", "Noted."),
        ("user", "Anything else?"),
    ]
    # compact_keep in the config: the newest turn only is kept whole
    user_dirs["config"].parent.mkdir(parents=True)
    user_dirs["config"].write_text("compact_keep = 1\n")
    scripted.enqueue("Two dates.")
    r = cli("resume", "last", input="compact\n")
    assert (
        "Summary of 4 turns saved (about 8 tokens): it is sent in their place from now on, with the newest "
        in r.ok
    )
    assert "1 turn whole (compact_keep = 1)" in r.stdout


EMBEDDED_NOTE = (
    "the embedded model (SmolLM2-135M) is tiny: it is here to try chatcli offline, and its answers are often "
    "wrong. For real answers, point chatcli at a real model: --backend openai --base-url http://HOST:PORT/v1 "
    "(any OpenAI-compatible server: llama.cpp, vLLM, LM Studio, Ollama's /v1) or --backend ollama --model NAME\n"
)


def test_the_first_session_on_the_embedded_model_says_what_it_is_for(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    r = cli("new", "--backend", "local", input="hi\n")
    assert masked(r.stdout, tmp=str(tmp_path)) == (
        "New session <ID> · local/SmolLM2-135M-Instruct · type help for commands, Ctrl-D to quit\n"
        "Echo: hi\n"
        "Session <ID> is saved. Resume it with: chatcli resume <ID> --store <tmp>/sessions\n"
    )
    assert (r.exit_code, r.stderr) == (0, EMBEDDED_NOTE)
    # once for this user (its state folder): not at the next session, resumed or new
    assert (
        cli("resume", "last", input="hi\n").stderr
        == cli("new", "--backend", "local", input="hi\n").stderr
        == ""
    )
    (user_dirs["state"] / "embedded-model-noted").unlink()
    assert cli("new", "--backend", "openai", input="hi\n").stderr == ""  # another backend: nothing to say
    # ask: never on stdout; on stderr where its notices go (a terminal, or -v), else kept for later
    assert cli("ask", "--backend", "local", "hi") == Run(0, "Echo: hi\n", "")
    r = cli("ask", "-v", "--backend", "local", "hi")
    assert (r.stdout, r.stderr.startswith(EMBEDDED_NOTE)) == ("Echo: hi\n", True)
    assert EMBEDDED_NOTE not in cli("ask", "-v", "--backend", "local", "hi").stderr
    # --help says it too
    about = " ".join(help_blocks(cli("--help").ok, 100)["about"][0])
    assert (
        "Runs offline on an embedded model by default: SmolLM2-135M, tiny, for trying chatcli, not for "
        in about
    )
    assert "answers; for a real model use --backend openai --base-url http://HOST:PORT/v1 (any " in about
    assert "OpenAI-compatible server) or --backend ollama." in about


def test_a_model_file_of_ones_own_gets_no_note(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from chatcli.backends.local import LocalBackend
    from chatcli.cli_common import note_embedded_model
    from chatcli.config import Settings

    said: list[str] = []
    for path in (tmp_path / "mine.gguf", None):
        session = SimpleNamespace(header=SimpleNamespace(backend="local"), backend=LocalBackend(path))
        note_embedded_model(session, Settings(state_dir=tmp_path / "state"), said.append)
    assert said == [EMBEDDED_NOTE.rstrip("\n")]


def test_help_and_an_unknown_command(cli: CLI, scripted: ScriptedBackend) -> None:
    r = cli("new", input="help\n/nope\n/history x\nundo\nhello\n")
    assert r.exit_code == 0
    out = masked(r.stdout).splitlines()
    assert out[1].startswith("Commands (each also works with a leading /;")
    rows = [line.split()[0] for line in out[2:] if line.startswith("  ")]
    assert rows[:4] == ["history", "stats", "clear", "compact"] and "quit," in rows
    assert 'To send a command word as a message, start it with a backslash: \\quit sends "quit".' in out
    assert out[-3:-1] == ["There is no turn to undo.", "Echo: hello"]  # the REPL went on after the errors
    assert r.stderr.splitlines() == [
        "error: unknown command /nope; type help for the list",
        "error: usage: /history [N] [--reasoning]",
    ]
    assert [q.pairs() for q in scripted.requests] == [[("user", "hello")]]


def test_a_failed_turn_in_a_piped_repl(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    scripted.enqueue(
        Reply("Half a rep", error=StreamError("the connection closed in the middle of the reply"))
    )
    r = cli("new", input="tell me\n\\quit\n")
    assert r.exit_code == 1
    sid = ID_RE.search(r.stdout).group(0)
    assert r.stdout.splitlines()[1:3] == ["Half a rep", "Echo: quit"]  # a backslash sends a command word
    assert r.stderr.splitlines() == [
        "error: the connection closed in the middle of the reply (your message is saved)",
        "error: 1 of 2 turns failed (turn 1); every message is kept in the session",
    ]
    msgs = snapshot(user_dirs, sid)["messages"]
    assert [(m["content"], m["status"]) for m in msgs] == [
        ("tell me", "ok"),
        ("Half a rep", "error"),
        ("quit", "ok"),
        ("Echo: quit", "ok"),
    ]
    assert msgs[1]["error"] == "the connection closed in the middle of the reply"


def test_a_message_too_large_then_a_normal_one_counts_turns_from_1(
    cli: CLI, scripted: ScriptedBackend, tmp_path: Path
) -> None:
    scripted.window = 1000
    r = cli("new", input="x " * 3000 + "\nhello\n")
    assert masked(r.stdout, tmp=str(tmp_path)) == (
        "New session <ID> · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "Echo: hello\n"
        "Session <ID> is saved. Resume it with: chatcli resume <ID> --store <tmp>/sessions\n"
    )
    assert (r.exit_code, r.stderr) == (
        1,
        "error: this message is about 2,004 tokens, 1,257 more than the model's context leaves for it (747 of "
        "750 tokens, after the system prompt and the room kept for the reply); it stays in the session, not "
        "sent: shorten it, or use a larger context (context_window, n_ctx)\n"
        "error: 1 of 2 turns failed (turn 1); every message is kept in the session\n",
    )
    assert [q.pairs() for q in scripted.requests] == [[("user", "hello")]]


def test_retry_with_no_turn_is_nothing_to_do_not_a_failed_turn(cli: CLI, scripted: ScriptedBackend) -> None:
    r = cli("new", input="retry\nhello\nretry\n")
    assert r.ok.splitlines()[1:4] == ["There is no turn to retry.", "Echo: hello", "Echo: hello"]
    assert len(scripted.requests) == 2


def test_a_title_comes_from_what_was_typed_not_the_files(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    code = tmp_path / "add.py"
    code.write_text("def add(a, b):\n    return a + b\n")
    sid = cli.new(f"/file {code}", "What does this do?")
    snap = snapshot(user_dirs, sid)
    assert snap["title"] == "What does this do?"
    assert snap["messages"][0]["content"].startswith(f"File `{code}`:\n```\ndef add(a, b):")


def test_no_color_output_has_no_escape_bytes(cli: CLI, scripted: ScriptedBackend) -> None:
    # Markdown plus an escape sequence a hostile model might send: neither may reach the output raw.
    scripted.enqueue("Some **bold** text \x1b[31mred\x1b[0m and `code`.")
    outputs = [
        cli("new", input="hello\nstats\nhistory\nhelp\n/nope\n"),
        cli("list"),
        cli("resume", "nope"),
        cli("--help"),
    ]
    assert outputs[0].exit_code == 0
    for r in outputs:
        assert "\x1b" not in r.stdout + r.stderr, r
    assert "text red and" in outputs[0].stdout  # the model's escape sequence was dropped, its text kept
    assert "turns" in outputs[0].stdout and "unknown command /nope" in outputs[0].stderr


# -- resume ----------------------------------------------------------------------------------------------
def test_resume_last_sends_whole_context(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path], tmp_path: Path
) -> None:
    sid = cli.new("hello", "how are you")
    r = cli("resume", "last", input="and now?\n")
    assert masked(r.ok, tmp=str(tmp_path), id=sid) == (
        "Resumed session <id> · hello · openai/gpt-4o-mini · type help for commands, Ctrl-D to quit\n"
        "you <time>\nhello\nmodel <time>\nEcho: hello\n\n"
        "you <time>\nhow are you\nmodel <time>\nEcho: how are you\n\n"
        "Echo: and now?\n"
        "Session <id> is saved. Resume it with: chatcli resume <id> --store <tmp>/sessions\n"
    )
    assert scripted.requests[-1].pairs() == [
        ("user", "hello"),
        ("assistant", "Echo: hello"),
        ("user", "how are you"),
        ("assistant", "Echo: how are you"),
        ("user", "and now?"),
    ]
    assert scripted.builds[-1] == {
        "name": "openai",
        "model": "gpt-4o-mini",
        "base_url": "http://scripted.invalid/v1",
    }
    assert len(snapshot(user_dirs, sid)["messages"]) == 6


def test_resume_option_works_like_resume_command(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    sid = cli.new("first")
    time.sleep(0.005)  # (updated a millisecond later at least: `last` is the other one)
    cli.new("other")
    for args in (["--resume", sid], ["-r", sid[:-1]]):
        r = cli(*args, input="more\n")
        assert r.ok.startswith(f"Resumed session {sid} · first ·"), r.stdout
        assert "Echo: first" in r.stdout
        assert scripted.requests[-1].messages[0] == {"role": "user", "content": "first"}
    assert [m["content"] for m in snapshot(user_dirs, sid)["messages"] if m["role"] == "user"] == [
        "first",
        "more",
        "more",
    ]
    assert "no session '20000101-000000-zzzz'" in cli("--resume", "20000101-000000-zzzz").error(1)
    assert cli("--resume", sid, "list").error(2) == "error: --resume cannot be combined with a command"


def test_resume_unknown_id(cli: CLI, user_dirs: dict[str, Path]) -> None:
    sid = cli.new("hello")
    assert cli("resume", "20000101-000000-zzzz").error(1) == (
        f"error: no session '20000101-000000-zzzz' in {user_dirs['sessions']} (1 exist, newest: {sid}); "
        "see `chatcli list`"
    )


def test_resume_when_there_are_no_sessions(cli: CLI) -> None:
    for ref in ("last", "abc"):
        assert "no sessions" in cli("resume", ref).error(1)


def test_resume_ambiguous_prefix(cli: CLI, user_dirs: dict[str, Path]) -> None:
    store = FolderStore(user_dirs["sessions"])
    for sid in ("20250101-120000-aaaa", "20250101-120000-aaab"):
        store.save(Conversation.from_json(_minimal_snapshot(sid)))
    line = cli("resume", "20250101-120000-aa").error(1)
    assert "matches 2 sessions" in line
    assert "20250101-120000-aaaa" in line and "20250101-120000-aaab" in line


@pytest.mark.parametrize("ref", ["../etc", "../../etc/passwd", "/etc/passwd", "a/b"])
def test_resume_hostile_id(cli: CLI, ref: str, user_dirs: dict[str, Path]) -> None:
    cli.new("hello")
    before = sorted(p.name for p in user_dirs["sessions"].parent.rglob("*"))
    assert "is not a session id" in cli("resume", ref).error(2)
    assert sorted(p.name for p in user_dirs["sessions"].parent.rglob("*")) == before  # nothing created


# -- list ------------------------------------------------------------------------------------------------
def test_list_empty(cli: CLI, user_dirs: dict[str, Path]) -> None:
    assert cli("list").ok == "No sessions yet: start one with `chatcli new`.\n"
    assert json.loads(cli("list", "--json").ok) == []
    assert not list(user_dirs["sessions"].glob("*.json"))


def test_new_then_list_and_list_json(cli: CLI, user_dirs: dict[str, Path]) -> None:
    first = cli.new("hello")
    time.sleep(0.005)  # (so the second is the newer to the millisecond)
    second = cli.new("second chat", "and more")
    rows = cli("list").ok.splitlines()
    assert [line.split() for line in rows[1:]] == [
        [second, "second", "chat", "openai/gpt-4o-mini", "2", "0", rows[1].split()[-1]],
        [first, "hello", "openai/gpt-4o-mini", "1", "0", rows[2].split()[-1]],
    ]
    assert rows[0].split() == ["id", "title", "backend/model", "turns", "tokens", "updated"]

    data = json.loads(cli("list", "--json").ok)
    assert [d["id"] for d in data] == [second, first]
    one = data[1]
    assert one["title"] == "hello"
    assert (one["backend"], one["model"], one["turns"], one["messages"]) == ("openai", "gpt-4o-mini", 1, 2)
    assert Path(one["location"]) == user_dirs["sessions"] / f"{first}.json"
    assert data[0]["turns"] == 2 and data[0]["messages"] == 4
    assert set(one) >= {"created_at", "updated_at"}
    assert [d["id"] for d in json.loads(cli("list", "--json", "--limit", "1").ok)] == [second]


def test_list_reports_damaged_file_and_still_lists_good_ones(cli: CLI, user_dirs: dict[str, Path]) -> None:
    good = cli.new("hello")
    bad = user_dirs["sessions"] / "20200101-000000-dead.json"
    bad.write_text('{"format": "chatcli.session", "version": 1, "id": "20200101-000000-de')  # truncated
    for args in (["list"], ["list", "--json"]):
        r = cli(*args)
        assert r.exit_code == 0 and good in r.stdout and "20200101-000000-dead" not in r.stdout
        said = f"damaged: {bad} is not valid JSON (damaged or truncated)\n"
        assert r.stderr == said  # the same line with --json


# -- help and usage errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "options"),
    [
        ([], ["--resume", "--version", "--sessions-dir", "new", "resume", "list"]),
        (
            ["new"],
            [
                "--backend",
                "--model",
                "--base-url",
                "--system",
                "--title",
                "--temperature",
                "--max-tokens",
                "--timeout",
                "--sessions-dir",
                "--model-path",
            ],
        ),
        (["resume"], ["ID", "--sessions-dir", "--timeout", "--base-url", "--model-path"]),
        (["list"], ["--json", "--limit", "--sessions-dir"]),
    ],
)
def test_help(cli: CLI, args: list[str], options: list[str]) -> None:
    out = cli(*args, "--help").ok
    assert f"Usage: chatcli {' '.join(args)}".rstrip() + " [OPTIONS]" in out
    for option in options:
        assert option in out, f"{option} missing from `chatcli {' '.join(args)} --help`"


def help_blocks(out: str, columns: int) -> dict[str, tuple[list[str], int]]:
    """The wrapped text of a rich help screen printed ``columns`` wide, by block: ``"about"`` the help text
    under Usage, and each panel row's last cell by the row's other cells (``"resume"``, ``"--limit -n N"``);
    each as (its lines, the width rich wrapped them to)."""
    lines = out.split("\n")
    blocks: dict[str, tuple[list[str], int]] = {}
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Usage:")) + 2
    about = []
    while lines[at].strip() and not lines[at].startswith("╭"):
        about.append(lines[at][1:].rstrip())
        at += 1
    blocks["about"] = (about, columns - 2)
    panel: list[str] = []
    for line in lines:
        if line.startswith("│"):
            panel.append(line[1 : line.rindex("│")])
        elif panel:  # a panel ends: its last column (the help) starts where every line's last cell starts
            col = max(max(m.end() for m in re.finditer(r"^|  +", inner.rstrip())) for inner in panel)
            for inner in panel:
                if inner[:col].strip():
                    row = " ".join(inner[:col].split())
                    blocks[row] = ([], len(inner) - col - 1)
                blocks[row][0].append(inner[col:].rstrip())
            panel = []
    return blocks


def broken(blocks: dict[str, tuple[list[str], int]]) -> list[str]:
    """The lines of ``blocks`` that end before the width they were wrapped to made them end: a break the
    help text itself holds (a docstring's line break) rather than rich's wrapping. Typer's ``[default: ...]``,
    ``[env var: ...]`` and ``[required]`` are items of their own, placed on a line of their own."""
    return [
        f"{name}: {a!r} / {b!r}"
        for name, (lines, width) in blocks.items()
        for a, b in pairwise(lines)
        if b.strip() and not b.lstrip().startswith("[") and len(a) + 1 + len(b.split()[0]) <= width
    ]


@pytest.mark.parametrize("columns", [80, 140])
def test_help_reads_as_flowing_text_at_any_width(
    cli: CLI, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    import inspect

    from typer.main import get_command

    from chatcli.cli import app

    monkeypatch.setenv("COLUMNS", str(columns))
    group = get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    docs = {name: " ".join((inspect.getdoc(cmd.callback) or "").split()) for name, cmd in commands.items()}
    top = help_blocks(cli("--help").ok, columns)
    assert broken(top) == []
    for name, doc in docs.items():  # the command list holds each command's whole docstring, as one text
        assert " ".join(top[name][0]) == doc, name
        own = help_blocks(cli(name, "--help").ok, columns)
        assert broken(own) == [], name
        assert " ".join(own["about"][0]) == doc, name


def test_no_arguments_prints_help(cli: CLI) -> None:
    assert cli().ok == cli("--help").ok
    assert "Usage: chatcli [OPTIONS] COMMAND [ARGS]..." in cli().stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["frobnicate"], "No such command 'frobnicate'."),
        (["new", "--temperature"], "Option '--temperature' requires an argument."),
        (["list", "--limit", "many"], "Invalid value for '--limit'"),
        (["resume"], "Missing argument 'ID'."),
    ],
)
def test_usage_errors_exit_2(cli: CLI, scripted: ScriptedBackend, args: list[str], said: str) -> None:
    r = cli(*args)
    assert r.exit_code == 2 and r.stdout == ""
    assert said in r.stderr and "Traceback" not in r.stderr
    assert scripted.builds == []


def test_a_usage_error_is_one_line_unless_stderr_is_a_terminal(
    cli: CLI, scripted: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chatcli.cli

    said = {
        ("list", "--nope"): "error: No such option: --nope (Possible options: --model, --since, --store)\n",
        ("migrate", "--store", "x"): "error: No such option: --store (Possible options: --json, --to)\n",
        ("frobnicate",): "error: No such command 'frobnicate'.\n",
        ("new", "--temperature"): "error: Option '--temperature' requires an argument.\n",
    }
    for args, line in said.items():  # piped or logged: one plain line, as every other error
        assert cli(*args) == Run(2, "", line)
    monkeypatch.setattr(chatcli.cli, "isatty", lambda stream: True)  # at a terminal: Typer's panel
    assert cli("migrate", "--store", "x") == Run(
        2,
        "",
        "Usage: chatcli migrate [OPTIONS]\n"
        "Try 'chatcli migrate -h' for help.\n"
        "╭─ Error ──────────────────────────────────────────────────────────────────────────────────────────╮\n"
        "│ No such option: --store (Possible options: --json, --to)                                         │\n"
        "╰──────────────────────────────────────────────────────────────────────────────────────────────────╯\n",
    )
    assert scripted.builds == []


def test_bad_config_file(cli: CLI, user_dirs: dict[str, Path]) -> None:
    cfg = user_dirs["config"]
    cfg.parent.mkdir(parents=True)
    cfg.write_text("backend = 'openai'\nthis is not toml\n")
    for args in (["list"], ["new"], ["resume", "last"]):
        line = cli(*args).error(2)
        assert str(cfg) in line and "TOML" in line
    cfg.write_text("colour = 'blue'\n")
    assert str(cfg) in cli("list").error(2) and "colour" in cli("list").stderr
    cfg.write_text("temperature = 'hot'\n")
    assert str(cfg) in cli("list").error(2) and "temperature" in cli("list").stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "5"],
        ["--temperature", "-1"],
        ["--timeout", "0"],
        ["--backend", "gpt"],
        ["--base-url", "ftp://x"],
    ],
)
def test_bad_flag_values(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path], args: list[str]
) -> None:
    line = cli("new", *args, input="hello\n").error(2)
    assert args[0].lstrip("-").replace("-", " ").split()[0] in line.lower()
    assert scripted.builds == [] and scripted.requests == []
    assert not (user_dirs["sessions"].exists() and list(user_dirs["sessions"].glob("*.json")))


def test_bad_title_rejected(cli: CLI, scripted: ScriptedBackend) -> None:
    assert "title" in cli("new", "--title", "a\x1bb").error(2)
    assert scripted.builds == []


def test_a_title_given_is_stripped_as_rename_strips_it(
    cli: CLI, scripted: ScriptedBackend, user_dirs: dict[str, Path]
) -> None:
    r = cli("new", "--title", "  Spaced out  ", input="hi\n")
    sid = ID_RE.search(r.ok).group(0)  # type: ignore[union-attr]
    assert snapshot(user_dirs, sid)["title"] == "Spaced out"
    r = cli("ask", "--title", " Asked ", "hello")
    assert r.ok == "Echo: hello\n"
    assert cli("show", "Asked").ok.startswith("# Asked\n")


def test_reading_a_sessions_folder_that_does_not_exist_creates_nothing(cli: CLI, tmp_path: Path) -> None:
    folder = tmp_path / "not-yet"
    for args in (["list"], ["list", "--trash"], ["search", "x"], ["stats"], ["stats", "--json"]):
        assert cli(*args, "--store", str(folder)).exit_code == 0, args
    assert not folder.exists()


# -- the library on a session made here ------------------------------------------------------------------
def test_show_rename_delete_restore(cli: CLI, user_dirs: dict[str, Path]) -> None:
    sid = cli.new("hello")
    assert masked(cli("show", "last").ok, id=sid) == (
        "# hello\n\n- session: `<id>`\n- backend/model: openai/gpt-4o-mini\n"
        "- created: <time>, updated: <time>\n\n## You (turn 1)\n\nhello\n\n## Model\n\nEcho: hello\n\n"
    )
    assert cli("rename", sid[-4:], "Greetings").ok == f"Session {sid} is now titled 'Greetings'.\n"
    assert cli("show", "Greetings").ok.startswith("# Greetings\n")
    assert cli("delete", "Greetings").ok == (
        f"Moved {sid} to the trash (chatcli restore {sid} brings it back).\n"
    )
    assert cli("list").ok == "No sessions yet: start one with `chatcli new`.\n"
    header, row = masked(cli("list", "--trash").ok, id=sid).splitlines()
    assert header.split()[:3] == ["id", "title", "backend/model"]
    assert row.split()[:5] == ["<id>", "Greetings", "openai/gpt-4o-mini", "1", "0"]  # turns, tokens
    listed = json.loads(cli("list", "--trash", "--json").ok)
    assert [(r["id"], r["title"]) for r in listed] == [(sid, "Greetings")]
    assert listed[0]["location"] == str(user_dirs["sessions"] / ".trash" / f"{sid}.json")
    assert cli("show", sid).error(1).startswith(f"error: no session '{sid}'")
    assert cli("restore", sid[:8]).ok == f"Restored {sid}.\n"
    assert cli("list", "--trash").ok == "The trash is empty.\n"
    assert cli("restore", sid).error(1).startswith(f"error: no session '{sid}'")
    assert cli("delete", "--purge", sid).error(2) == (
        "error: --purge removes sessions for good: confirm with --yes when not at a terminal"
    )
    assert snapshot(user_dirs, sid)["title"] == "Greetings"


def _minimal_snapshot(sid: str) -> dict:
    return {
        "format": "chatcli.session",
        "version": 1,
        "id": sid,
        "title": "t",
        "created_at": "2025-01-01T12:00:00.000Z",
        "updated_at": "2025-01-01T12:00:00.000Z",
        "backend": "openai",
        "model": "m",
        "base_url": "http://127.0.0.1:1/v1",
        "params": {},
        "system": "",
        "messages": [],
        "context_start": 0,
    }
