"""chatcli run in this process on a scripted model, so a test reads like a transcript.

``ScriptedBackend`` keeps chatcli's ``Backend`` protocol (``chatcli.backends.base``). A test queues replies
with ``scripted.enqueue("Hi!", Reply("cut", finish_reason="length"), Reply("half", error=StreamError(...)))``
and reads what it was sent in ``scripted.requests``; with nothing queued it echoes (``Echo: <message>``),
as the fake server of ``tests/fakellm.py`` does.

The ``cli`` fixture (conftest) runs ``chatcli ARGS`` with Typer's ``CliRunner``: ``cli("new", input="hi\\n")``
gives a ``Run`` (exit code, stdout, stderr apart). Every user folder is in tmp_path (the autouse
``user_dirs``); the width is 100 columns, colour off, and the default backend ``openai``; the scripted
backend stands in for ``chatcli.backends.make_backend``, which ``cli_common.backend_for`` looks up at each
call. stdin is not a terminal there, so the REPL reads plain lines and quits at EOF, as when piped.

What needs a real process (signals, SIGKILL, a lock held by another process, a pty, start-up, the real
backends over HTTP) stays with ``tests/chatproc.py``, ``tests/ptyproc.py`` and ``tests/fakellm.py``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from chatcli.backends.base import ModelInfo, StreamEvent
from chatcli.errors import BackendError
from chatcli.messages import GenerationParams, Timeouts, Usage

#: the model a backend gets when none is named (as ``chatcli.backends.make_backend`` has it)
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "ollama": "llama3.2", "local": "SmolLM2-135M-Instruct"}
#: where the scripted backend says it runs (``recorded()``) unless ``--base-url`` names somewhere
SCRIPTED_URL = "http://scripted.invalid/v1"
ID_RE = re.compile(r"\b\d{8}-\d{6}-[0-9a-z]{4}\b")
TIME_RE = re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d\.\d{3}Z)?")


@dataclass
class Reply:
    """One scripted reply: ``text`` streamed in ``pieces`` (default: word by word, spaces kept), then a
    last event with ``finish_reason`` and ``usage``. With ``error`` (a BackendError) the stream raises it
    after the text instead (a reply that failed midway; a BackendTimeout is a timeout)."""

    text: str = ""
    finish_reason: str | None = "stop"
    usage: Usage | None = None
    error: BackendError | None = None
    pieces: list[str] | None = None

    def events(self) -> Generator[StreamEvent, None, None]:
        for piece in self.pieces if self.pieces is not None else re.findall(r"\S+\s*|\s+", self.text):
            yield StreamEvent(text=piece)
        if self.error is not None:
            raise self.error
        yield StreamEvent(finish_reason=self.finish_reason, usage=self.usage)


@dataclass
class Request:
    """What the session sent for one reply: the messages (``{"role", "content"}``), the sampling
    parameters and the model."""

    messages: list[dict[str, str]]
    params: GenerationParams
    model: str

    def pairs(self) -> list[tuple[str, str]]:
        """The messages as (role, content)."""
        return [(m["role"], m["content"]) for m in self.messages]


@dataclass
class ScriptedBackend:
    """A model answering from a queue (see the module docstring). ``builds``: what chatcli asked
    ``make_backend`` for (``name``, ``model``, ``base_url``), one dict per backend it built."""

    name: str = "openai"
    model: str = "gpt-4o-mini"
    base_url: str = SCRIPTED_URL
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    builds: list[dict[str, str]] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=lambda: [ModelInfo("scripted-model", {})])
    window: int | None = None  # what context_window() states (None: it cannot say)

    def enqueue(self, *replies: str | Reply) -> None:
        """Queue the replies of the next turns, in order (a string is a complete reply)."""
        self.replies.extend(Reply(r) if isinstance(r, str) else r for r in replies)

    def build(self, name: str, *, model: str = "", base_url: str = "", **_: Any) -> ScriptedBackend:
        """In place of ``chatcli.backends.make_backend``: this backend, named as asked."""
        self.builds.append({"name": name, "model": model, "base_url": base_url})
        self.name, self.model = name, model or DEFAULT_MODELS.get(name, "scripted")
        self.base_url = base_url or SCRIPTED_URL
        return self

    # -- the Backend protocol --------------------------------------------------------------------------
    def stream_chat(
        self, messages: list[dict[str, str]], params: GenerationParams, timeouts: Timeouts, deadline: float
    ) -> Generator[StreamEvent, None, None]:
        self.requests.append(Request([dict(m) for m in messages], params, self.model))
        reply = self.replies.popleft() if self.replies else Reply(f"Echo: {messages[-1]['content']}")
        return reply.events()

    def prepare(self) -> None:
        pass

    def close(self) -> None:
        pass

    def recorded(self) -> dict[str, str]:
        return {"base_url": self.base_url}

    def list_models(self, timeouts: Timeouts) -> list[ModelInfo]:
        return list(self.models)

    def context_window(self, timeouts: Timeouts) -> int | None:
        return self.window

    def count_tokens(self, messages: list[dict[str, str]], timeouts: Timeouts) -> int | None:
        return None


@dataclass(frozen=True)
class Run:
    """One command's outcome: its exit code, and stdout and stderr apart."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> str:
        """stdout of a command that exited 0 with nothing on stderr (asserted)."""
        assert (self.exit_code, self.stderr) == (0, ""), self
        return self.stdout

    def error(self, code: int | None = None) -> str:
        """The one line on stderr of a command that failed (with exit status ``code``, when given) and
        printed nothing on stdout (asserted)."""
        assert self.exit_code != 0 and (code is None or self.exit_code == code), self
        assert self.stdout == "", self
        lines = self.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        return lines[0]


class CLI:
    """``cli(*args, input=...)``: ``chatcli ARGS`` in this process, on ``scripted``."""

    def __init__(self, scripted: ScriptedBackend) -> None:
        from typer.testing import CliRunner  # (loaded by the tests that run chatcli in-process only)

        from chatcli.cli import app

        self.scripted = scripted
        self.app = app
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | bytes | None = None) -> Run:
        """Run one command; ``input`` is its stdin (none: an empty pipe). A bug raises here."""
        r = self.runner.invoke(self.app, list(args), input=input, catch_exceptions=False, prog_name="chatcli")
        return Run(r.exit_code, r.stdout, r.stderr)

    def new(self, *lines: str) -> str:
        """``chatcli new`` with ``lines`` typed, each answered; the new session's id."""
        r = self("new", input="".join(f"{line}\n" for line in lines))
        assert (r.exit_code, r.stderr) == (0, ""), r
        m = ID_RE.search(r.stdout)
        assert m and r.stdout.startswith("New session "), r.stdout
        return m.group(0)


def masked(text: str, **names: str) -> str:
    """``text`` as a test compares it whole: each line without the spaces rich pads it with, each value
    of ``names`` written ``<name>`` (``masked(out, tmp=str(tmp_path))``), then any other session id as
    ``<ID>`` and a timestamp as ``<time>`` (ids and times change from run to run)."""
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    for name, value in names.items():
        text = text.replace(value, f"<{name}>")
    return TIME_RE.sub("<time>", ID_RE.sub("<ID>", text))
