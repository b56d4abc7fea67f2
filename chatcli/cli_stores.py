"""The store commands: ``sync`` (write turns kept on this machine while a database did not answer) and
``migrate`` (copy every session from one store to another). Registered on the Typer app by ``cli.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from chatcli.cli_common import (
    AsJSON,
    StoreOpt,
    exit_with,
    open_database,
    open_store,
    print_json,
    renderer,
    settings,
    store_url,
)
from chatcli.errors import ChatcliError, ConfigError, ExitStatus
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.library import MigrationReport
    from chatcli.render import Renderer


def sync(store_name: StoreOpt = None, as_json: AsJSON = False) -> None:
    """Write to the database the turns this machine kept locally while it did not answer (they are also
    written by the next save that reaches it and by `chatcli resume`). Exit 1 when some could not be."""
    from chatcli.stores.spool import spool_folder, spooled
    from chatcli.stores.spool import sync as do_sync

    out = renderer()
    try:
        s = settings({"store": store_name})
        url = store_url(s)
        if not url.is_database:
            open_store(s).close()  # (a folder chatcli cannot use is said so)
            out.info(
                f"{url.display} is a folder: every turn is written to it directly, there is nothing to sync."
            )
            return
        st = open_database(s, sync_spool=False)  # (it moves the spool an older chatcli kept to its folder)
        try:
            folder = spool_folder(s.state_dir, url)
            outcomes = do_sync(st, folder) if spooled(folder) else []
            st.newest_id()  # even with nothing to write: say so only once the database answered
        finally:
            st.close()
    except ChatcliError as e:
        exit_with(e)
    if as_json:
        print_json(
            [
                {"session_id": o.session_id, "status": o.status, "message": o.message, "path": str(o.path)}
                for o in outcomes
            ]
        )
    else:
        for o in outcomes:
            (out.info if o.status == "synced" else out.notice)(o.message)
        if not outcomes:
            out.info(f"Nothing to sync: every turn is in {st.display}.")
    if any(o.status != "synced" for o in outcomes):
        raise typer.Exit(ExitStatus.ERROR)


def migrate(
    to: Annotated[
        str, typer.Option("--to", metavar="STORE", help="The store to copy into (a folder or a URL).")
    ],
    source: Annotated[
        str | None,
        typer.Option(
            "--from", metavar="STORE", help="The store to copy from (default: the configured store)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be copied.")] = False,
    as_json: AsJSON = False,
) -> None:
    """Copy every session, the trash included, from one store to another, losslessly. A session already in
    the target is never overwritten: equal ones are skipped, different ones reported (exit 1)."""
    from chatcli.library import MigrationReport
    from chatcli.library import migrate as do_migrate

    out = renderer()
    try:
        src_settings, dst_settings = settings({"store": source}), settings({"store": to})
        src = open_store(src_settings)
        try:
            dst = open_store(dst_settings)
            try:
                if store_url(src_settings).identity == store_url(dst_settings).identity:
                    raise ConfigError(f"--from and --to are the same store ({src.display})")
                report = MigrationReport()
                try:
                    with out.progress("migrating sessions") as step:
                        do_migrate(src, dst, dry_run=dry_run, on_session=step, report=report)
                except KeyboardInterrupt:
                    _stopped(out, report, dst.display, dry_run)
                    raise typer.Exit(ExitStatus.INTERRUPTED) from None
            finally:
                dst.close()
        finally:
            src.close()
    except ChatcliError as e:
        exit_with(e)
    if as_json:
        print_json(
            {
                "from": src.display,
                "to": dst.display,
                "dry_run": dry_run,
                "copied": report.copied,
                "same": report.same,
                "differs": report.differs,
                "damaged": [{"location": w, "reason": r} for w, r in report.damaged],
                "too_large": [{"session_id": sid, "reason": r} for sid, r in report.too_large],
            }
        )
    else:
        verb = "would copy" if dry_run else "copied"
        out.info(
            f"{src.display} → {dst.display}: {verb} {count(len(report.copied), 'session')}; "
            f"{len(report.same):,} already there"
        )
        for sid in report.differs:
            out.notice(f"{sid} is in both stores with different content: left as it is in {dst.display}")
        for where, why in report.damaged:
            out.notice(f"not copied: {where}: {why}")
        for sid, why in report.too_large:
            out.notice(f"{'would not copy' if dry_run else 'not copied'}: session {sid}: {why}")
    if report.differs or report.damaged or report.too_large:
        raise typer.Exit(ExitStatus.ERROR)


def _stopped(out: Renderer, report: MigrationReport, target: str, dry_run: bool) -> None:
    """Say what an interrupted migrate had done (its batches are whole: the rest is copied when it runs
    again)."""
    if dry_run:
        out.notice("stopped: nothing was copied (--dry-run)")
        return
    out.notice(
        f"stopped: {count(len(report.copied), 'session')} copied to {target} so far, in whole batches; "
        f"run the same command again to copy the rest"
    )


def register(app: typer.Typer) -> None:
    app.command()(sync)
    app.command()(migrate)
