"""``chatcli ask``: one turn, for pipes and scripts, saved as a session like any REPL turn.

The message is the files (``-f``), then the text piped on stdin, then the prompt's words. The reply goes to
stdout: rendered Markdown at a terminal; piped or redirected, the model's text exactly as it came (and a
final newline). Everything else goes to stderr, and only at a terminal or with ``-v``; errors always, as
one line. Exit statuses (``ExitStatus``): 0 a complete reply (cut at the token limit too, with a notice),
1 a backend or store error, 2 a usage or configuration error, 124 a timeout (the partial reply printed and
saved), 130 Ctrl-C, 143 / 129 SIGTERM / SIGHUP.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from chatcli.cli_common import (
    ApproveOpt,
    AsJSON,
    BackendOpt,
    BaseURLOpt,
    ContextWindowOpt,
    MaxTokensOpt,
    ModelOpt,
    ModelPathOpt,
    RepeatPenaltyOpt,
    StoreOpt,
    SystemOpt,
    TemperatureOpt,
    ThinkOpt,
    TimeoutOpt,
    TitleOpt,
    ToolsOpt,
    TopPOpt,
    create_session,
    exit_with,
    fail_usage,
    isatty,
    note_embedded_model,
    open_store,
    print_json,
    resume_session,
    settings,
    store_flag,
    terminate_on_signals,
    with_tools,
)
from chatcli.errors import (
    BackendError,
    ChatcliError,
    ExitStatus,
    SaveError,
    SessionTimeoutError,
    Terminated,
)

if TYPE_CHECKING:
    from chatcli.config import Settings
    from chatcli.mcp_client import MCPServers
    from chatcli.model import Message, ToolCallPart, ToolResultPart
    from chatcli.render import Renderer
    from chatcli.session import ConversationSession
    from chatcli.stores.base import Store


def ask(
    prompt: Annotated[
        list[str] | None,
        typer.Argument(metavar="PROMPT...", help="The prompt (text piped on stdin comes before it)."),
    ] = None,
    continue_last: Annotated[
        bool,
        typer.Option(
            "--continue",
            "-c",
            help="Continue the most recently updated session (the same as `--session last`).",
        ),
    ] = False,
    session_ref: Annotated[
        str | None,
        typer.Option(
            "--session",
            metavar="ID",
            help="Continue this session: an id, a unique prefix, 'last' or a title.",
        ),
    ] = None,
    files: Annotated[
        list[Path] | None,
        typer.Option(
            "--file",
            "-f",
            metavar="PATH",
            help="Put this text file in the message, fenced with its path "
            "(repeatable; at most 512 KiB each).",
        ),
    ] = None,
    no_save: Annotated[bool, typer.Option("--no-save", help="Write nothing: no session is saved.")] = False,
    as_json: AsJSON = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="Print the reply as plain text, even at a terminal.")
    ] = False,
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="Render the reply as Markdown, even when stdout is not a terminal."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Notices, the model's reasoning and the session id on stderr, even when it is not a "
            "terminal.",
        ),
    ] = False,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseURLOpt = None,
    system: SystemOpt = None,
    title: TitleOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    repeat_penalty: RepeatPenaltyOpt = None,
    max_tokens: MaxTokensOpt = None,
    timeout: TimeoutOpt = None,
    store: StoreOpt = None,
    model_path: ModelPathOpt = None,
    context_window: ContextWindowOpt = None,
    think: ThinkOpt = None,
    tools: ToolsOpt = None,
    approve: ApproveOpt = None,
) -> None:
    """Ask one question and print the reply: for pipes and scripts (`git diff | chatcli ask "review this"`).
    The turn is saved as a session (see `chatcli resume`) unless --no-save; -c goes on with the last one."""
    flags = {k: v for k, v in locals().items() if k in _SESSION_FLAGS}
    if raw and markdown:
        fail_usage("--raw and --markdown cannot go together")
    if continue_last and session_ref is not None:
        fail_usage("--continue and --session cannot go together (--continue is --session last)")
    talk = _Talk(verbose)
    try:
        text = _message(prompt or [], files or [])
        if title is None and prompt:  # the prompt names the session better than the text piped before it
            from chatcli.snapshot import title_from

            flags["title"] = title_from(" ".join(prompt))
        s = settings(flags)
        where = _store(s, no_save, talk)
    except ChatcliError as e:
        exit_with(e)
    ref = "last" if continue_last else session_ref
    try:
        session = _open(s, where, ref, flags)
    except ChatcliError as e:
        where.close()
        exit_with(e)
    if talk.on:  # (on stderr, with the other notices: never on stdout)
        note_embedded_model(session, s, talk)
    if session.backend is not None:
        session.backend.prepare()  # the embedded model loads while the message is read and saved
    servers = _tools(session, s, ref, flags, talk)
    try:
        _turn(
            session, s, where, text, as_json=as_json, raw=raw, markdown=markdown, talk=talk, saved=not no_save
        )
    finally:
        if servers is not None:
            servers.close()


def _tools(
    session: ConversationSession, s: Settings, ref: str | None, flags: dict[str, Any], talk: _Talk
) -> MCPServers | None:
    """The session's tool servers (``--tools``, or those a continued session recorded), started and
    ready; each one that is not is said in one line. No terminal asks here: a call needs ``--approve``."""
    try:
        servers = with_tools(session, s, s.tools if ref is None or flags.get("tools") else None, talk)
    except ChatcliError as e:
        session.close()
        session.store.close()
        exit_with(e)
    if servers is not None:
        servers.start()
        servers.wait_ready(servers.start_timeout + 1)
        for st in servers.states.values():
            if st.state != "ready":
                talk(f"tool server {st.name} is not available ({st.error or st.state}): its tools are off")
    return servers


_SESSION_FLAGS = (
    "backend",
    "model",
    "base_url",
    "system",
    "title",
    "temperature",
    "top_p",
    "repeat_penalty",
    "max_tokens",
    "timeout",
    "store",
    "model_path",
    "context_window",
    "think",
    "tools",
    "approve",
)


class _Talk:
    """Where notices go: stderr, when it is a terminal or -v asked for them; while a reply is drawn live
    on the same terminal (``view``), above it, as the REPL does."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.terminal = isatty(sys.stderr)
        self.on = verbose or self.terminal
        self.view: Any = None  # the live reply view, while there is one
        self._out: Renderer | None = None
        self._held = ""  # reasoning after its last newline, not yet shown above the live reply
        self._thought_open = False  # reasoning was written to stderr without its last newline

    def reasoning(self, text: str) -> None:
        """A piece of the reply's reasoning: with -v, on stderr as it comes (above a live reply on the same
        terminal, a line at a time); never on stdout."""
        if not self.verbose:
            return
        if self.view is None or not self.terminal:
            _write(sys.stderr, _clean(text) if self.terminal else text)
            self._thought_open = True
            return
        lines = (self._held + text).split("\n")
        self._held = lines.pop()
        for line in lines:
            self.view.notice_dim(line)

    def reasoning_end(self) -> None:
        """The reasoning is over: what is held or left open is ended with a newline."""
        if self._held and self.view is not None:
            self.view.notice_dim(self._held)
        elif self._thought_open:
            _write(sys.stderr, "\n")
        self._held, self._thought_open = "", False

    def __call__(self, message: str) -> None:
        if not self.on:
            return
        if self.view is not None and self.terminal:
            self.view.notice(message)
            return
        if self._out is None:
            from chatcli.cli_common import renderer

            self._out = renderer()
        self._out.notice(message)

    def tool_done(self, call: ToolCallPart, result: ToolResultPart) -> None:
        """A tool call ended: a refused or failed one is one line on stderr always (it is why the answer may
        lack something), one that ran only when notices are on."""
        said = (result.text.strip().splitlines() or [""])[0][:200]
        if not result.is_error:
            self(f"tool {call.name} ran")
            return
        if self._out is None:
            from chatcli.cli_common import renderer

            self._out = renderer()
        self._out.notice(f"tool {call.name}: {said}")


