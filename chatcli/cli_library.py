"""The session library's commands: list, show, search, rename, delete, restore, prune, export, import,
fork, stats. Registered on the Typer app by ``cli.py``; like it, they only parse, call the core and map
errors to one-line messages and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chatcli.cli_common import (
    AsJSON,
    SessionRef,
    StoreOpt,
    exit_with,
    open_store,
    print_json,
    renderer,
    resolve,
    settings,
)
from chatcli.errors import ChatcliError, ConfigError, ExportError, SessionNotFound
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.stores.base import Store


@contextmanager
def _opened(name: str | None) -> Iterator[Store]:
    """The store named by ``--store`` (or the settings), closed afterwards."""
    st = open_store(settings({"store": name}), notify=renderer().notice)
    try:
        yield st
    finally:
        st.close()


def list_sessions(
    store_name: StoreOpt = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            metavar="N",
            min=1,
            help="Show at most N sessions (default 50; see --all).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DATE",
            help="Only sessions updated since DATE: YYYY-MM-DD, YYYY-MM-DDTHH:MM, or an age like 7d, 12h.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="NAME", help="Only sessions whose model name contains NAME."),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Show every session (no limit).")] = False,
    in_trash: Annotated[
        bool,
        typer.Option(
            "--trash", help="List the sessions in the trash instead (what `restore ID` brings back)."
        ),
    ] = False,
    as_json: AsJSON = False,
) -> None:
    """List sessions, most recently updated first: id, title, model, turns, tokens, last update.
    Damaged files are reported with their path (on stderr)."""
    from chatcli.library import parse_date

    shown = None if show_all else (limit if limit is not None else 50)
    try:
        cutoff = parse_date(since) if since else None
        with _opened(store_name) as st:  # only the rows shown are read
            page = st.page(shown, since=cutoff, model=model, trashed=in_trash)
    except ChatcliError as e:
        exit_with(e)
    if as_json:
        print_json(
            [
                {
                    "id": r.id,
                    "title": r.title,
                    "backend": r.backend,
                    "model": r.model,
                    "turns": r.turns,
                    "messages": r.messages,
                    "tokens": r.tokens,
                    "created_at": r.created_at,
                    "updated_at": r.updated_at,
                    "location": r.location,
                }
                for r in page.rows
            ]
        )
        for d in page.damaged:
            print(f"damaged: {d.message}", file=sys.stderr)
        return
    out = renderer()
    if in_trash and not page.rows and not page.damaged:
        out.info("The trash is empty.")
        return
    out.session_table(page.rows, page.damaged)
    if page.total > len(page.rows):
        out.info(f"{page.total - len(page.rows)} more; use --all or --limit N to see them")


def show(
    session_id: SessionRef,
    raw: Annotated[
        bool, typer.Option("--raw", help="The transcript as plain Markdown text, not rendered.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The snapshot itself (JSON).")] = False,
    reasoning: Annotated[
        bool,
        typer.Option("--reasoning", help="Show the model's reasoning whole (else folded to one line)."),
    ] = False,
    store_name: StoreOpt = None,
) -> None:
    """Show a session's transcript, each message's status (interrupted, timeout, error) visible."""
    from chatcli.transcript import export, transcript_markdown

    try:
        with _opened(store_name) as st:
            snap = st.load(resolve(st, session_id))
    except ChatcliError as e:
        exit_with(e)
    from chatcli.render import sanitize

    if as_json:
        sys.stdout.buffer.write(export(snap, "snapshot"))  # JSON escapes control characters itself
    elif raw or not sys.stdout.isatty():
        sys.stdout.write(
            sanitize(transcript_markdown(snap, reasoning=reasoning)) + "\n"
        )  # model text never reaches a terminal raw
    else:
        renderer().markdown(transcript_markdown(snap, reasoning=reasoning))


def search(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="TEXT",
            help="Words to find: a message matches when "
            "it holds every word (as a word prefix; case and accents ignored).",
        ),
    ],
    role: Annotated[
        str | None,
        typer.Option("--role", metavar="ROLE", help="Only user, assistant, tool (results) or title."),
    ] = None,
    session: Annotated[
        str | None,
        typer.Option("--session", metavar="ID", help="Only this session (id, prefix, last or title)."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", metavar="N", min=1, help="At most N hits (default 20)."),
    ] = 20,
    reasoning: Annotated[
        bool,
        typer.Option(
            "--reasoning",
            help="Also search the assistant's reasoning (hits there have the role reasoning).",
        ),
    ] = False,
    store_name: StoreOpt = None,
    as_json: AsJSON = False,
) -> None:
    """Search every session's messages and titles; each hit shows the session id, title, turn, role and a
    snippet with the match highlighted."""
    text = " ".join(words)
    try:
        if role is not None and role not in ("user", "assistant", "tool", "title"):
            raise ConfigError(f"--role must be user, assistant, tool or title, not {role!r}")
        with _opened(store_name) as st:
            sid = resolve(st, session) if session else None
            hits = st.search(text, role=role, session_id=sid, limit=limit, reasoning=reasoning)
    except ChatcliError as e:
        exit_with(e)
    if as_json:
        from chatcli.search import HIGHLIGHT

        print_json(
            [
                {
                    "session_id": h.session_id,
                    "title": h.title,
                    "turn": h.turn,
                    "role": h.role,
                    "position": h.position,
                    "snippet": h.snippet.replace(HIGHLIGHT[0], "").replace(HIGHLIGHT[1], ""),
                }
                for h in hits
            ]
        )
        return
    renderer().search_hits(hits, text)


def rename(
    session_id: SessionRef,
    title: Annotated[str, typer.Argument(metavar="TITLE")],
    store_name: StoreOpt = None,
) -> None:
    """Give a session a new title."""
    from chatcli.library import rename as do_rename

    try:
        with _opened(store_name) as st:
            sid = resolve(st, session_id)
            do_rename(st, sid, title)
    except ChatcliError as e:
        exit_with(e)
    renderer().info(f"Session {sid} is now titled {title.strip()!r}.")


def delete(
    session_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sessions to delete.")],
    purge: Annotated[
        bool, typer.Option("--purge", help="Remove for good instead of moving to the trash.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")
    ] = False,
    store_name: StoreOpt = None,
) -> None:
    """Move sessions to the trash (`chatcli restore ID` undoes it), or remove them for good with --purge."""
    from chatcli.library import resolve_trashed

    out = renderer()
    try:
        with _opened(store_name) as st:
            ids: list[tuple[str, bool]] = []  # (id, in the trash)
            for ref in session_ids:
                try:
                    ids.append((resolve(st, ref), False))
                except SessionNotFound as missing:  # an ambiguous id is not looked for in the trash
                    if not purge:
                        raise
                    try:
                        ids.append((resolve_trashed(st, ref), True))
                    except SessionNotFound:
                        raise SessionNotFound(f"{missing}; nor is it in the trash") from None
            if purge and not yes:
                if not sys.stdin.isatty():
                    raise ConfigError(
                        "--purge removes sessions for good: confirm with --yes when not at a terminal"
                    )
                listed = ", ".join(sid for sid, _ in ids)
                answer = input(f"Remove {count(len(ids), 'session')} for good ({listed})? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    out.info("Nothing removed.")
                    return
            for sid, trashed in ids:
                if purge:
                    st.purge(sid, trashed=trashed)
                    out.info(f"Removed {sid} for good.")
                else:
                    st.trash(sid)
                    out.info(f"Moved {sid} to the trash (chatcli restore {sid} brings it back).")
    except ChatcliError as e:
        exit_with(e)


def restore(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="A trashed session's id or prefix.")],
    store_name: StoreOpt = None,
) -> None:
    """Bring a session back from the trash."""
    from chatcli.library import resolve_trashed

    try:
        with _opened(store_name) as st:
            sid = resolve_trashed(st, session_id)
            st.restore(sid)
    except ChatcliError as e:
        exit_with(e)
    renderer().info(f"Restored {sid}.")


def prune(
    older_than: Annotated[
        str,
        typer.Option("--older-than", metavar="AGE", help="Sessions not updated for AGE, e.g. 30d, 12h, 2w."),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be moved.")] = False,
    store_name: StoreOpt = None,
) -> None:
    """Move sessions not updated for a while to the trash."""
    from chatcli import library

    out = renderer()
    moved = 0
    try:
        age = library.parse_age(older_than)
        with _opened(store_name) as st:
            ids = library.older_than(st, age)
            if dry_run:
                for sid in ids:
                    print(sid)
                out.info(f"{count(len(ids), 'session')} would be moved to the trash.")
                return
            for sid in ids:
                try:
                    st.trash(sid)
                    moved += 1
                except ChatcliError as e:
                    out.error(str(e))
    except ChatcliError as e:
        exit_with(e)
    out.info(f"Moved {count(moved, 'session')} to the trash.")


def export_cmd(
    session_id: SessionRef,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            metavar="md|json|jsonl|snapshot",
            help="md: a transcript; json: the conversation in the OpenAI chat format; jsonl: every message, "
            "one per line; snapshot: chatcli's own form, lossless.",
        ),
    ] = "md",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write to FILE (refuses to overwrite) instead of stdout."
        ),
    ] = None,
    store_name: StoreOpt = None,
) -> None:
    """Export a session as a Markdown transcript, as JSON in the OpenAI chat format (tool calls and results
    included), as JSON Lines, or as its snapshot."""
    from chatcli.transcript import export

    try:
        with _opened(store_name) as st:
            data = export(st.load(resolve(st, session_id)), fmt)
        if output is None:
            if sys.stdout.isatty():  # model text may hold escape sequences: never raw to a terminal
                from chatcli.render import sanitize

                data = sanitize(data.decode("utf-8", "replace")).encode()
            sys.stdout.buffer.write(data)
            return
        try:
            with open(output, "xb") as f:
                f.write(data)
        except FileExistsError:
            raise ExportError(f"{output} already exists; choose another file") from None
        except OSError as e:
            raise ExportError(f"cannot write {output}: {e.strerror}") from None
    except ChatcliError as e:
        exit_with(e)
    renderer().info(f"Wrote {output} ({len(data):,} bytes).")


def import_cmd(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help='A chatcli session file, an OpenAI-style {"messages": [...]} or a list of messages.',
        ),
    ],
    store_name: StoreOpt = None,
) -> None:
    """Import a conversation as a new session (never overwrites one). A file of chatcli's local spool (turns
    a database did not take) leaves the spool once it is imported."""
    from chatcli.library import SPOOLED, import_file

    try:
        state = settings({"store": store_name}).state_dir
        with _opened(store_name) as st:
            sid, kind = import_file(st, file)
    except ChatcliError as e:
        exit_with(e)
    note = ""
    if kind == SPOOLED and _in_folder(file, state / "spool"):
        from chatcli.stores.folder import remove_quietly

        remove_quietly(file)
        note = "; it is no longer in the local spool"
    renderer().info(f"Imported {file} ({kind}) as session {sid}{note}.")
    print(sid)


def _in_folder(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def fork(
    session_id: SessionRef,
    at: Annotated[
        int | None, typer.Option("--at", metavar="TURN", help="Keep the first TURN turns (default: all).")
    ] = None,
    store_name: StoreOpt = None,
) -> None:
    """Start a new session from a copy of another's first turns (branch a conversation)."""
    from chatcli.library import fork as do_fork

    try:
        with _opened(store_name) as st:
            src = resolve(st, session_id)
            new = do_fork(st, st.load(src), at)
    except ChatcliError as e:
        exit_with(e)
    renderer().info(f"Forked {src} as {new}: chatcli resume {new}")
    print(new)


