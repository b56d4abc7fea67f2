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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatcli import attachments
from chatcli.backends import preload
from chatcli.errors import (
    BackendError,
    ChatcliError,
    CommandError,
    MessageTooLarge,
    NothingToDo,
    SaveError,
    SessionTimeoutError,
    SizeLimitError,
    Terminated,
)
from chatcli.render_history import show_history
from chatcli.repl_commands import BY_NAME, ReplCommands, is_command_line, parse_command
from chatcli.snapshot import valid_unicode
from chatcli.text import count

if TYPE_CHECKING:
    from chatcli.mcp_client import MCPServers, ToolSpec
    from chatcli.model import ToolCallPart, ToolResultPart
    from chatcli.render import Renderer, ReplyView
    from chatcli.session import ConversationSession, Message, Sinks
    from chatcli.tools import Answer

HELP_HINT = "type help for commands, Ctrl-D to quit"
RESUME_TURNS = 20  # turns shown on resume (`history` shows all), so a long session opens at once
_KEPT = "your message is kept in memory and will be saved at the next attempt"


class Repl(ReplCommands):
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
        self.attempted = 0  # turns sent (or retried) in this run, numbered from 1 as the user sees them
        self.failed: list[int] = []  # which of them failed (a piped REPL then exits 1)
        self.pending: list[attachments.Attachment] = []  # files /file attached to the next message
        self.show_reasoning = True  # a reply's reasoning streams dimmed (else: only its folded line)
        self.servers: MCPServers | None = None  # the session's tool servers (started once the prompt shows)
        self._servers_told = False  # the servers' failures were said (once, before the first turn)
        self.notes: list[str] = []  # notes (prose) shown once, right under the banner

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
        words = sorted({f"/{n}" for n in BY_NAME} | set(BY_NAME))
        ps: PromptSession[str] = PromptSession(
            history=history,
            key_bindings=kb,
            multiline=False,
            enable_history_search=False,
            completer=WordCompleter(words, sentence=True),
            enable_open_in_editor=True,  # Ctrl-X Ctrl-E: the line in $VISUAL / $EDITOR
            complete_while_typing=False,
            prompt_continuation=lambda width, line_no, wrap: "… ".rjust(width),
        )

        def first_render(app: Any) -> None:  # once the prompt is drawn, then the handler goes
            ps.app.after_render -= first_render
            self._while_waiting()

        ps.app.after_render += first_render
        return lambda: ps.prompt([("bold", "› ")])

    @staticmethod
    def _plain_input() -> str:
        """One line of a piped stdin; bytes that are not UTF-8 become U+FFFD whatever the locale's
        decoding would do with them (a UTF-8 locale's is strict)."""
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.readline() if stream is not None else sys.stdin.readline()
        if not raw:
            raise EOFError
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return line.removesuffix("\n").removesuffix("\r")

    def _while_waiting(self) -> None:
        """At a terminal, once the first prompt is drawn: start the tool servers, then import the HTTP
        client while the user types (the first turn would otherwise wait for it)."""
        self._start_servers()
        preload()

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Read and answer until quit or Ctrl-D. Errors of a turn are reported and the loop goes on."""
        self.out.banner(self.session, self.resumed, HELP_HINT)
        for note in self.notes:
            self.out.note(note)
        if self.resumed and self.session.messages:
            show_history(self.out, self.session, last=RESUME_TURNS)
        if self.session.backend is not None:
            self.session.backend.prepare()
        prompt = self._make_prompt()
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            self._start_servers()
            if not _input_waiting():
                preload()
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

    def summary(self) -> str | None:
        """For a piped REPL whose turns failed: which of the turns sent in this run, numbered from 1, in
        one line (None when none did)."""
        if not self.failed:
            return None
        failed = sorted(set(self.failed))
        which = ("turn " if len(failed) == 1 else "turns ") + ", ".join(map(str, failed))
        total = self.attempted
        kept = (
            "its last changes are not saved"
            if self.session.unsaved
            else "every message is kept in the session"
        )
        return f"{len(failed)} of {count(total, 'turn')} failed ({which}); {kept}"

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
            if stripped.startswith("\\") and is_command_line(stripped[1:]):
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

    def chat(self, text: str) -> None:
        """Send one message (with the files /file attached) and show the reply as it streams."""
        if self.pending:
            text, self.pending = attachments.message(self.pending, text), []
        self._servers_ready()
        self._stream(lambda view: self.session.send(text, sinks=self._sinks(view)))

    # -- tools -----------------------------------------------------------------------------------------
    def _start_servers(self) -> None:
        if self.servers is not None:
            self.servers.start()  # (a second call does nothing)

    def _servers_ready(self) -> None:
        """Before the first turn: wait for the tool servers still starting, and say which failed."""
        if self.servers is None or self._servers_told:
            return
        self._servers_told = True
        if any(st.state == "starting" for st in self.servers.states.values()):
            self.out.info("Starting the tool servers…")
        self.servers.wait_ready(self.servers.start_timeout + 1)
        for st in self.servers.states.values():
            if st.state != "ready":
                self.out.notice(
                    f"tool server {st.name} is not available ({st.error or st.state}): its tools are off"
                )

    def _sinks(self, view: ReplyView) -> Sinks:
        """Where a turn's output goes: the reply view, and the tool calls shown, asked and answered here."""
        from chatcli.session import Sinks

        def shown(call: ToolCallPart, spec: ToolSpec, arguments: dict[str, Any]) -> None:
            view.finish()
            self.out.tool_call(f"{spec.server}.{spec.name}", arguments)

        def done(call: ToolCallPart, result: ToolResultPart) -> None:
            view.finish()
            self.out.tool_result(result.text, result.is_error)
            view.again()

        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        return Sinks(
            view.feed, view.think, view.notice, shown, _ask_on_terminal if interactive else None, done
        )

    def _stream(self, turn: Callable[[ReplyView], Message]) -> None:
        """Run ``turn`` (a send or a retry) with a live reply view; report its errors in one line."""
        view = self.out.reply("stream" if self.show_reasoning else "fold")
        self.attempted += 1
        try:
            with _keys_not_echoed(), view:
                reply = turn(view)
        except NothingToDo:  # e.g. retry with no turn: not a failed turn (``handle`` says so)
            self.attempted -= 1
            raise
        except ChatcliError as e:
            self.failed.append(self.attempted)
            self._report_failure(e)
            return
        self.out.reply_footer(reply)

    def _report_failure(self, e: ChatcliError) -> None:
        """A failed turn's error, in one line, saying what became of the message."""
        kept = _KEPT if self.session.unsaved else "your message is saved"
        if isinstance(e, (MessageTooLarge, SizeLimitError)):
            self.out.error(str(e))
        elif isinstance(e, SessionTimeoutError):
            partial = " (the partial reply is saved)" if e.partial and not self.session.unsaved else ""
            self.out.error(f"timed out: {e}{partial}; {kept}, send another or try again")
        elif isinstance(e, BackendError):
            self.out.error(f"{e} ({kept})")
        elif isinstance(e, SaveError):
            self.out.error(f"{e}; the turn is kept in memory and will be saved at the next attempt")
        else:
            self.out.error(str(e))


