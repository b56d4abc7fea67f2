"""The command line (Typer): parses, calls the core, turns errors into one-line messages and exit codes.

Exit codes: 0 done, 1 an error (unreachable server, unknown session, ...), 2 a usage or config error,
130 interrupted by Ctrl-C, 70 an internal error (a bug: rerun with CHATCLI_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from chatcli import __version__
from chatcli.errors import ChatcliError, Terminated

if TYPE_CHECKING:
    from chatcli.config import Settings
    from chatcli.session import ConversationSession

app = typer.Typer(
    name="chatcli",
    help="Chat with LLMs in the terminal. Every turn is saved atomically to a JSON snapshot, so a "
         "timeout, Ctrl-C, crash or server error loses nothing, and `chatcli resume` brings the whole "
         "conversation back. Runs offline on an embedded model by default.",
    add_completion=False,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

SessionsDir = Annotated[Optional[Path], typer.Option(
    "--sessions-dir", metavar="DIR", help="Folder of session snapshots (env: CHATCLI_SESSIONS_DIR; default: ./sessions).")]
Timeout = Annotated[Optional[float], typer.Option(
    "--timeout", metavar="SECONDS", help="Longest a whole reply may take before it is stopped and kept as "
    "'timeout' (default: 600).")]
ModelPath = Annotated[Optional[Path], typer.Option(
    "--model-path", metavar="FILE", help="A GGUF model file for the local backend (default: the bundled "
    "SmolLM2-135M-Instruct).")]
BaseURL = Annotated[Optional[str], typer.Option(
    "--base-url", metavar="URL", help="Server address, e.g. http://127.0.0.1:8080/v1 (openai) or "
    "http://127.0.0.1:11434 (ollama) (env: OPENAI_BASE_URL, OLLAMA_HOST).")]


def _version(value: bool) -> None:
    if value:
        print(f"chatcli {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", "-r", metavar="ID", help="Resume a session: a full id, a unique prefix (or of its last part), 'last' or a title "
        "(same as `chatcli resume ID`).")] = None,
    sessions_dir: SessionsDir = None,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Chat with LLMs in the terminal; nothing is ever lost."""
    if resume is not None:
        if ctx.invoked_subcommand is not None:
            _fail_usage("--resume cannot be combined with a command")
        _resume(resume, {"sessions_dir": sessions_dir})
    elif ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command()
def new(
    backend: Annotated[Optional[str], typer.Option(
        "--backend", "-b", metavar="local|openai|ollama",
        help="Model server: the embedded local model, any OpenAI-compatible server, or Ollama's native API "
             "(env: CHATCLI_BACKEND; default: local).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME", help="Model name (env: CHATCLI_MODEL; default: gpt-4o-mini for openai, "
        "llama3.2 for ollama, the GGUF's name for local).")] = None,
    base_url: BaseURL = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", metavar="TEXT",
                                                  help="System prompt sent before every turn.")] = None,
    title: Annotated[Optional[str], typer.Option(
        "--title", "-t", metavar="TEXT", help="Session title (default: from the first message).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", metavar="X", help="Sampling temperature, 0-2 (default: the server's).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", metavar="N", help="Longest reply in tokens (default: the server's).")] = None,
    timeout: Timeout = None,
    sessions_dir: SessionsDir = None,
    model_path: ModelPath = None,
) -> None:
    """Start a new chat session and open the REPL."""
    flags = {"backend": backend, "model": model, "base_url": base_url, "system": system, "title": title,
             "temperature": temperature, "max_tokens": max_tokens, "timeout": timeout,
             "sessions_dir": sessions_dir, "model_path": model_path}
    try:
        settings = _settings(flags)
        if title is not None:
            _check_title(title)
        session = _create_session(settings)
    except ChatcliError as e:
        _exit_with(e)
    _run_repl(session, settings, resumed=False)


@app.command()
def resume(
    session_id: Annotated[str, typer.Argument(
        metavar="ID", help="A full id, a unique prefix (or of its last part), 'last' (the most recent) or an exact title.")],
    sessions_dir: SessionsDir = None,
    timeout: Timeout = None,
    base_url: BaseURL = None,
    model_path: ModelPath = None,
) -> None:
    """Resume a saved session: shows its history, and the next turn sends the whole context."""
    _resume(session_id, {"sessions_dir": sessions_dir, "timeout": timeout, "base_url": base_url,
                         "model_path": model_path})


# -- helpers ---------------------------------------------------------------------------------------------
def _settings(flags: dict[str, Any]) -> Settings:
    from chatcli.config import resolve

    return resolve(flags)