def _message(words: list[str], paths: list[Path]) -> str:
    """Files, then stdin (when it is not a terminal), then the prompt. Raises ConfigError when there is no
    prompt and nothing on stdin, AttachmentError for a file that cannot go in, SizeLimitError for a
    message larger than chatcli keeps."""
    from chatcli import attachments
    from chatcli.errors import ConfigError

    piped = ""
    if not isatty(sys.stdin):
        piped = sys.stdin.buffer.read().decode("utf-8", "replace")
    prompt = " ".join(words)
    if not prompt.strip() and not piped.strip():
        raise ConfigError('give a prompt (chatcli ask "..."), or pipe text into chatcli ask')
    from chatcli.messages import check_size

    files = [attachments.read(p) for p in paths]
    text = attachments.message(files, "\n\n".join(t for t in (piped.rstrip("\n"), prompt) if t.strip()))
    check_size(text)  # before a session is made: a message no store keeps leaves nothing behind
    return text


def _store(s: Settings, no_save: bool, talk: _Talk) -> Store:
    if not no_save:
        return open_store(s, spool=True, notify=talk)
    from chatcli.stores.discard import DiscardingStore

    return DiscardingStore(None)


def _open(s: Settings, store: Store, ref: str | None, flags: dict[str, Any]) -> ConversationSession:
    """A new session, or the one ``ref`` names (with the model, system prompt and sampling given on the
    command line applied from this turn on)."""

    if ref is None:
        return create_session(s, store)
    if store.kind == "none":  # --no-save -c: read the session from the configured store, write nothing
        from chatcli.stores.discard import DiscardingStore

        store = DiscardingStore(open_store(s))
    try:
        session = resume_session(s, store, ref, flags)
    except BaseException:
        store.close()
        raise
    try:
        if flags.get("model") and flags["model"] != session.header.model:
            session.set_model(flags["model"])
        if flags.get("system") is not None and flags["system"].strip() != session.header.system:
            session.set_system(flags["system"])
        given = {
            k: flags[k]
            for k in ("temperature", "top_p", "repeat_penalty", "max_tokens")
            if flags.get(k) is not None
        }
        if given:
            session.params = replace(session.params, **given)
    except BaseException:
        session.close()
        raise
    return session