def _ask_on_terminal(call: ToolCallPart, spec: ToolSpec, arguments: dict[str, Any]) -> Answer:
    """Ask whether the call shown just above may run: yes, no, or always (this tool, this session).
    Ctrl-C (or Ctrl-D) stops the turn."""
    from prompt_toolkit import prompt

    while True:
        try:
            said = prompt("Run it? [y]es, [n]o, [a]lways for this tool: ").strip().lower()
        except EOFError:
            raise KeyboardInterrupt from None
        if said in ("y", "yes"):
            return "yes"
        if said in ("n", "no", ""):
            return "no"
        if said in ("a", "always"):
            return "always"


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


def _input_waiting() -> bool:
    """Whether standard input already holds something to read (a line, or its end), so that nothing is
    worth doing before reading it; True too when that cannot be told."""
    import select

    try:
        return bool(select.select([sys.stdin], [], [], 0)[0])
    except (OSError, ValueError, TypeError):  # closed, or not a file descriptor (as under a test runner)
        return True


def _terminated_in(error: BaseException) -> Terminated | None:
    """The Terminated that ``error`` was raised while handling, if any (walks ``__context__``)."""
    seen: BaseException | None = error.__context__
    while seen is not None:
        if isinstance(seen, Terminated):
            return seen
        seen = seen.__context__
    return None


def running_prompt() -> Any:
    """The prompt_toolkit Application reading input right now, or None (also when it was never loaded)."""
    if "prompt_toolkit" not in sys.modules:
        return None
    from prompt_toolkit.application.current import get_app_or_none

    app = get_app_or_none()
    return app if app is not None and app.is_running and app.loop is not None else None