def stats(store_name: StoreOpt = None, as_json: AsJSON = False) -> None:
    """Figures over all sessions: sessions, active in the last 7 days, messages by role, characters,
    tokens, sessions per model, average messages per session, disk used."""
    from chatcli.library import parse_date

    try:
        with _opened(store_name) as st:
            totals = st.totals(active_since=parse_date("7d"))
            totals["store"] = st.display
    except ChatcliError as e:
        exit_with(e)
    order = (
        "sessions",
        "active_7d",
        "messages",
        "user_messages",
        "assistant_messages",
        "mean_messages",
        "characters",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "models",
        "damaged",
        "bytes",
        "store",
    )
    totals["active_7d"] = totals.pop("active")
    totals["mean_messages"] = round(totals["messages"] / totals["sessions"], 1) if totals["sessions"] else 0
    totals = {k: totals[k] for k in order}
    if as_json:
        totals["models"] = [{"model": m, "sessions": n} for m, n in totals["models"]]
        print_json(totals)
        return
    renderer().library_stats(totals)


def register(app: typer.Typer) -> None:
    app.command("list")(list_sessions)
    app.command()(show)
    app.command()(search)
    app.command()(rename)
    app.command()(delete)
    app.command()(restore)
    app.command()(prune)
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.command()(fork)
    app.command()(stats)
