"""What every command module (``cli``, ``cli_library``, ``cli_stores``) shares: the options they have in
common, settings, opening the store, resolving a typed id, and turning an error into one line on stderr
and an exit code. Imported by those modules only; it imports none of them."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from chatcli.errors import ChatcliError, ConfigError, Terminated

if TYPE_CHECKING:
    from chatcli.backends.base import Backend
    from chatcli.config import Settings
    from chatcli.mcp_client import MCPServers
    from chatcli.messages import GenerationParams, Timeouts
    from chatcli.render import Renderer
    from chatcli.session import ConversationSession
    from chatcli.stores import StoreURL
    from chatcli.stores.base import Store, VersionedStore

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        "--sessions-dir",
        metavar="STORE",
        help="Where sessions are kept: a folder (default ./sessions) or a database URL: sqlite://chats.db, "
        "postgresql://user@host/db, mysql://user@host/db (env: CHATCLI_STORE; --sessions-dir is the older "
        "name).",
    ),
]
AsJSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

# -- the options of a new session, shared by `new` and `ask` (declared here once) --------------------------
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        metavar="local|openai|ollama",
        help="Model server: the embedded local model (SmolLM2-135M: tiny, for trying chatcli offline, not for "
        "answers), any OpenAI-compatible server, or Ollama's native API (env: CHATCLI_BACKEND; default: local).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME",
        help="Model name (env: CHATCLI_MODEL; default: gpt-4o-mini for openai, llama3.2 for ollama, the GGUF's "
        "name for local).",
    ),
]
BaseURLOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        metavar="URL",
        help="Server address, e.g. http://127.0.0.1:8080/v1 (openai) or http://127.0.0.1:11434 (ollama) (env: "
        "OPENAI_BASE_URL, OLLAMA_HOST).",
    ),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", "-s", metavar="TEXT", help="System prompt sent before every turn.")
]
TitleOpt = Annotated[
    str | None,
    typer.Option("--title", "-t", metavar="TEXT", help="Session title (default: from the first message)."),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature", metavar="X", help="Sampling temperature, 0-2 (default: the model's; 0.2 for local)."
    ),
]
TopPOpt = Annotated[
    float | None,
    typer.Option(
        "--top-p", metavar="P", help="Nucleus sampling, above 0 to 1 (default: the model's; 0.9 for local)."
    ),
]
RepeatPenaltyOpt = Annotated[
    float | None,
    typer.Option(
        "--repeat-penalty",
        metavar="X",
        help="Above 1 discourages repeating text (local and ollama; default: 1.1 for local).",
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens", metavar="N", help="Longest reply in tokens (default: the server's; 512 for local)."
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Longest a whole reply may take before it is stopped and kept as 'timeout' (default: 600).",
    ),
]
ContextWindowOpt = Annotated[
    int | None,
    typer.Option(
        "--context-window",
        metavar="TOKENS",
        help="The model's context window: older turns are left out of a request that would not fit (default: "
        "what the server states; n_ctx for local).",
    ),
]
ThinkOpt = Annotated[
    bool | None,
    typer.Option(
        "--think/--no-think",
        help="Ask a thinking model on Ollama to reason first, or not (Ollama's think; default: the model's "
        "own). Other servers reason as their model does; chatcli shows and keeps what they send.",
    ),
]
ToolsOpt = Annotated[
    str | None,
    typer.Option(
        "--tools",
        metavar="NAME[,NAME]",
        help="Offer the model the tools of these MCP servers (the config file's mcp.servers.NAME tables); "
        "recorded in the session, so resume offers them again. Each call is shown and asked about before it "
        "runs.",
    ),
]
ApproveOpt = Annotated[
    str | None,
    typer.Option(
        "--approve",
        metavar="PATTERN[,PATTERN]",
        help="Tool calls to run without asking, as server.tool patterns (time.*, git.git_status); "
        "config approve.",
    ),
]
ModelPathOpt = Annotated[
    Path | None,
    typer.Option(
        "--model-path",
        metavar="FILE",
        help="A GGUF model file for the local backend (default: the bundled SmolLM2-135M-Instruct).",
    ),
]
SessionRef = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help="A full id, a unique prefix (or of its last part), 'last' (the most recent) or an exact title.",
    ),
]

#: the environment variable through which a shell asks for completions (`chatcli completion`)
COMPLETE_VAR = "_CHATCLI_COMPLETE"


def settings(flags: dict[str, Any]) -> Settings:
    """Flags over environment over config file over defaults; a ``--title`` given is checked and
    stripped (as ``rename`` does). Raises ConfigError."""
    from chatcli.config import resolve

    s = resolve(flags)
    if flags.get("title") is not None:
        from chatcli.library import check_title

        s.title = check_title(flags["title"])
    return s


def timeouts(s: Settings) -> Timeouts:
    """The limits of one turn the settings give (seconds)."""
    from chatcli.messages import Timeouts

    return Timeouts(connect=s.connect_timeout, idle=s.idle_timeout, total=s.timeout)


def generation_params(s: Settings) -> GenerationParams:
    """The sampling parameters a new session records: what the user set (flags, environment, config file)
    over the backend's defaults (``chatcli.backends.default_params``)."""
    from chatcli.backends import default_params
    from chatcli.messages import GenerationParams

    given = GenerationParams(
        temperature=s.temperature, max_tokens=s.max_tokens, top_p=s.top_p, repeat_penalty=s.repeat_penalty
    )
    return given.over(default_params(s.backend))