def _turn(
    session: ConversationSession,
    s: Settings,
    store: Store,
    text: str,
    *,
    as_json: bool,
    raw: bool,
    markdown: bool,
    talk: _Talk,
    saved: bool,
) -> None:
    session.on_notice = talk
    out = _Output(as_json=as_json, raw=raw, markdown=markdown)
    status: int = ExitStatus.OK
    error: ChatcliError | None = None
    reply: Message | None = None
    try:
        with terminate_on_signals(), out:
            talk.view = out.view

            def feed(piece: str) -> None:
                talk.reasoning_end()  # (the answer begins: the reasoning shown on stderr is over)
                out.feed(piece)

            try:
                from chatcli.session import Sinks

                reply = session.send(text, sinks=Sinks(feed, talk.reasoning, talk, done=talk.tool_done))
            finally:
                talk.reasoning_end()
                talk.view = None
    except SessionTimeoutError as e:
        status, error = ExitStatus.TIMEOUT, e
    except (BackendError, SaveError) as e:
        status, error = ExitStatus.ERROR, e
    except Terminated as e:
        status, error = 128 + e.signum, None
    except KeyboardInterrupt:  # (send keeps a reply stopped by Ctrl-C; this is Ctrl-C before it began)
        status = ExitStatus.INTERRUPTED
    finally:
        session.close()
        session.store.close()  # (with --no-save -c, the store it read from)
        store.close()
    if reply is None and session.messages and session.messages[-1].role == "assistant":
        reply = session.messages[-1]
    if reply is not None and reply.status == "interrupted" and status == ExitStatus.OK:
        status = ExitStatus.INTERRUPTED
    if as_json and reply is not None and error is None:
        print_json(_as_json(reply, session.id if saved else None, session.messages))
    elif not as_json:
        out.end()
    if error is not None:
        from chatcli.cli_common import renderer

        renderer().error(f"timed out: {error}" if status == ExitStatus.TIMEOUT else str(error))
    elif reply is not None and reply.finish_reason == "length":
        talk("the reply was cut at the token limit (finish reason: length; --max-tokens sets it)")
    if saved and session.last_save is not None and (status != ExitStatus.ERROR or talk.verbose):
        # (a failed turn is one line on stderr, the error; -v adds where the message was kept)
        talk(f"session {session.id}: chatcli resume {session.id}{store_flag(s)}")
    if session.unsaved and status == ExitStatus.OK:
        status = ExitStatus.ERROR
    if status != ExitStatus.OK:
        raise typer.Exit(status)


