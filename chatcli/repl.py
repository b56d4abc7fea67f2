"""The interactive loop: prompt-toolkit input, in-REPL commands, replies shown through render.py.

The REPL talks to a ConversationSession only. Enter sends; Alt+Enter (or Esc then Enter) starts a new
line; a paste keeps its newlines. Ctrl-C stops a reply (or clears the line); Ctrl-D quits.

A line that is exactly a command (``history``, ``history 5``, ``stats``, ``clear``, ``quit``...) runs it;
every command also works with a leading ``/``. To send such a word as a message, start it with a
backslash: ``\\quit`` sends ``quit``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chatcli.errors import (
    BackendError,
    ChatcliError,
    CommandError,
    NothingToDo,
    SaveError,
    SessionTimeoutError,
    Terminated,
)
from chatcli.snapshot import valid_unicode
from chatcli.text import count
from chatcli.transcript import EXPORT_FORMATS

if TYPE_CHECKING:
    from chatcli.render import Renderer, ReplyView
    from chatcli.session import ConversationSession, Message

HELP_HINT = "type help for commands, Ctrl-D to quit"
RESUME_TURNS = 20  # turns shown on resume (`history` shows all), so a long session opens at once
_KEPT = "your message is kept in memory and will be saved at the next attempt"


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
        "history [N]",
        "show the last N turns (all when N is left out)",
        "do_history",
        lambda args: not args or (len(args) == 1 and args[0].isdigit()),
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
        "retry",
        "retry",
        "ask again for the last reply (the replaced reply stays in the session file)",
        "do_retry",
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
        "export [md|json|jsonl]",
        "write the session to a file in the current folder",
        "do_export",
        _one_of(*EXPORT_FORMATS),
    ),
    Command("fork", "fork", "copy this session into a new one (branch the conversation)", "do_fork"),
    Command("help", "help", "this list", "show_help", aliases=("?",)),
    Command(
        "quit", "quit", "leave (also Ctrl-D); the session is already saved", "do_quit", aliases=("exit",)
    ),
)
_BY_NAME = {n: c for c in COMMANDS for n in (c.name, *c.aliases)}


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
    cmd = _BY_NAME.get(words[0].lower())
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


class Repl:
    """Runs the loop for one session. ``history_path``: where typed input is remembered (None: nowhere)."""

    def __init__(
        self,
        session: ConversationSession,
        renderer: Renderer,
        history_path: Path | None,
        resumed: bool = False,
    ) -> None:
        self.session = session
        self.out = renderer
        self.history_path = history_path
        self.resumed = resumed
        self._warned_unsaved = False  # a quit was refused once because the session could not be saved

    # -- input -----------------------------------------------------------------------------------------
    def _make_prompt(self) -> Callable[[], str]:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            return self._plain_input
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        kb = KeyBindings()

        @kb.add("escape", "enter")
        def _newline(event):  # type: ignore[no-untyped-def]
            event.current_buffer.insert_text("\n")

        history: FileHistory | InMemoryHistory = InMemoryHistory()
        if self.history_path is not None:
            try:
                self.history_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.history_path.touch(mode=0o600, exist_ok=True)
                history = FileHistory(str(self.history_path))
            except OSError as e:
                self.out.notice(f"input history is off: cannot use {self.history_path} ({e.strerror})")
        words = sorted({f"/{n}" for n in _BY_NAME} | set(_BY_NAME))
        ps: PromptSession[str] = PromptSession(
            history=history,
            key_bindings=kb,
            multiline=False,
            enable_history_search=False,
            completer=WordCompleter(words, sentence=True),
            complete_while_typing=False,
            prompt_continuation=lambda width, line_no, wrap: "… ".rjust(width),
        )
        return lambda: ps.prompt([("bold", "› ")])

    @staticmethod
    def _plain_input() -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Read and answer until quit or Ctrl-D. Errors of a turn are reported and the loop goes on."""
        self.out.banner(self.session, self.resumed, HELP_HINT)
        if self.resumed and self.session.messages:
            self.out.history(self.session, last=RESUME_TURNS)
        if self.session.backend is not None:
            self.session.backend.prepare()
        prompt = self._make_prompt()
        while True:
            try:
                line = prompt()
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except OSError as e:  # SIGHUP ends the prompt, then its clean-up fails on the closed terminal
                stop = _terminated_in(e)
                if stop is None:
                    raise
                raise stop from None
            except EOFError:
                if self._may_leave():
                    break
                continue
            try:
                if not self.handle(valid_unicode(line)):
                    if self._may_leave():
                        break
                    continue
            except KeyboardInterrupt:
                self.out.notice("^C")
            self._warned_unsaved = False

    def _may_leave(self) -> bool:
        """Whether quitting loses nothing. A save that failed earlier is tried again here; when it fails,
        the user is told once and the REPL stays, so they can make room and quit again (a second quit
        leaves anyway, and the CLI then says the session is not saved)."""
        if not self.session.unsaved or self._warned_unsaved:
            return True
        try:
            self.session.save()
            return True
        except SaveError as e:
            self._warned_unsaved = True
            self.out.error(
                f"{e}; the last turn is only in memory: fix this (e.g. make room) and quit again, "
                f"chatcli tries to save once more before it leaves"
            )
            return False

    def handle(self, line: str) -> bool:
        """Answer one line of input; False means quit."""
        if not line.strip():
            return True
        try:
            parsed = parse_command(line)
        except CommandError as e:
            self.out.error(str(e))
            return True
        if parsed is None:
            stripped = line.strip()
            if stripped.startswith("\\") and _is_command_line(stripped[1:]):
                line = stripped[1:]
            self.chat(line)
            return True
        cmd, args = parsed
        try:
            return getattr(self, cmd.handler)(args) is not False
        except NothingToDo as e:
            self.out.info(str(e)[:1].upper() + str(e)[1:] + ".")
        except ChatcliError as e:
            self.out.error(str(e))
        return True

    # -- the commands (see COMMANDS): each takes its arguments; False from one means quit ----------------
    def do_quit(self, args: list[str]) -> bool:
        return False

    def do_history(self, args: list[str]) -> None:
        self.out.history(self.session, int(args[0]) if args else None)

    def do_stats(self, args: list[str]) -> None:
        self.out.stats(self.session.stats())

    def do_retry(self, args: list[str]) -> None:
        try:
            self._stream(lambda view: self.session.retry(on_delta=view.feed, on_notice=view.notice))
        except NothingToDo as e:
            self.out.error(str(e))

    def do_undo(self, args: list[str]) -> None:
        m = self.session.undo()
        self.out.info(f"Took back the last turn ({_preview(m.content)}); `redo` brings it back.")

    def do_redo(self, args: list[str]) -> None:
        m = self.session.redo()
        self.out.info(f"Brought back the turn {_preview(m.content)}.")

    def do_model(self, args: list[str]) -> None:
        s = self.session
        if not args:
            self.out.info(f"model: {s.backend_name}/{s.model}")
            return
        old = s.model
        s.set_model(args[0])
        self.out.info(f"Model {old} → {s.model} from the next turn on.")

    def do_system(self, args: list[str]) -> None:
        s = self.session
        if not args:
            self.out.info(f"system prompt: {s.system}" if s.system else "No system prompt.")
            return
        s.set_system("" if args[0] == "-" else args[0])
        self.out.info(
            "System prompt removed." if not s.system else "System prompt set; it goes with the next turn."
        )

    def do_title(self, args: list[str]) -> None:
        s = self.session
        if not args:
            self.out.info(f"title: {s.title}" if s.title else "No title yet.")
            return
        from chatcli.library import check_title

        s.set_title(check_title(args[0]))
        self.out.info(f"Session titled {s.title!r}.")

    def do_export(self, args: list[str]) -> None:
        from chatcli.transcript import export_to_folder

        path = export_to_folder(self.session.to_snapshot(), args[0].lower() if args else "md", Path.cwd())
        self.out.info(f"Wrote {path}.")

    def do_fork(self, args: list[str]) -> None:
        from chatcli.library import fork

        s = self.session
        new = fork(s.store, s.to_snapshot())
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

    def chat(self, text: str) -> None:
        """Send one message and show the reply as it streams."""
        self._stream(lambda view: self.session.send(text, on_delta=view.feed, on_notice=view.notice))

    def _stream(self, turn: Callable[[ReplyView], Message]) -> None:
        """Run ``turn`` (a send or a retry) with a live reply view; report its errors in one line."""
        view = self.out.reply()
        try:
            with _keys_not_echoed(), view:
                reply = turn(view)
        except SessionTimeoutError as e:
            if self.session.unsaved:
                self.out.error(f"timed out: {e}; {_KEPT}, send another or try again")
                return
            kept = " (the partial reply is saved)" if e.partial else ""
            self.out.error(f"timed out: {e}{kept}; your message is saved, send another or try again")
            return
        except BackendError as e:
            self.out.error(f"{e} ({_KEPT if self.session.unsaved else 'your message is saved'})")
            return
        except SaveError as e:
            self.out.error(f"{e}; the turn is kept in memory and will be saved at the next attempt")
            return
        except ChatcliError as e:
            self.out.error(str(e))
            return
        self.out.reply_footer(reply)

    def show_help(self, args: list[str] | None = None) -> None:
        from rich.table import Table
        from rich.text import Text

        console = self.out.console
        console.print(
            "Commands (each also works with a leading /; /model, /system and /title need the slash "
            "when they carry text, so a message starting with those words stays a message):",
            markup=False,
            highlight=False,
        )
        table = Table.grid(padding=(0, 2))  # wrapped summaries stay in their column
        table.add_column(no_wrap=True)
        table.add_column()
        for c in COMMANDS:
            table.add_row(Text("  " + ", ".join((c.usage, *c.aliases))), Text(c.summary))
        console.print(table, markup=False, highlight=False)
        console.print(
            "\n".join(
                [
                    "",
                    "Enter sends; Alt+Enter (or Esc then Enter) adds a new line; pasted text keeps its newlines.",
                    "Ctrl-C stops a reply (what arrived is saved) or clears the line; Ctrl-D quits.",
                    'To send a command word as a message, start it with a backslash: \\quit sends "quit".',
                ]
            ),
            markup=False,
            highlight=False,
        )


def _preview(text: str, limit: int = 40) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= limit else line[: limit - 1] + "…")


@contextmanager
def _keys_not_echoed() -> Iterator[None]:
    """While a reply streams, keys typed (and the ^C of Ctrl-C) are not echoed into the output, where
    they would break the live view. Ctrl-C still interrupts. Does nothing when stdin is not a terminal."""
    try:
        import termios
    except ImportError:
        yield
        return
    try:
        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):  # termios.error is no OSError: stdin is a pipe or file
        yield
        return
    new = list(old)
    new[3] &= ~(termios.ECHO | termios.ECHOCTL)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, new)
    except (OSError, termios.error):
        yield
        return
    try:
        yield
    finally:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, old)
        except (OSError, termios.error):  # the terminal is gone (SIGHUP): nothing left to restore
            pass


def _terminated_in(error: BaseException) -> Terminated | None:
    """The Terminated that ``error`` was raised while handling, if any (walks ``__context__``)."""
    seen: BaseException | None = error.__context__
    while seen is not None:
        if isinstance(seen, Terminated):
            return seen
        seen = seen.__context__
    return None


def _is_command_line(text: str) -> bool:
    try:
        return parse_command(text) is not None
    except CommandError:
        return False