def backend_for(
    settings: Settings, backend: str, model: str, base_url: str, model_path: Path | None
) -> Backend:
    """The backend ``backend`` for these settings (its log in the state folder). Raises ConfigError."""
    from chatcli.backends import make_backend

    return make_backend(
        backend,
        model=model,
        base_url=base_url,
        api_key=settings.api_key,
        model_path=model_path,
        n_ctx=settings.n_ctx,
        context_window=settings.context_window,
        threads=settings.threads,
        keep_alive=settings.keep_alive,
        think=settings.think,
        log_path=settings.state_dir / "local-server.log" if _ensure_dir(settings.state_dir) else None,
    )


def _ensure_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return True
    except OSError:
        return False


def create_session(settings: Settings, store: Store) -> ConversationSession:
    """A new session in ``store`` with the settings' backend, model, system prompt, title and sampling.
    Raises ConfigError, SaveError, StoreError."""
    from chatcli.session import ConversationSession

    backend = backend_for(settings, settings.backend, settings.model, settings.base_url, settings.model_path)
    session = ConversationSession.create(
        store,
        backend,
        model=backend.model,
        system=settings.system,
        title=settings.title,
        params=generation_params(settings),
    )
    return with_run_settings(session, settings)


def resume_session(settings: Settings, store: Store, ref: str, flags: dict[str, Any]) -> ConversationSession:
    """The session ``ref`` names in ``store`` (see ``resolve``), its lock taken, on its own backend and
    model, at the ``--base-url`` or ``--model-path`` given in ``flags`` when there is one. Raises
    SessionNotFound, AmbiguousSessionId, SessionLocked, SnapshotError, StoreError, ConfigError."""
    from chatcli.session import ConversationSession

    sid = resolve(store, ref)

    def factory(found: ConversationSession) -> Backend:
        given = settings.model_path if flags.get("model_path") else None
        path = given or (Path(found.header.model_path) if found.header.model_path else None)
        base = flags.get("base_url") or found.header.base_url or ""
        return backend_for(settings, found.header.backend, found.header.model, base, path)

    return with_run_settings(ConversationSession.resume(store, sid, factory), settings)


