"""The REPL's commands, each declared once in COMMANDS (name, aliases, the arguments it accepts, help, and
the method that runs it), the parser that tells a command from a message, and the methods themselves
(a mixin of Repl)."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chatcli import attachments
from chatcli.context import estimate, turns_between
from chatcli.errors import CommandError, ConfigError, NothingToDo
from chatcli.render_history import show_history
from chatcli.text import count
from chatcli.transcript import EXPORT_FORMATS

if TYPE_CHECKING:
    from chatcli.mcp_client import MCPServers
    from chatcli.model import Message
    from chatcli.render import Renderer, ReplyView
    from chatcli.session import ConversationSession, Sinks


def _none(args: list[str]) -> bool:
    return not args


def _one_of(*choices: str) -> Callable[[list[str]], bool]:
    return lambda args: not args or (len(args) == 1 and args[0].lower() in choices)


@dataclass(frozen=True)
class Command:
    """One REPL command, declared once: its ``name`` and ``aliases``; ``usage`` and ``summary`` for
    ``help``; ``accepts(args)``, whether the words after it make a line this command (else the line is a
    message); ``free_text`` when its argument is any text (then it needs the leading slash); and
    ``handler``, the Repl method that runs it with the arguments."""

    name: str
    usage: str
    summary: str
    handler: str
    accepts: Callable[[list[str]], bool] = _none
    aliases: tuple[str, ...] = ()
    free_text: bool = False


COMMANDS = (
    Command(
        "history",
        "history [N] [--reasoning]",
        "show the last N turns (all when N is left out); --reasoning unfolds the model's reasoning",
        "do_history",
        lambda args: (
            len(args) <= 2
            and len([a for a in args if a.isdigit()]) <= 1
            and all(a.isdigit() or a == "--reasoning" for a in args)
        ),
    ),
    Command(
        "stats",
        "stats",
        "turns, messages, tokens, time to first token, tokens/s, where it is stored",
        "do_stats",
    ),
    Command(
        "clear",
        "clear [undo]",
        "start the next turn from an empty context (the system prompt stays); "
        "`clear undo` brings the cleared messages back",
        "do_clear",
        _one_of("undo"),
    ),
    Command(
        "compact",
        "compact [undo]",
        "summarise every turn but the newest few (compact_keep) and send the summary in their place, "
        "to make room (`compact undo` takes it back; the turns stay in the session either way)",
        "do_compact",
        _one_of("undo"),
    ),
    Command(
        "retry",
        "retry",
        "ask again for the last reply (the replaced reply stays in the session file)",
        "do_retry",
    ),
    Command("tools", "tools", "list the tool servers, their state and their tools", "do_tools"),
    Command(
        "reasoning",
        "reasoning [on|off]",
        "show whether a reply's reasoning streams on screen (dimmed, then folded to one line), or choose",
        "do_reasoning",
        _one_of("on", "off"),
    ),
    Command("undo", "undo", "take back the last turn (kept in the file; `redo` brings it back)", "do_undo"),
    Command("redo", "redo", "bring back the turn `undo` took back", "do_redo"),
    Command(
        "model",
        "/model [NAME]",
        "show the model, or use NAME from the next turn on (recorded here)",
        "do_model",
        lambda args: len(args) <= 1,
    ),
    Command(
        "system",
        "/system [TEXT]",
        "show the system prompt, or use TEXT from the next turn on (`/system -` removes it; recorded here)",
        "do_system",
        free_text=True,
    ),
    Command("title", "/title [TEXT]", "show the title, or rename the session", "do_title", free_text=True),
    Command(
        "export",
        "export [md|json|jsonl|snapshot]",
        "write the session to a file in the current folder",
        "do_export",
        _one_of(*EXPORT_FORMATS),
    ),
    Command("fork", "fork", "copy this session into a new one (branch the conversation)", "do_fork"),
    Command(
        "file",
        "/file PATH...",
        "put text files into your next message, each fenced with its path "
        "(`/file` lists them, `/file -` drops them)",
        "do_file",
        free_text=True,
    ),
    Command("edit", "edit", "write your next message in $VISUAL or $EDITOR (also Ctrl-X Ctrl-E)", "do_edit"),
    Command("copy", "copy", "copy the last reply to the clipboard (OSC 52: works over SSH)", "do_copy"),
    Command("help", "help", "this list", "show_help", aliases=("?",)),
    Command(
        "quit", "quit", "leave (also Ctrl-D); the session is already saved", "do_quit", aliases=("exit",)
    ),
)
BY_NAME = {n: c for c in COMMANDS for n in (c.name, *c.aliases)}


def parse_command(line: str) -> tuple[Command, list[str]] | None:
    """The command a line asks for, with its arguments, or None when the line is a message.

    ``/word ...`` is always a command (an unknown one, or one misused, raises CommandError); a bare word
    is a command only when the line is exactly that command with arguments it accepts."""
    text = line.strip()
    slash = text.startswith("/")
    if slash:
        text = text[1:]
    words = text.split()
    if not words:
        return None
    cmd = BY_NAME.get(words[0].lower())
    args = words[1:]
    if cmd is None:
        if slash:
            raise CommandError(f"unknown command /{words[0]}; type help for the list")
        return None
    if cmd.free_text and args:
        # free text needs the slash: "title of my thesis?" or "system design question" stay messages
        if not slash:
            return None
        return cmd, [text.split(None, 1)[1].strip()]
    if not cmd.accepts(args):
        if slash:
            raise CommandError(f"usage: /{cmd.usage.lstrip('/')}")
        return None
    return cmd, args


class ReplCommands:
    """The commands' methods (see COMMANDS): each takes the command's arguments; False from one means
    quit. Mixed into Repl, which provides the session, the renderer and the turn."""

    session: ConversationSession
    out: Renderer
    pending: list[attachments.Attachment]  # files for the next message
    show_reasoning: bool  # a reply's reasoning streams on screen

    servers: MCPServers | None  # the session's tool servers

    def _stream(self, turn: Callable[[ReplyView], Message]) -> None:
        raise NotImplementedError

    def _sinks(self, view: ReplyView) -> Sinks:
        raise NotImplementedError

    def chat(self, text: str) -> None:
        raise NotImplementedError

    def do_quit(self, args: list[str]) -> bool:
        return False

    def do_history(self, args: list[str]) -> None:
        last = next((int(a) for a in args if a.isdigit()), None)
        show_history(self.out, self.session, last, reasoning="--reasoning" in args)

    def do_reasoning(self, args: list[str]) -> None:
        if args:
            self.show_reasoning = args[0].lower() == "on"
        if self.show_reasoning:
            self.out.info("Reasoning streams on screen, dimmed, then folds to one line (`/reasoning off`).")
        else:
            self.out.info("Reasoning shows as one folded line (`/reasoning on` streams it).")

    def do_stats(self, args: list[str]) -> None:
        self.out.stats(self.session.stats())

    def do_retry(self, args: list[str]) -> None:
        self._stream(lambda view: self.session.retry(sinks=self._sinks(view)))

    def do_tools(self, args: list[str]) -> None:
        servers = self.servers
        self.out.tool_states(list(servers.states.values()) if servers is not None else [])

    def do_undo(self, args: list[str]) -> None:
        m = self.session.undo()
        self.out.info(f"Took back the last turn ({_preview(m.content)}); `redo` brings it back.")

    def do_redo(self, args: list[str]) -> None:
        m = self.session.redo()
        self.out.info(f"Brought back the turn {_preview(m.content)}.")

    def do_model(self, args: list[str]) -> None:
        s = self.session
        if not args:
            self.out.info(f"model: {s.header.backend}/{s.header.model}")
            return
        old = s.header.model
        s.set_model(args[0])
        self.out.info(f"Model {old} → {s.header.model} from the next turn on.")

    def do_system(self, args: list[str]) -> None:
        s = self.session
        if not args:
            self.out.info(f"system prompt: {s.header.system}" if s.header.system else "No system prompt.")
            return
        s.set_system("" if args[0] == "-" else args[0])
        self.out.info(
            "System prompt removed."
            if not s.header.system
            else "System prompt set; it goes with the next turn."
        )

    def do_title(self, args: list[str]) -> None:
        s = self.session
        if not args:
            self.out.info(f"title: {s.header.title}" if s.header.title else "No title yet.")
            return
        from chatcli.library import check_title

        s.set_title(check_title(args[0]))
        self.out.info(f"Session titled {s.header.title!r}.")

    def do_export(self, args: list[str]) -> None:
        from chatcli.transcript import export_to_folder

        path = export_to_folder(self.session.conv, args[0].lower() if args else "md", Path.cwd())
        self.out.info(f"Wrote {path}.")

    def do_fork(self, args: list[str]) -> None:
        from chatcli.library import fork

        s = self.session
        new = fork(s.store, s.conv)
        self.out.info(f"Forked as {new}; this REPL stays on {s.id}. Open the fork with: chatcli resume {new}")

    def do_clear(self, args: list[str]) -> None:
        if args:
            n = self.session.unclear()
            self.out.info(f"{count(n, 'message')} back in the context." if n else "Nothing to bring back.")
            return
        n = self.session.clear()
        self.out.info(
            f"Context cleared: the next turn starts afresh ({count(n, 'message')} stay in the "
            f"session file; `clear undo` brings them back)."
        )

    def do_compact(self, args: list[str]) -> None:
        if args:
            m = self.session.uncompact()
            first, end = m.summary_of or [0, 0]
            self.out.info(
                f"Summary taken back (it stays in the session file, marked undone): the turns it stood for "
                f"({count(turns_between(self.session.messages, first, end), 'turn')}) are sent as they are "
                "again, as far as the window holds them."
            )
            return
        try:
            m = self.session.compact(self.out.info)
        except KeyboardInterrupt:
            self.out.info("Compaction stopped: nothing changed.")
            return
        first, end = m.summary_of or [0, 0]
        tokens = estimate(m.content)
        messages = self.session.messages
        kept = turns_between(messages, end, len(messages))
        self.out.info(
            f"Summary of {count(turns_between(messages, first, end), 'turn')} saved (about {tokens:,} tokens): "
            f"it is sent in their place from now on, with the newest {count(kept, 'turn')} whole (compact_keep "
            f"= {self.session.planner.compact_keep}); the turns stay in the session (`compact undo` takes the "
            "summary back)."
        )

    def do_file(self, args: list[str]) -> None:
        if not args:
            listed = ", ".join(f"{a.path} ({count(a.lines, 'line')})" for a in self.pending)
            self.out.info(f"Attached to your next message: {listed}." if listed else "No files attached.")
            return
        if args == ["-"]:
            self.out.info(
                f"Dropped {count(len(self.pending), 'file')}." if self.pending else "No files attached."
            )
            self.pending = []
            return
        try:
            paths = shlex.split(args[0])
        except ValueError as e:
            raise CommandError(f"/file: {e} (quote a path that holds spaces)") from None
        files = [attachments.read(p) for p in paths]  # all or nothing: one bad file attaches none
        self.pending += files
        listed = ", ".join(f"{a.path} ({count(a.lines, 'line')})" for a in files)
        self.out.info(f"Attached {listed}: they go with your next message (`/file -` drops them).")

    def do_edit(self, args: list[str]) -> None:
        text = compose_in_editor()
        if not text.strip():
            self.out.info("Nothing written: nothing sent.")
            return
        self.chat(text.rstrip("\n"))

    def do_copy(self, args: list[str]) -> None:
        last = next(
            (
                m
                for m in reversed(self.session.messages)
                if m.role == "assistant" and m.dropped is None and m.content
            ),
            None,
        )
        if last is None:
            raise NothingToDo("there is no reply to copy yet")
        if not sys.stdout.isatty():
            raise CommandError("/copy needs a terminal: it asks the terminal to set the clipboard (OSC 52)")
        payload = base64.b64encode(last.content.encode()).decode()
        sys.stdout.write(f"\x1b]52;c;{payload}\x07")
        sys.stdout.flush()
        self.out.info(
            f"Copied the last reply ({count(len(last.content), 'character')}) to the clipboard "
            f"(through the terminal, OSC 52: if nothing arrives, the terminal does not allow it)."
        )

    def show_help(self, args: list[str] | None = None) -> None:
        self.out.command_help(
            "Commands (each also works with a leading /; /model, /system and /title need the slash "
            "when they carry text, so a message starting with those words stays a message):",
            [(", ".join((c.usage, *c.aliases)), c.summary) for c in COMMANDS],
            [
                "Enter sends; Alt+Enter (or Esc then Enter) adds a new line; pasted text keeps its newlines;",
                "Ctrl-X Ctrl-E writes the line in your editor.",
                "Ctrl-C stops a reply (what arrived is saved) or clears the line; Ctrl-D quits.",
                'To send a command word as a message, start it with a backslash: \\quit sends "quit".',
            ],
        )


def _preview(text: str, limit: int = 40) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= limit else line[: limit - 1] + "…")


def is_command_line(text: str) -> bool:
    try:
        return parse_command(text) is not None
    except CommandError:
        return False


def compose_in_editor(initial: str = "") -> str:
    """Open ``$VISUAL`` (or ``$EDITOR``, or ``vi``) on a private temporary file holding ``initial``; return
    what it holds once the editor exits. Raises ConfigError when the editor cannot run or fails."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    fd, name = tempfile.mkstemp(prefix="chatcli-message-", suffix=".md")  # (0600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(initial)
        try:
            done = subprocess.run([*shlex.split(editor), name], check=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot run the editor {editor!r} ({e}); set $VISUAL or $EDITOR") from None
        if done.returncode != 0:
            raise ConfigError(f"the editor {editor!r} exited with status {done.returncode}; nothing was sent")
        return Path(name).read_text(encoding="utf-8", errors="replace")
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass
