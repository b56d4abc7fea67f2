"""The command line (Typer): parses, calls the core, turns errors into one-line messages and exit codes
(``chatcli.errors.ExitStatus``)."""

from __future__ import annotations

import inspect
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from chatcli import __version__
from chatcli.cli_common import (
    COMPLETE_VAR,
    ApproveOpt,
    BackendOpt,
    BaseURLOpt,
    ContextWindowOpt,
    MaxTokensOpt,
    ModelOpt,
    ModelPathOpt,
    RepeatPenaltyOpt,
    SessionRef,
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
    resume_session,
    store_flag,
    terminate_on_signals,
    with_tools,
)
from chatcli.cli_common import (
    settings as get_settings,
)
from chatcli.errors import ChatcliError, ExitStatus, Terminated

if TYPE_CHECKING:
    from chatcli.config import Settings
    from chatcli.session import ConversationSession
    from chatcli.stores.base import Store

#: click's base of usage and file errors (the class Typer's public BadParameter derives from): caught by name
#: through the public class, so chatcli does not import Typer's bundled click
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _Commands(TyperGroup):
    """chatcli's command group. At a terminal, Typer shows a usage error as its own panel; piped or logged
    (stderr not a terminal) it is one line, ``error: No such option: --x ...``, like every other chatcli
    error, with the same exit status (2). Arguments that are not UTF-8 are read as ``_readable`` says."""

    def main(  # type: ignore[override]  # the same parameters, passed on
        self,
        args: Any = None,
        prog_name: Any = None,
        complete_var: Any = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = _readable(sys.argv[1:] if args is None else list(args))
        if not standalone_mode or isatty(sys.stderr):
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _CLICK_ERROR as e:
            sys.stderr.write(f"error: {e.format_message()}\n")  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        except typer.Abort:
            sys.exit(ExitStatus.INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


def _readable(args: list[str]) -> list[str]:
    """The arguments with bytes that are not UTF-8 (which Python hands over as lone surrogates) as U+FFFD,
    as stdin gets them, so they can be shown, sent and saved; a path that exists is left as it is, so a
    file whose name is not UTF-8 can still be named."""
    out = []
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            if not os.path.lexists(arg):
                from chatcli.snapshot import valid_unicode

                arg = valid_unicode(arg)
        out.append(arg)
    return out


app = typer.Typer(
    name="chatcli",
    cls=_Commands,
    help="Chat with LLMs in the terminal. Every turn is saved as it happens, so a timeout, Ctrl-C, crash or "
    "server error loses nothing, and `chatcli resume` brings the whole conversation back. Runs offline on "
    "an embedded model by default: SmolLM2-135M, tiny, for trying chatcli, not for answers; for a real model "
    "use --backend openai --base-url http://HOST:PORT/v1 (any OpenAI-compatible server) or --backend ollama. "
    "Sessions are kept in ./sessions (JSON files) unless --store names "
    "another folder or a database: sqlite://chats.db, postgresql://user@host/db or "
    "mysql://user@host/db.",
    add_completion=False,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"chatcli {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            "-r",
            metavar="ID",
            help="Resume a session: a full id, a unique prefix (or of its last part), "
            "'last' or a title (same as `chatcli resume ID`).",
        ),
    ] = None,
    store: StoreOpt = None,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Chat with LLMs in the terminal; nothing is ever lost."""
    if resume is not None:
        if ctx.invoked_subcommand is not None:
            fail_usage("--resume cannot be combined with a command")
        _resume(resume, {"store": store})
    elif ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command()
def new(
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
    """Start a new chat session and open the REPL."""
    flags = dict(locals())
    try:
        settings = get_settings(flags)
        notices = _Notices()
        where = open_store(settings, spool=True, notify=notices)
    except ChatcliError as e:
        exit_with(e)
    try:
        where.exists("0")  # one look-up: a database that does not answer stops us before anything is set up
        session = create_session(settings, where)
    except ChatcliError as e:
        where.close()
        exit_with(e)
    _run_repl(session, settings, where, notices, resumed=False, tools=settings.tools)


@app.command()
def resume(
    session_id: SessionRef,
    store: StoreOpt = None,
    timeout: TimeoutOpt = None,
    base_url: BaseURLOpt = None,
    model_path: ModelPathOpt = None,
    context_window: ContextWindowOpt = None,
    think: ThinkOpt = None,
    tools: ToolsOpt = None,
    approve: ApproveOpt = None,
) -> None:
    """Resume a saved session: shows its history, and the next turn sends the context again (with the
    tools it used, unless --tools names others)."""
    _resume(
        session_id,
        {
            "store": store,
            "timeout": timeout,
            "base_url": base_url,
            "model_path": model_path,
            "context_window": context_window,
            "think": think,
            "tools": tools,
            "approve": approve,
        },
    )


# -- helpers ---------------------------------------------------------------------------------------------
class _Notices:
    """Where one-line notices from the store go: the session's (so a notice during a reply is shown above
    it), or stderr before there is a session."""

    def __init__(self) -> None:
        self.session: ConversationSession | None = None

    def __call__(self, message: str) -> None:
        if self.session is not None:
            self.session.notify(message)
            return
        from chatcli.cli_common import renderer

        renderer().notice(message)


def _resume(ref: str, flags: dict[str, Any]) -> None:
    try:
        settings = get_settings(flags)
        notices = _Notices()
        store = open_store(settings, spool=True, notify=notices)
    except ChatcliError as e:
        exit_with(e)
    try:
        session = resume_session(settings, store, ref, flags)
    except ChatcliError as e:
        store.close()
        exit_with(e)
    _run_repl(
        session, settings, store, notices, resumed=True, tools=settings.tools if flags.get("tools") else None
    )


def _run_repl(
    session: ConversationSession,
    settings: Settings,
    store: Store,
    notices: _Notices,
    resumed: bool,
    tools: list[str] | None,
) -> None:
    """The REPL on ``session``, with the tools of the MCP servers ``tools`` (None: those it recorded)."""
    from chatcli.render import Renderer
    from chatcli.repl import Repl, running_prompt

    renderer = Renderer()
    session.on_notice = renderer.notice
    notices.session = session
    stop: Terminated | None = None
    repl = Repl(session, renderer, settings.state_dir / "input_history", resumed=resumed)
    repl.show_reasoning = settings.show_reasoning
    note_embedded_model(session, settings, repl.notes.append)
    try:
        repl.servers = with_tools(session, settings, tools, renderer.notice)
        with terminate_on_signals(at_prompt=running_prompt):
            repl.run()
    except Terminated as e:  # SIGTERM or SIGHUP: a reply in progress was saved as interrupted
        stop = e
    except ChatcliError as e:  # a --tools the config lacks (the finally below closes everything)
        exit_with(e)
    finally:
        try:
            session.close()  # saves anything a failed save still owes
        finally:
            if repl.servers is not None:
                repl.servers.close()
            store.close()
    stopped = "" if stop is None else f"\n{stop}: "
    try:  # after SIGHUP the terminal may be gone: writing to it can fail
        if session.unsaved:  # the last save failed even when quitting: say so, never "is saved"
            renderer.error(
                f"{stopped}session {session.id} could not be saved: its last changes are not in "
                f"{store.location(session.id)}"
            )
        elif session.last_save is not None and session.last_save.spooled:
            renderer.notice(
                f"{stopped}session {session.id} is kept on this machine in "
                f"{session.last_save.location} until {store.display} takes it; `chatcli sync` or "
                f"`chatcli resume {session.id}{store_flag(settings)}` writes it there"
            )
        else:
            renderer.info(
                f"{stopped}{'session' if stop else 'Session'} {session.id} is saved. Resume it with: "
                f"chatcli resume {session.id}{store_flag(settings)}"
            )
    except OSError:
        if stop is None:
            raise
    if stop is not None:
        raise typer.Exit(128 + stop.signum)
    failed = None if sys.stdin.isatty() else repl.summary()  # a piped REPL says when a turn failed
    if failed is not None:
        renderer.error(failed)
    if session.unsaved or failed is not None:
        raise typer.Exit(ExitStatus.ERROR)


def _register_commands() -> None:
    from chatcli import cli_ask, cli_library, cli_stores, cli_tools

    cli_ask.register(app)
    cli_library.register(app)
    cli_stores.register(app)
    cli_tools.register(app)
    for info in app.registered_commands:
        info.help = _flowing(info.help or inspect.getdoc(info.callback) or "")


def _flowing(text: str) -> str:
    """``text`` (a docstring) with the line breaks inside its paragraphs made spaces, paragraphs kept: a
    docstring is wrapped for the source, while help is wrapped by rich to the screen's width (Typer's rich
    help would keep a docstring's breaks and cut sentences mid-line)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


_register_commands()


def main() -> None:
    """Entry point of the ``chatcli`` console script."""
    if sys.argv[1:] in (["--version"], ["-V"]):  # answer at once, without loading the rest
        print(f"chatcli {__version__}")
        return
    if COMPLETE_VAR in os.environ:  # the shell asks for completions (`chatcli completion` set it up)
        from typer.completion import completion_init  # type: ignore[attr-defined]  # re-exported

        completion_init()
    try:
        app(prog_name="chatcli")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(ExitStatus.INTERRUPTED)
    except Exception as e:  # a bug: one line, and the traceback only on request
        if os.environ.get("CHATCLI_DEBUG"):
            raise
        from chatcli.stores.url import redact_known

        print(
            f"chatcli: internal error: {type(e).__name__}: {redact_known(str(e))} (rerun with "
            f"CHATCLI_DEBUG=1 for details)",
            file=sys.stderr,
        )
        sys.exit(ExitStatus.INTERNAL)