def with_tools(
    session: ConversationSession, settings: Settings, names: list[str] | None, notify: Callable[[str], None]
) -> MCPServers | None:
    """Give ``session`` the tools of the MCP servers ``names`` (None: those the session recorded, for a
    resume), recorded in its header; returns the servers, not started yet (None: no tools). The embedded
    model calls no tools: then a notice, and none. Raises ConfigError for a server named in ``names`` that
    the config lacks; a recorded one this machine's config lacks is a notice, and the session goes on
    without it (the record is kept for the machines that have it)."""
    recorded = names is None
    names = list(session.header.tools or []) if names is None else names
    if not names:
        return None
    if session.backend is not None and session.backend.name == "local":
        notify("the embedded model (SmolLM2-135M) does not call tools: this session offers none")
        return None
    missing = [n for n in names if n not in settings.mcp_servers]
    if missing and not recorded:
        raise ConfigError(
            f"no MCP server named {missing[0]!r} in {settings.config_path} ([mcp.servers.NAME])"
        )
    if missing:
        notify(
            f"this session used the tool {'server' if len(missing) == 1 else 'servers'} {', '.join(missing)}, "
            f"which {settings.config_path} does not configure ([mcp.servers.NAME]): going on without "
            f"{'its' if len(missing) == 1 else 'their'} tools"
        )
        names = [n for n in names if n not in missing]
        if not names:
            return None
    from chatcli.mcp_client import MCPServers
    from chatcli.tools import ToolRunner

    servers = MCPServers([settings.mcp_servers[n] for n in names], settings.state_dir / "mcp")
    session.tools = ToolRunner(servers, settings.approve, settings.tool_timeout, settings.max_tool_rounds)
    if not recorded and session.header.tools != names:
        session.header.tools = names
        session.save()
    return servers


def with_run_settings(session: ConversationSession, settings: Settings) -> ConversationSession:
    """``session`` with what each run takes from its own settings and never saves: the timeouts, the
    ``context_window``, ``compact_at`` and ``compact_keep`` settings."""
    session.timeouts = timeouts(settings)
    session.planner.window_setting = settings.context_window
    session.planner.compact_at = settings.compact_at
    session.planner.compact_keep = settings.compact_keep
    return session


#: said once, at the first session on the embedded model (see ``note_embedded_model``)
EMBEDDED_NOTE = (
    "the embedded model (SmolLM2-135M) is tiny: it is here to try chatcli offline, and its answers are often "
    "wrong. For real answers, point chatcli at a real model: --backend openai --base-url http://HOST:PORT/v1 "
    "(any OpenAI-compatible server: llama.cpp, vLLM, LM Studio, Ollama's /v1) or --backend ollama --model NAME"
)
EMBEDDED_NOTED = "embedded-model-noted"  # the file in the state folder that says EMBEDDED_NOTE was said


def note_embedded_model(
    session: ConversationSession, settings: Settings, notify: Callable[[str], None]
) -> None:
    """Tell ``notify`` EMBEDDED_NOTE when ``session`` runs on the embedded model (the local backend's bundled
    file, not a ``--model-path``) and no session of this user has been told yet: once per state folder,
    remembered by the file EMBEDDED_NOTED there (a folder that cannot be written: told each time)."""
    if session.header.backend != "local" or session.backend is None:
        return
    if session.backend.recorded().get("model_path"):
        return
    noted = settings.state_dir / EMBEDDED_NOTED
    if noted.exists():
        return
    notify(EMBEDDED_NOTE)
    try:
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        noted.touch()
    except OSError:
        pass


def store_url(s: Settings) -> StoreURL:
    """The settings' store, parsed (``chatcli.stores.url``). Raises ConfigError."""
    from chatcli.stores import parse_store

    return parse_store(s.store)


def open_store(
    s: Settings, *, spool: bool = False, notify: Callable[[str], None] | None = None, sync_spool: bool = True
) -> Store:
    """The store the settings name. A database store first writes back turns a killed chatcli left in the
    local spool (told to ``notify``; not with ``sync_spool=False``); with ``spool`` it also keeps new turns
    there while the database does not answer. Raises ConfigError, StoreError."""
    from chatcli.stores import open_store as open_spec

    url = store_url(s)
    if not url.is_database:
        return open_spec(url, on_progress=_progress if sys.stderr.isatty() else None)
    store = open_database(s, notify=notify, sync_spool=sync_spool)
    if not spool:
        return store
    from chatcli.stores.spool import SpoolingStore, spool_folder

    return SpoolingStore(store, spool_folder(s.state_dir, url), notify)


