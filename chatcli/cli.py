"""The command line (Typer): parses, calls the core, turns errors into one-line messages and exit codes
(``chatcli.errors.ExitStatus``)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chatcli import __version__
from chatcli.cli_common import (
    StoreOpt,
    exit_with,
    fail_usage,
    open_store,
    resolve,
    store_flag,
)
from chatcli.cli_common import (
    settings as get_settings,
)
from chatcli.errors import ChatcliError, ExitStatus, Terminated

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.config import Settings
    from chatcli.session import ConversationSession
    from chatcli.stores.base import Store

app = typer.Typer(
    name="chatcli",
    help="Chat with LLMs in the terminal. Every turn is saved as it happens, so a timeout, Ctrl-C, crash or "
    "server error loses nothing, and `chatcli resume` brings the whole conversation back. Runs offline on "
    "an embedded model by default. Sessions are kept in ./sessions (JSON files) unless --store names "
    "another folder or a database: sqlite:///path/chats.db, postgresql://user@host/db or "
    "mysql://user@host/db.",
    add_completion=False,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Longest a whole reply may take before it is stopped and kept as 'timeout' (default: 600).",
    ),
]
ModelPath = Annotated[
    Path | None,
    typer.Option(
        "--model-path",
        metavar="FILE",
        help="A GGUF model file for the local backend (default: the bundled SmolLM2-135M-Instruct).",
    ),
]
BaseURL = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        metavar="URL",
        help="Server address, e.g. http://127.0.0.1:8080/v1 (openai) or "
        "http://127.0.0.1:11434 (ollama) (env: OPENAI_BASE_URL, OLLAMA_HOST).",
    ),
]


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
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            metavar="local|openai|ollama",
            help="Model server: the embedded local model, any OpenAI-compatible server, or Ollama's native API "
            "(env: CHATCLI_BACKEND; default: local).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME",
            help="Model name (env: CHATCLI_MODEL; default: gpt-4o-mini for openai, "
            "llama3.2 for ollama, the GGUF's name for local).",
        ),
    ] = None,
    base_url: BaseURL = None,
    system: Annotated[
        str | None,
        typer.Option("--system", "-s", metavar="TEXT", help="System prompt sent before every turn."),
    ] = None,
    title: Annotated[
        str | None,
        typer.Option(
            "--title", "-t", metavar="TEXT", help="Session title (default: from the first message)."
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option("--temperature", metavar="X", help="Sampling temperature, 0-2 (default: the server's)."),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", metavar="N", help="Longest reply in tokens (default: the server's)."),
    ] = None,
    timeout: Timeout = None,
    store: StoreOpt = None,
    model_path: ModelPath = None,
) -> None:
    """Start a new chat session and open the REPL."""
    flags = {
        "backend": backend,
        "model": model,
        "base_url": base_url,
        "system": system,
        "title": title,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "timeout": timeout,
        "store": store,
        "model_path": model_path,
    }
    try:
        settings = get_settings(flags)
        if title is not None:
            from chatcli.library import check_title

            check_title(title)
        notices = _Notices()
        where = open_store(settings, spool=True, notify=notices)
    except ChatcliError as e:
        exit_with(e)
    try:
        where.exists("0")  # one look-up: a database that does not answer stops us before anything is set up
        session = _create_session(settings, where)
    except ChatcliError as e:
        where.close()
        exit_with(e)
    _run_repl(session, settings, where, notices, resumed=False)


@app.command()
def resume(
    session_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="A full id, a unique prefix (or of its last part), 'last' (the most recent) or an exact title.",
        ),
    ],
    store: StoreOpt = None,
    timeout: Timeout = None,
    base_url: BaseURL = None,
    model_path: ModelPath = None,
) -> None:
    """Resume a saved session: shows its history, and the next turn sends the whole context."""
    _resume(session_id, {"store": store, "timeout": timeout, "base_url": base_url, "model_path": model_path})


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


def _backend_for(
    settings: Settings, backend: str, model: str, base_url: str, model_path: Path | None
) -> Backend:
    from chatcli.backends import make_backend

    return make_backend(
        backend,
        model=model,
        base_url=base_url,
        api_key=settings.api_key,
        model_path=model_path,
        n_ctx=settings.n_ctx,
        threads=settings.threads,
        keep_alive=settings.keep_alive,
        log_path=settings.state_dir / "local-server.log" if _ensure_dir(settings.state_dir) else None,
    )


def _ensure_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return True
    except OSError:
        return False


def _create_session(settings: Settings, store: Store) -> ConversationSession:
    from chatcli.session import ConversationSession, GenerationParams

    backend = _backend_for(settings, settings.backend, settings.model, settings.base_url, settings.model_path)
    return ConversationSession.create(
        store,
        backend,
        model=backend.model,
        system=settings.system,
        title=settings.title,
        params=GenerationParams(settings.temperature, settings.max_tokens),
    )


def _resume(ref: str, flags: dict[str, Any]) -> None:
    from chatcli.session import ConversationSession

    try:
        settings = get_settings(flags)
        notices = _Notices()
        store = open_store(settings, spool=True, notify=notices)
    except ChatcliError as e:
        exit_with(e)
    try:
        sid = resolve(store, ref)

        def factory(s: ConversationSession) -> Backend:
            path = (
                settings.model_path
                if flags.get("model_path")
                else (Path(s.model_path) if s.model_path else None)
            )
            base = flags.get("base_url") or s.base_url
            return _backend_for(settings, s.backend_name, s.model, base, path)

        session = ConversationSession.resume(store, sid, factory)
    except ChatcliError as e:
        store.close()
        exit_with(e)
    _run_repl(session, settings, store, notices, resumed=True)


def _run_repl(
    session: ConversationSession, settings: Settings, store: Store, notices: _Notices, resumed: bool
) -> None:
    from chatcli.render import Renderer
    from chatcli.repl import Repl
    from chatcli.session import Timeouts

    session.timeouts = Timeouts(
        connect=settings.connect_timeout, idle=settings.idle_timeout, total=settings.timeout
    )
    renderer = Renderer()
    session.on_notice = renderer.notice
    notices.session = session
    stop: Terminated | None = None
    try:
        with _terminate_on_signals():
            Repl(session, renderer, settings.state_dir / "input_history", resumed=resumed).run()
    except Terminated as e:  # SIGTERM or SIGHUP: a reply in progress was saved as interrupted
        stop = e
    finally:
        try:
            session.close()  # saves anything a failed save still owes
        finally:
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
                f"{session.last_save.location} until {store.display} answers; `chatcli sync` or "
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
    if session.unsaved:
        raise typer.Exit(ExitStatus.ERROR)


@contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """While the REPL runs, SIGTERM and SIGHUP (the terminal closed) raise Terminated in the main thread
    instead of killing the process: a reply in progress is saved as interrupted first."""

    def stop(signum: int, _frame: Any) -> None:
        app = _running_prompt()
        if app is None:
            raise Terminated(signum)

        # At the prompt an exception raised here would land in prompt_toolkit's event loop, which reports
        # it and waits for Enter: end the prompt with it instead (call_soon_threadsafe wakes the loop).
        def end() -> None:
            if app.future is not None and not app.future.done():
                app.exit(exception=Terminated(signum))

        app.loop.call_soon_threadsafe(end)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _running_prompt() -> Any:
    """The prompt_toolkit Application reading input right now, or None (also when it was never loaded)."""
    if "prompt_toolkit" not in sys.modules:
        return None
    from prompt_toolkit.application.current import get_app_or_none

    app = get_app_or_none()
    return app if app is not None and app.is_running and app.loop is not None else None


def _register_commands() -> None:
    from chatcli import cli_library, cli_stores

    cli_library.register(app)
    cli_stores.register(app)


_register_commands()


def main() -> None:
    """Entry point of the ``chatcli`` console script."""
    if sys.argv[1:] in (["--version"], ["-V"]):  # answer at once, without loading the rest
        print(f"chatcli {__version__}")
        return
    try:
        app(prog_name="chatcli")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(ExitStatus.INTERRUPTED)
    except Exception as e:  # a bug: one line, and the traceback only on request
        if os.environ.get("CHATCLI_DEBUG"):
            raise
        print(
            f"chatcli: internal error: {type(e).__name__}: {e} (rerun with CHATCLI_DEBUG=1 for details)",
            file=sys.stderr,
        )
        sys.exit(ExitStatus.INTERNAL)
