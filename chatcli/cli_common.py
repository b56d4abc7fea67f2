"""What every command module (``cli``, ``cli_library``, ``cli_stores``) shares: the options they have in
common, settings, opening the store, resolving a typed id, and turning an error into one line on stderr
and an exit code. Imported by those modules only; it imports none of them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from chatcli.errors import ChatcliError, ConfigError

if TYPE_CHECKING:
    from chatcli.config import Settings
    from chatcli.render import Renderer
    from chatcli.stores import StoreSpec
    from chatcli.stores.base import Store

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        "--sessions-dir",
        metavar="STORE",
        help="Where sessions are kept: a folder (default ./sessions) or a database URL: sqlite:///path/chats.db, "
        "postgresql://user@host/db, mysql://user@host/db (env: CHATCLI_STORE; --sessions-dir is the older "
        "name).",
    ),
]
AsJSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SessionRef = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help="A full id, a unique prefix (or of its last part), 'last' (the most recent) or an exact title.",
    ),
]


def settings(flags: dict[str, Any]) -> Settings:
    """Flags over environment over config file over defaults. Raises ConfigError."""
    from chatcli.config import resolve

    return resolve(flags)


def store_spec(s: Settings) -> StoreSpec:
    from chatcli.stores import parse_store

    return parse_store(s.store)


def open_store(
    s: Settings, *, spool: bool = False, notify: Callable[[str], None] | None = None, sync_spool: bool = True
) -> Store:
    """The store the settings name. A database store first writes back turns a killed chatcli left in the
    local spool (told to ``notify``; not with ``sync_spool=False``); with ``spool`` it also keeps new turns
    there while the database does not answer. Raises ConfigError, StoreError."""
    from chatcli.stores import open_store as open_spec

    spec = store_spec(s)
    store = open_spec(
        spec,
        timeout=s.store_timeout,
        ask_password=_ask_password if _interactive() else None,
        on_progress=_progress if sys.stderr.isatty() else None,
    )
    if not spec.is_database:
        return store
    from chatcli.stores.spool import SpoolingStore, spool_folder, spooled, sync
    from chatcli.stores.sql import SQLStore

    assert isinstance(store, SQLStore)
    from chatcli.errors import StoreUnavailable
    from chatcli.text import count

    folder = spool_folder(s.state_dir, spec.display)
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
    return SpoolingStore(store, folder, notify) if spool else store


def store_flag(s: Settings) -> str:
    """`` --store X`` for a command that must name the store again (the default folder needs nothing),
    with no password in it: chatcli finds that again where it found it the first time."""
    from chatcli.config import DEFAULT_STORE

    if s.store == DEFAULT_STORE:
        return ""
    shown = store_spec(s).display.replace(":***@", "@")
    return f" --store {shown}"


def resolve(store: Store, ref: str) -> str:
    from chatcli.snapshot import resolve as resolve_ref

    return resolve_ref(store, ref)


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