def open_database(
    s: Settings, *, notify: Callable[[str], None] | None = None, sync_spool: bool = True
) -> VersionedStore:
    """The database store the settings name (``store_url(s).is_database``), having written back the turns a
    killed chatcli left in the local spool (told to ``notify``; not with ``sync_spool=False``). Raises
    ConfigError (a folder), StoreError."""
    from chatcli.errors import StoreUnavailable
    from chatcli.stores import open_database as open_spec
    from chatcli.stores.spool import adopt_legacy_spool, spool_folder, spooled, sync
    from chatcli.text import count

    url = store_url(s)
    store = open_spec(url, timeout=s.store_timeout, ask_password=_ask_password if _interactive() else None)
    adopt_legacy_spool(s.state_dir, url)
    folder = spool_folder(s.state_dir, url)
    waiting = spooled(folder)
    if sync_spool and waiting:
        try:
            outcomes = sync(store, folder)
        except StoreUnavailable as e:
            store.close()
            raise StoreUnavailable(
                f"{e}; {count(len(waiting), 'session')} with turns kept on this machine in "
                f"{folder} will be written there when it answers"
            ) from None
        for outcome in outcomes:
            if outcome.status != "open" and notify is not None:
                notify(outcome.message)
    return store


def store_flag(s: Settings) -> str:
    """`` --store X`` for a command that must name the store again (the default folder needs nothing),
    with no password in it: chatcli finds that again where it found it the first time."""
    from chatcli.config import DEFAULT_STORE

    if s.store == DEFAULT_STORE:
        return ""
    return f" --store {store_url(s).address}"


def resolve(store: Store, ref: str) -> str:
    """``snapshot.resolve`` for a command; when a relative sessions folder (the default ``./sessions``)
    holds nothing, the error says where that is and how to keep sessions in one place."""
    from chatcli.errors import SessionNotFound
    from chatcli.snapshot import resolve as resolve_ref

    try:
        return resolve_ref(store, ref)
    except SessionNotFound as e:
        root = getattr(store, "root", None)
        if store.kind != "folder" or not isinstance(root, Path) or root.is_absolute() or store.newest_id():
            raise
        from chatcli.config import config_path

        first = str(e).removesuffix("; start one with `chatcli new`").removesuffix(" yet")
        raise SessionNotFound(
            f"{first} ({Path.cwd()}{os.sep}{root}): sessions are kept in the folder chatcli runs in; to keep "
            "them in one "
            f'place wherever you run it, set store = "~/chatcli-sessions" in {config_path(dict(os.environ))} '
            "(or CHATCLI_STORE, or --store)"
        ) from None


def exit_with(e: ChatcliError) -> NoReturn:
    """Print ``e`` as one line on stderr and exit with its code (re-raised under CHATCLI_DEBUG)."""
    if os.environ.get("CHATCLI_DEBUG"):
        raise e
    renderer().error(str(e))
    raise typer.Exit(e.exit_code)


def fail_usage(message: str) -> NoReturn:
    exit_with(ConfigError(message))


def renderer() -> Renderer:
    from chatcli.render import Renderer

    return Renderer()


def print_json(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for one that is closed or has no ``isatty``)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _ask_password(prompt: str) -> str:
    import getpass

    try:
        return getpass.getpass(prompt, stream=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        raise ConfigError("no password given") from None


def _progress(done: int, total: int) -> None:
    """A one-line counter on the terminal while the index reads many files (the first run on a big folder)."""
    end = "\n" if done == total else ""
    sys.stderr.write(
        f"\rchatcli: indexing session files: {done:,} of {total:,} (later runs read only changes)" + end
    )
    sys.stderr.flush()


@contextmanager
def terminate_on_signals(at_prompt: Callable[[], Any] | None = None) -> Iterator[None]:
    """While a turn or the REPL runs, SIGTERM and SIGHUP (the terminal closed) raise Terminated in the main
    thread instead of killing the process: a reply in progress is saved as interrupted first.

    ``at_prompt`` returns the prompt_toolkit Application reading input right now, or None (the REPL passes
    ``repl.running_prompt``): a signal that arrives at the prompt ends the prompt with Terminated."""

    def stop(signum: int, _frame: Any) -> None:
        app = at_prompt() if at_prompt is not None else None
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
