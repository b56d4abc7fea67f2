"""The session library's commands: list, show, search, rename, delete, restore, prune, export, import,
fork, stats. Registered on the Typer app by ``cli.py``; like it, they only parse, call the core and map
errors to one-line messages and exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from chatcli.errors import ChatcliError, ConfigError, SessionNotFound
from chatcli.render import count

SessionsDir = Annotated[Optional[Path], typer.Option(
    "--sessions-dir", metavar="DIR", help="Folder of session snapshots (env: CHATCLI_SESSIONS_DIR; default: "
    "./sessions).")]
AsJSON = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SessionRef = Annotated[str, typer.Argument(
    metavar="ID", help="A full id, a unique prefix (or of its last part), 'last' (the most recent) or an exact title.")]


def _store(sessions_dir: Path | None) -> Any:
    from chatcli.cli import _settings
    from chatcli.store import SessionStore

    return SessionStore(_settings({"sessions_dir": sessions_dir}).sessions_dir)


def _index(store: Any) -> Any:
    from chatcli.index import SessionIndex

    return SessionIndex(store, _progress if sys.stderr.isatty() else None)


def _progress(done: int, total: int) -> None:
    """A one-line counter on the terminal while the index reads many files (the first run on a big folder)."""
    end = "\n" if done == total else ""
    sys.stderr.write(f"\rchatcli: indexing session files: {done:,} of {total:,} (later runs read only changes)"
                     + end)
    sys.stderr.flush()


def resolve(store: Any, ref: str) -> str:
    """``store.resolve(ref)``, looking ``last`` and titles up in the index rather than reading every snapshot:
    only the newest row, or only the rows with that exact title, are read."""
    last = ref.strip() == "last"

    def summaries() -> Any:
        from chatcli.index import INDEX_NAME

        if not last and not (store.root / INDEX_NAME).exists():
            return store.list()  # a title lookup without an index: read the files, create nothing
        ix = _index(store)
        try:
            rows, damaged, _ = ix.page(limit=1) if last else ix.page(title=ref.strip())
            return rows, damaged
        finally:
            ix.close()

    return str(store.resolve(ref, summaries))


def _fail(e: ChatcliError) -> None:
    from chatcli.cli import _exit_with

    _exit_with(e)


def _print_json(obj: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _renderer() -> Any:
    from chatcli.render import Renderer

    return Renderer()


def list_sessions(
    sessions_dir: SessionsDir = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", metavar="N",
                                                 help="Show at most N sessions (default 50; see --all).")] = None,
    since: Annotated[Optional[str], typer.Option(
        "--since", metavar="DATE", help="Only sessions updated since DATE: YYYY-MM-DD, YYYY-MM-DDTHH:MM, or an "
        "age like 7d, 12h.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME",
                                                 help="Only sessions whose model name contains NAME.")] = None,
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Show every session (no limit).")] = False,
    as_json: AsJSON = False,
) -> None:
    """List sessions, most recently updated first: id, title, model, turns, tokens, last update.
    Damaged files are reported with their path (on stderr)."""
    from chatcli.library import parse_date

    try:
        store = _store(sessions_dir)
        cutoff = parse_date(since) if since else None
        ix = _index(store)
        try:  # only the rows shown are read from the index
            rows, damaged, total = ix.page(None if show_all else max(0, limit if limit is not None else 50),
                                           since=cutoff, model=model)
        finally:
            ix.close()
    except ChatcliError as e:
        _fail(e)
    if as_json:
        _print_json([{"id": r.id, "title": r.title, "backend": r.backend, "model": r.model, "turns": r.turns,
                      "messages": r.messages, "tokens": r.tokens, "created_at": r.created_at,
                      "updated_at": r.updated_at, "path": str(r.path)} for r in rows])
        for d in damaged:
            print(f"chatcli: damaged: {d.path}: {d.reason}", file=sys.stderr)
        return
    out = _renderer()
    out.session_table(rows, damaged)
    if total > len(rows):
        out.info(f"{total - len(rows)} more; use --all or --limit N to see them")


def show(
    session_id: SessionRef,
    raw: Annotated[bool, typer.Option("--raw", help="The transcript as plain Markdown text, not rendered.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The snapshot itself (JSON).")] = False,
    sessions_dir: SessionsDir = None,
) -> None:
    """Show a session's transcript, each message's status (interrupted, timeout, error) visible."""
    from chatcli.library import export, transcript_markdown

    try:
        store = _store(sessions_dir)
        snap = store.load(resolve(store, session_id))
    except ChatcliError as e:
        _fail(e)
    from chatcli.render import sanitize

    if as_json:
        sys.stdout.buffer.write(export(snap, "json"))  # JSON escapes control characters itself
    elif raw or not sys.stdout.isatty():
        sys.stdout.write(sanitize(transcript_markdown(snap)) + "\n")  # model text never reaches a terminal raw
    else:
        _renderer().markdown(transcript_markdown(snap))


def search(
    words: Annotated[list[str], typer.Argument(metavar="TEXT", help="Words to find: a message matches when "
                                               "it holds every word (as a word prefix; case and accents ignored).")],
    role: Annotated[Optional[str], typer.Option("--role", metavar="ROLE",
                                                help="Only user, assistant or title.")] = None,
    session: Annotated[Optional[str], typer.Option("--session", metavar="ID",
                                                   help="Only this session (id, prefix, last or title).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", metavar="N", help="At most N hits (default 20).")] = 20,
    sessions_dir: SessionsDir = None,
    as_json: AsJSON = False,
) -> None:
    """Search every session's messages and titles; each hit shows the session id, title, turn, role and a
    snippet with the match highlighted."""
    text = " ".join(words)
    try:
        if role is not None and role not in ("user", "assistant", "title"):
            raise ConfigError(f"--role must be user, assistant or title, not {role!r}")
        store = _store(sessions_dir)
        sid = resolve(store, session) if session else None
        ix = _index(store)
        try:
            hits = ix.search(text, role=role, session_id=sid, limit=limit)
        finally:
            ix.close()
    except ChatcliError as e:
        _fail(e)
    if as_json:
        from chatcli.index import HIGHLIGHT

        _print_json([{"session_id": h.session_id, "title": h.title, "turn": h.turn, "role": h.role,
                      "position": h.position,
                      "snippet": h.snippet.replace(HIGHLIGHT[0], "").replace(HIGHLIGHT[1], "")} for h in hits])
        return
    _renderer().search_hits(hits, text)


def rename(session_id: SessionRef, title: Annotated[str, typer.Argument(metavar="TITLE")],
           sessions_dir: SessionsDir = None) -> None:
    """Give a session a new title."""
    from chatcli.library import rename as do_rename

    try:
        store = _store(sessions_dir)
        sid = resolve(store, session_id)
        do_rename(store, sid, title)
    except ChatcliError as e:
        _fail(e)
    _renderer().info(f"Session {sid} is now titled {title.strip()!r}.")


def delete(
    session_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Sessions to delete.")],
    purge: Annotated[bool, typer.Option("--purge", help="Remove for good instead of moving to the trash.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")] = False,
    sessions_dir: SessionsDir = None,
) -> None:
    """Move sessions to the trash (`chatcli restore ID` undoes it), or remove them for good with --purge."""
    from chatcli import library

    out = _renderer()
    try:
        store = _store(sessions_dir)
        ids = []
        for ref in session_ids:
            try:
                ids.append(resolve(store, ref))
            except SessionNotFound as missing:  # an ambiguous id is not looked for in the trash
                if not purge:
                    raise
                try:
                    ids.append(library.resolve_trashed(store, ref))
                except SessionNotFound:
                    raise SessionNotFound(f"{missing}; nor is it in the trash") from None
        if purge and not yes:
            if not sys.stdin.isatty():
                raise ConfigError("--purge removes sessions for good: confirm with --yes when not at a terminal")
            answer = input(f"Remove {count(len(ids), 'session')} for good ({', '.join(ids)})? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                out.info("Nothing removed.")
                return
        for sid in ids:
            if purge:
                library.purge(store, sid)
                out.info(f"Removed {sid} for good.")
            else:
                library.delete(store, sid)
                out.info(f"Moved {sid} to the trash (chatcli restore {sid} brings it back).")
    except ChatcliError as e:
        _fail(e)


def restore(session_id: Annotated[str, typer.Argument(metavar="ID", help="A trashed session's id or prefix.")],
            sessions_dir: SessionsDir = None) -> None:
    """Bring a session back from the trash."""
    from chatcli import library

    try:
        store = _store(sessions_dir)
        sid = library.resolve_trashed(store, session_id)
        library.restore(store, sid)
    except ChatcliError as e:
        _fail(e)
    _renderer().info(f"Restored {sid}.")


def prune(
    older_than: Annotated[str, typer.Option("--older-than", metavar="AGE",
                                            help="Sessions not updated for AGE, e.g. 30d, 12h, 2w.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be moved.")] = False,
    sessions_dir: SessionsDir = None,
) -> None:
    """Move sessions not updated for a while to the trash."""
    from chatcli import library

    out = _renderer()
    try:
        store = _store(sessions_dir)
        ids = library.older_than(store, library.parse_age(older_than))
        if dry_run:
            for sid in ids:
                print(sid)
            out.info(f"{count(len(ids), 'session')} would be moved to the trash.")
            return
        moved = 0
        for sid in ids:
            try:
                library.delete(store, sid)
                moved += 1
            except ChatcliError as e:
                out.error(str(e))
    except ChatcliError as e:
        _fail(e)
    out.info(f"Moved {count(moved, 'session')} to the trash.")


def export_cmd(
    session_id: SessionRef,
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="md|json|jsonl", help="Output format.")] = "md",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE",
                                                   help="Write to FILE (refuses to overwrite) instead of stdout.")] = None,
    sessions_dir: SessionsDir = None,
) -> None:
    """Export a session as Markdown, its JSON snapshot, or JSON Lines (one message per line)."""
    from chatcli.library import export

    try:
        store = _store(sessions_dir)
        data = export(store.load(resolve(store, session_id)), fmt)
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
            raise ChatcliError(f"{output} already exists; choose another file") from None
        except OSError as e:
            raise ChatcliError(f"cannot write {output}: {e.strerror}") from None
    except ChatcliError as e:
        _fail(e)
    _renderer().info(f"Wrote {output} ({len(data):,} bytes).")


def import_cmd(file: Annotated[Path, typer.Argument(metavar="FILE", help="A chatcli session file, an "
                                                    "OpenAI-style {\"messages\": [...]} or a list of messages.")],
               sessions_dir: SessionsDir = None) -> None:
    """Import a conversation as a new session (never overwrites one)."""
    from chatcli.library import import_file

    try:
        sid, kind = import_file(_store(sessions_dir), file)
    except ChatcliError as e:
        _fail(e)
    _renderer().info(f"Imported {file} ({kind}) as session {sid}.")
    print(sid)


def fork(session_id: SessionRef,
         at: Annotated[Optional[int], typer.Option("--at", metavar="TURN",
                                                   help="Keep the first TURN turns (default: all).")] = None,
         sessions_dir: SessionsDir = None) -> None:
    """Start a new session from a copy of another's first turns (branch a conversation)."""
    from chatcli.library import fork as do_fork

    try:
        store = _store(sessions_dir)
        src = resolve(store, session_id)
        new = do_fork(store, store.load(src), at)
    except ChatcliError as e:
        _fail(e)
    _renderer().info(f"Forked {src} as {new}: chatcli resume {new}")
    print(new)


def stats(sessions_dir: SessionsDir = None, as_json: AsJSON = False) -> None:
    """Figures over all sessions: sessions, active in the last 7 days, messages by role, characters,
    tokens, sessions per model, average messages per session, disk used."""
    from chatcli.library import parse_date

    try:
        store = _store(sessions_dir)
        ix = _index(store)
        try:
            totals = ix.totals()
            totals["active_7d"] = ix.updated_since(parse_date("7d"))
        finally:
            ix.close()
    except ChatcliError as e:
        _fail(e)
    totals["mean_messages"] = round(totals["messages"] / totals["sessions"], 1) if totals["sessions"] else 0
    totals["sessions_dir"] = str(store.root)
    if as_json:
        totals["models"] = [{"model": m, "sessions": n} for m, n in totals["models"]]
        _print_json(totals)
        return
    _renderer().library_stats(totals)


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