def _check_title(title: str) -> None:
    from chatcli.library import check_title

    check_title(title)


def _public_url(url: str) -> str:
    """``url`` without user:password, so credentials never reach a session file."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def _backend_for(settings: Settings, backend: str, model: str, base_url: str, model_path: Path | None) -> Any:
    from chatcli.backends import make_backend

    return make_backend(
        backend, model=model, base_url=base_url, api_key=settings.api_key, model_path=model_path,
        n_ctx=settings.n_ctx, threads=settings.threads, keep_alive=settings.keep_alive,
        log_path=settings.state_dir / "local-server.log" if _ensure_dir(settings.state_dir) else None)


def _ensure_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return True
    except OSError:
        return False


def _create_session(settings: Settings) -> ConversationSession:
    from chatcli.session import ConversationSession, GenerationParams
    from chatcli.store import SessionStore

    backend = _backend_for(settings, settings.backend, settings.model, settings.base_url, settings.model_path)
    session = ConversationSession.create(
        SessionStore(settings.sessions_dir), backend, model=backend.model, system=settings.system,
        title=settings.title, params=GenerationParams(settings.temperature, settings.max_tokens),
        base_url="" if settings.backend == "local" else _public_url(backend.base_url))
    if settings.backend == "local" and settings.model_path is not None:
        session.model_path = str(settings.model_path)
        session.save()
    return session


def _resume(ref: str, flags: dict[str, Any]) -> None:
    from chatcli.cli_library import resolve
    from chatcli.session import ConversationSession
    from chatcli.store import SessionStore

    try:
        settings = _settings(flags)
        store = SessionStore(settings.sessions_dir)
        sid = resolve(store, ref)

        def factory(s: ConversationSession) -> Any:
            path = settings.model_path if flags.get("model_path") else (
                Path(s.model_path) if s.model_path else None)
            base = flags.get("base_url") or s.base_url
            return _backend_for(settings, s.backend_name, s.model, base, path)

        session = ConversationSession.resume(store, sid, factory)
    except ChatcliError as e:
        _exit_with(e)
    _run_repl(session, settings, resumed=True)


def _run_repl(session: ConversationSession, settings: Settings, resumed: bool) -> None:
    from chatcli.render import Renderer
    from chatcli.repl import Repl
    from chatcli.session import Timeouts

    session.timeouts = Timeouts(connect=settings.connect_timeout, idle=settings.idle_timeout,
                                total=settings.timeout)
    renderer = Renderer()
    stop: Terminated | None = None
    try:
        with _terminate_on_signals():
            Repl(session, renderer, settings.state_dir / "input_history", resumed=resumed).run()
    except Terminated as e:  # SIGTERM or SIGHUP: a reply in progress was saved as interrupted
        stop = e
    finally:
        session.close()  # saves anything a failed save still owes
    stopped = "" if stop is None else f"\n{stop}: "
    try:  # after SIGHUP the terminal may be gone: writing to it can fail
        if session.unsaved:  # the last save failed even when quitting: say so, never "is saved"
            renderer.error(f"{stopped}session {session.id} could not be saved: its last changes are not in "
                           f"{session.store.path_for(session.id)}")
        else:
            where = "" if settings.sessions_dir == Path("sessions") else f" --sessions-dir {settings.sessions_dir}"
            renderer.info(f"{stopped}{'session' if stop else 'Session'} {session.id} is saved. Resume it with: "
                          f"chatcli resume {session.id}{where}")
    except OSError:
        if stop is None:
            raise
    if stop is not None:
        raise typer.Exit(128 + stop.signum)
    if session.unsaved:
        raise typer.Exit(1)


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


def _exit_with(e: ChatcliError) -> None:
    if os.environ.get("CHATCLI_DEBUG"):
        raise e
    from chatcli.render import Renderer

    Renderer().error(str(e))
    raise typer.Exit(e.exit_code)


def _fail_usage(message: str) -> None:
    from chatcli.errors import ConfigError

    _exit_with(ConfigError(message))


def _register_library() -> None:
    from chatcli import cli_library

    cli_library.register(app)


_register_library()


def main() -> None:
    """Entry point of the ``chatcli`` console script."""
    if sys.argv[1:] in (["--version"], ["-V"]):  # answer at once, without loading the rest
        print(f"chatcli {__version__}")
        return
    try:
        app(prog_name="chatcli")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug: one line, and the traceback only on request
        if os.environ.get("CHATCLI_DEBUG"):
            raise
        print(f"chatcli: internal error: {type(e).__name__}: {e} (rerun with CHATCLI_DEBUG=1 for details)",
              file=sys.stderr)
        sys.exit(70)