def _as_json(reply: Message, session_id: str | None, messages: list[Message]) -> dict[str, Any]:
    """``--json``: the reply and what came with it, as the snapshot stores them; ``tool_calls``: the calls
    of the turn (``name``, ``arguments`` as the model wrote them, ``result``, ``is_error``; result None for
    a call that did not run)."""
    d = reply.to_json()
    return {
        "reply": reply.content,
        "reasoning": reply.reasoning or None,
        "tool_calls": _turn_calls(messages),
        "status": reply.status,
        "finish_reason": reply.finish_reason,
        "model": reply.model,
        "usage": d.get("usage"),
        "timings": d.get("timings"),
        "context": d.get("context"),
        "session_id": session_id,
    }


def _turn_calls(messages: list[Message]) -> list[dict[str, Any]]:
    """The tool calls of the last turn with their results (see ``_as_json``)."""
    from chatcli.model import ToolResultPart

    start = max((i for i, m in enumerate(messages) if m.starts_turn), default=0)
    results = {
        p.call_id: p
        for m in messages[start:]
        if m.role == "tool"
        for p in m.parts
        if isinstance(p, ToolResultPart)
    }
    out = []
    for m in messages[start:]:
        for c in m.tool_calls:
            r = results.get(c.id)
            out.append(
                {
                    "name": c.name,
                    "arguments": c.arguments,
                    "result": r.text if r else None,
                    "is_error": r.is_error if r else None,
                }
            )
    return out


class _Output:
    """Where the reply goes as it streams: a live Markdown view at a terminal, else the text exactly; with
    ``--json`` nowhere until the end; with ``--markdown`` off a terminal, rendered once it is whole."""

    def __init__(self, *, as_json: bool, raw: bool, markdown: bool) -> None:
        terminal = isatty(sys.stdout)
        self.mode = (
            "json" if as_json else "live" if terminal and not raw else "render" if markdown else "text"
        )
        self.clean = terminal  # at a terminal, never a control sequence from the model
        self.parts: list[str] = []
        self.view: Any = None

    def __enter__(self) -> _Output:
        if self.mode == "live":
            from chatcli.render import Renderer

            self.view = Renderer().reply(reasoning="hide").__enter__()  # never on stdout
        return self

    def __exit__(self, *exc: object) -> None:
        if self.view is not None:
            self.view.__exit__(*exc)

    def feed(self, text: str) -> None:
        self.parts.append(text)
        if self.mode == "live":
            self.view.feed(text)
        elif self.mode == "text":
            _write(sys.stdout, _clean(text) if self.clean else text)

    def end(self) -> None:
        whole = "".join(self.parts)
        if self.mode == "render" and whole:
            from chatcli.render import Renderer

            Renderer().markdown(whole)
        elif self.mode == "text" and whole and not whole.endswith("\n"):
            _write(sys.stdout, "\n")


def _clean(text: str) -> str:
    from chatcli.render import sanitize

    return sanitize(text)


def _write(stream: TextIO, text: str) -> None:
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:  # `chatcli ask ... | head -1`: the reader is gone; the turn is still saved
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())  # (so nothing complains at exit)


def register(app: typer.Typer) -> None:
    app.command()(ask)
