"""The one place that knows rich: streaming Markdown, tables, notices, and sanitising model text.

Model text is stored raw; everything shown passes ``sanitize`` first, so no escape sequence from a model
(or a session file) reaches the terminal.

Streaming stays linear in the reply's length: a reply is cut into finished blocks at blank lines outside
code fences (and at the end of a code block); a finished block is printed once, and only the newest lines
of the unfinished block are re-rendered (by rich's Live, at most ``REFRESH_PER_SECOND`` times a second).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO, cast

from chatcli.reasoning import fold_line, reasoning_line
from chatcli.text import count

TOOL_RESULT_LINES = 4  # lines of a tool's result shown (the whole result is kept in the session)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from chatcli.model import Message
    from chatcli.search import SearchHit
    from chatcli.session import ConversationSession
    from chatcli.snapshot import DamagedFile, SessionSummary
    from chatcli.stats import Stats

REFRESH_PER_SECOND = 12

# ESC-introduced sequences: CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC strings (ended by BEL or ESC \, or
# unterminated), and two-character escapes; then 8-bit C1 controls and C0 controls other than \t and \n.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x80-\x9f]"
    r"|[\x00-\x08\x0b-\x1f\x7f]"
    r"|[\u202a-\u202e\u2066-\u2069]"  # bidi embeddings, overrides and isolates: text that reads otherwise
)


def _one_liner(message: str) -> str:
    """A message of chatcli's as rich markup: sanitised, with no store password in it."""
    from chatcli.stores.url import redact_known

    return escape_markup(sanitize(redact_known(message)))


def sanitize(text: str) -> str:
    """``text`` without terminal control sequences (ANSI CSI, OSC, DCS, C1 and C0 controls other than
    tab and newline; NUL is dropped too) nor the bidi controls that make text read otherwise than it is
    stored (U+202A-U+202E, U+2066-U+2069). ``\\r\\n`` becomes ``\\n``. Safe to print to a terminal."""
    if text.isprintable():
        return text
    return _ESCAPES.sub("", text.replace("\r\n", "\n"))


def make_console(file: TextIO | None = None, stderr: bool = False) -> Console:
    """A rich Console; honours NO_COLOR and a non-terminal output (no colours, no live updates). Text is
    wrapped to the screen's width only at a terminal: piped or redirected, each line chatcli writes (a
    message, a notice, what the user typed) is written whole, for the pager, the log or the script that
    reads it. Rendered Markdown, a document, is laid out at the width everywhere (``soft_wrap=False``:
    rich would crop a list item it may not wrap)."""
    from rich.console import Console

    console = Console(file=file, stderr=stderr, highlight=False, soft_wrap=False, emoji=False)
    console.soft_wrap = not console.is_terminal
    return console


class ReplyView:
    """Shows one streaming reply: a spinner until the first token, then Markdown as it arrives.

    Use as a context manager; call ``feed(text)`` for each piece of the answer and ``think(text)`` for
    each piece of reasoning. On a terminal, finished blocks are printed once and the unfinished tail is
    redrawn by a rich Live; elsewhere the raw (sanitised) text is written as it comes.

    Reasoning (``reasoning``): ``"stream"`` shows it dimmed as it arrives, ``"fold"`` keeps the spinner; both
    fold it to one line (``fold_line``) when the answer begins or the reply ends. ``"hide"`` shows nothing
    of it (``ask``: never on stdout).

    The work per piece is constant, however long the reply: a piece without a newline is only appended to
    the current line; a newline files the finished line into the current block (and prints the block
    when it ends: a blank line outside a code fence, or the end of a top-level fence). The Live's refresh
    (``REFRESH_PER_SECOND`` times a second, in rich's thread) renders only the newest lines that fit the
    screen. At the end the last block is rendered whole."""

    def __init__(
        self,
        console: Console,
        label: str = "thinking…",
        err: Console | None = None,
        reasoning: str = "stream",
    ) -> None:
        self.console = console
        self.reasoning_mode = reasoning
        self._thought: list[str] = []  # the reasoning shown dimmed while it streams
        self._thought_at: float | None = None  # monotonic time of its first piece
        self._thought_pieces = 0  # pieces of reasoning (a server sends one token at a time)
        self.err = err or console  # where notices go when there is no live view (stdout is not a terminal)
        self.live_mode = console.is_terminal
        self._label = label
        self._lines: list[str] = []  # finished lines of the block being streamed
        self._partial: list[str] = []  # pieces of the line being streamed (no newline yet)
        self._in_fence = False
        self._fence = ""  # the open fence's marker (``` or ~~~) ...
        self._fence_line = ""  # ... and its whole opening line (keeps the language)
        self._final = False  # finish(): render the last block whole
        self._live: Any = None
        self._spinner: Any = None
        self.chars = 0

    def __enter__(self) -> ReplyView:
        if self.live_mode:
            from rich.live import Live
            from rich.spinner import Spinner

            self._spinner = Spinner("dots", text=self._label, style="dim")
            self._live = Live(
                console=self.console,
                get_renderable=self._renderable,
                auto_refresh=True,
                refresh_per_second=REFRESH_PER_SECOND,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
                vertical_overflow="crop",
            )
            self._live.start()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.finish()
            return
        try:
            self.finish()
        except OSError:  # the terminal is gone (SIGHUP): the exception in flight is what matters
            pass

    def feed(self, text: str) -> None:
        text = sanitize(text)
        if not text:
            return
        if self._thought_at is not None:
            self._fold()
        self.chars += len(text)
        if not self.live_mode:
            self.console.file.write(text)
            self.console.file.flush()
            return
        if "\n" not in text:
            self._partial.append(text)  # atomic: the refresh thread sees the piece or not, never half
            if len(self._partial) > 256:  # keep a very long line cheap to join
                self._partial = ["".join(self._partial)]
            return
        if self._live is None:
            self._take_lines(text)
            return
        with self._live._lock:  # the refresh thread reads _lines and _partial under the same lock
            self._take_lines(text)

    def think(self, text: str) -> None:
        """A piece of the reply's reasoning (see the class docstring)."""
        text = sanitize(text)
        if not text or self.reasoning_mode == "hide":
            return
        if self._thought_at is None:
            self._thought_at = time.monotonic()
        self._thought_pieces += 1
        if self.reasoning_mode != "stream" or not self.live_mode:
            return
        self._thought.append(text)  # (read by the refresh thread: appending is atomic)
        if len(self._thought) > 256:
            self._thought = ["".join(self._thought)[-8192:]]

    def _fold(self) -> None:
        """The reasoning, once the answer begins or the reply ends: one dim line in its place."""
        if self._thought_at is None:
            return
        line = fold_line(time.monotonic() - self._thought_at, self._thought_pieces)
        self._thought_at, self._thought = None, []
        if self._live is not None:
            live_render = getattr(self._live, "_live_render", None)
            if live_render is not None:
                live_render.set_renderable(self._renderable())
            self._live.console.print(f"[dim]{line}[/]")
        else:
            self.console.print(f"[dim]{line}[/]")

    def notice_dim(self, line: str) -> None:
        """A line of text shown dimmed above the streaming reply (``ask -v``: its reasoning)."""
        from rich.markup import escape

        console = self._live.console if self._live is not None else self.err
        console.print(f"[dim]{escape(sanitize(line))}[/]", soft_wrap=True)

    def notice(self, message: str) -> None:
        """A one-line notice shown above the streaming reply (e.g. a rate-limit wait)."""
        from rich.markup import escape

        console = self._live.console if self._live is not None else self.err
        console.print(f"[yellow]{escape(sanitize(message))}[/]", soft_wrap=True)

    def finish(self) -> None:
        """Stop the live view, leaving the whole reply on screen. Safe to call twice."""
        self._fold()
        if self._live is not None:
            live, self._live = self._live, None
            with live._lock:
                self._final = True
                self._spinner = None
            live.stop()  # its last refresh renders the last block whole (rich lets it overflow then)
        elif not self.live_mode and self.chars:
            self.console.file.write("\n")
            self.console.file.flush()
            self.chars = 0

    def again(self) -> None:
        """Stop here (what was shown stays) and show the next reply of the turn (after a tool round) in
        this view, from a fresh start."""
        self.finish()
        type(self).__init__(self, self.console, self._label, self.err, self.reasoning_mode)
        self.__enter__()

    # -- internals --------------------------------------------------------------------------------------
    def _take_lines(self, text: str) -> None:
        """File the lines ``text`` finishes; print each block that ends."""
        lines = ("".join(self._partial) + text).split("\n")
        last = lines.pop()  # the unfinished line after the last newline ("" when text ends with one)
        self._partial = [last] if last else []
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith(("```", "~~~")):
                if not self._in_fence:
                    self._in_fence, self._fence, self._fence_line = True, stripped[:3], stripped
                    self._lines.append(line)
                    continue
                if stripped.startswith(self._fence) and not stripped[3:].strip(" `~"):
                    self._in_fence = False
                    self._lines.append(line)
                    if stripped == line:  # a top-level code block is complete: print it now
                        self._print_block()
                    continue
            if not stripped and not self._in_fence:
                if self._lines:
                    self._print_block()
                continue  # blank lines between blocks are the blocks' margins
            self._lines.append(line)

    def _print_block(self) -> None:
        block, self._lines = "\n".join(self._lines), []
        if self._live is None:
            self.console.print(self._markdown(block), soft_wrap=False)  # a document: wrapped to the width
            return
        # The print redraws the live area below the block: from the tail without it, so the block never
        # shows twice (rich would redraw the area's last frame until its next refresh).
        live_render = getattr(self._live, "_live_render", None)
        if live_render is not None:
            live_render.set_renderable(self._renderable())
        self._live.console.print(self._markdown(block))

    def _renderable(self) -> RenderableType:
        from rich.text import Text

        partial = "".join(self._partial)
        if self._final:
            rest = "\n".join([*self._lines, partial]) if self._lines else partial
            return self._markdown(rest) if rest.strip() else Text("")
        if self._thought and self.chars == 0:
            return self._thinking()
        if not self._lines and not partial and self._spinner is not None and self.chars == 0:
            return cast("RenderableType", self._spinner)
        if not self._lines and not partial.strip():
            return Text("")
        # Only the newest lines that fit on the screen (a line wider than the screen takes several rows).
        width, height = self.console.size
        rows = max(4, height - 4)  # room for the margins Markdown adds
        if len(partial) > width * rows:
            partial = "…" + partial[-width * rows :]
        rows -= len(partial) // max(1, width) + 1
        shown: list[str] = []
        for line in reversed(self._lines):
            rows -= len(line) // max(1, width) + 1
            if rows < 0:
                if self._in_fence:  # keep the code block's opening line, so the tail still renders as code
                    shown.append(self._fence_line)
                break
            shown.append(line)
        shown.reverse()
        shown.append(partial)
        return self._markdown("\n".join(shown))

    def _thinking(self) -> RenderableType:
        """The newest lines of the reasoning that fit the screen, dimmed."""
        from rich.text import Text

        width, height = self.console.size
        rows = max(2, height - 4)
        text = "".join(self._thought)[-width * rows :]
        lines = text.split("\n")
        shown: list[str] = []
        for line in reversed(lines):
            rows -= len(line) // max(1, width) + 1
            if rows < 0:
                break
            shown.append(line)
        return Text("\n".join(reversed(shown)), style="dim italic")

    @staticmethod
    def _markdown(text: str) -> RenderableType:
        from rich.markdown import Markdown

        return Markdown(text, code_theme="monokai", hyperlinks=False)


class Renderer:
    """Everything the REPL and the CLI print. ``console`` for output, ``err`` for errors and notices."""

    def __init__(self, console: Console | None = None, err: Console | None = None) -> None:
        self.console = console or make_console()
        self.err = err or make_console(stderr=True)

    # -- one-liners ------------------------------------------------------------------------------------
    def error(self, message: str) -> None:
        # soft_wrap: a one-line message stays one line (the terminal wraps it), so a path or a command
        # in it can be copied whole
        self.err.print(f"[bold red]error:[/] {_one_liner(message)}", soft_wrap=True)

    def notice(self, message: str) -> None:
        self.err.print(f"[yellow]{_one_liner(message)}[/]", soft_wrap=True)

    def note(self, message: str) -> None:
        """A notice that is prose (nothing in it to copy whole): at a terminal it is wrapped between words to
        the screen's width; piped, one line, as every notice."""
        self.err.print(f"[yellow]{_one_liner(message)}[/]")

    def info(self, message: str) -> None:
        self.console.print(f"[dim]{_one_liner(message)}[/]", soft_wrap=True)

    @contextmanager
    def progress(self, what: str) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on stderr while a long job runs, at a terminal only (``what`` names the job, e.g.
        ``migrating``): yields the callback ``(done, total)`` the job calls, and takes the bar away when the
        block ends. Not at a terminal, the callback draws nothing."""
        if not self.err.is_terminal:
            yield _no_progress
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(escape_markup(what)), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(what, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)

    def reply(self, reasoning: str = "stream") -> ReplyView:
        """A view for one streaming reply (``reasoning``: see ReplyView)."""
        return ReplyView(self.console, err=self.err, reasoning=reasoning)

    def markdown(self, text: str) -> None:
        self.console.print(ReplyView._markdown(sanitize(text)), soft_wrap=False)  # (see _print_block)

    def reasoning(self, m: Message, *, unfold: bool = False) -> None:
        """A message's reasoning: folded to one dim line (``fold_line``), or whole and dimmed with
        ``unfold``. Nothing when it has none."""
        thought = m.reasoning
        if not thought:
            return
        line = reasoning_line(m)
        if not unfold:
            self.console.print(f"[dim]{line}[/]")
            return
        from rich.text import Text

        self.console.print(f"[dim]{line}:[/]")
        self.console.print(Text(sanitize(thought).strip("\n"), style="dim italic"))

    def command_help(self, heading: str, rows: list[tuple[str, str]], notes: list[str]) -> None:
        """The REPL's ``help``: the heading, one row per command (usage with aliases, summary) in two
        columns whose summaries wrap inside their column, then the notes, one per line."""
        from rich.table import Table
        from rich.text import Text

        self.console.print(heading, markup=False, highlight=False)
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column()
        for usage, summary in rows:
            table.add_row(Text("  " + usage), Text(summary))
        self._print_table(table)
        self.console.print("\n".join(["", *notes]), markup=False, highlight=False)

    # -- session views ---------------------------------------------------------------------------------
    def banner(self, session: ConversationSession, resumed: bool, help_hint: str) -> None:
        what = "Resumed" if resumed else "New"
        title = f" · {session.header.title}" if session.header.title else ""
        self.console.print(
            f"[bold]{what} session {session.id}[/]{escape_markup(sanitize(title))} [dim]· "
            f"{escape_markup(session.header.backend)}/{escape_markup(sanitize(session.header.model))} · {help_hint}[/]"
        )

    def stats(self, s: Stats) -> None:
        from rich.table import Table

        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold", no_wrap=True)
        t.add_column(overflow="fold")  # a long snapshot path wraps instead of being cut with "…"
        order = {"user": 0, "assistant": 1}
        roles = (
            ", ".join(
                f"{n} {r}" for r, n in sorted(s.messages_by_role.items(), key=lambda kv: order.get(kv[0], 2))
            )
            or "none"
        )
        t.add_row("turns", str(s.turns))
        t.add_row(
            "messages", f"{sum(s.messages_by_role.values())} ({roles}); {s.context_messages} in context"
        )
        t.add_row("characters", f"{s.characters:,}")
        t.add_row(
            "tokens",
            f"{s.prompt_tokens:,} prompt · {s.completion_tokens:,} completion · {s.cached_tokens:,} cached",
        )
        if s.reasoning_tokens or s.reasoning_characters:
            told = (
                f"{s.reasoning_tokens:,} tokens of the completion"
                if s.reasoning_tokens
                else "tokens not told"
            )
            t.add_row("reasoning", f"{told} · {s.reasoning_characters:,} characters")
        if s.tool_calls:
            t.add_row("tool calls", _tool_line(s))
        t.add_row("time to first token", f"last {_secs(s.last_ttft_s)} · mean {_secs(s.mean_ttft_s)}")
        t.add_row(
            "tokens/s", f"last {_rate(s.last_tokens_per_second)} · mean {_rate(s.mean_tokens_per_second)}"
        )
        t.add_row("context", _context_line(s.context))
        size = f" ({s.stored_bytes:,} bytes)" if s.stored_bytes is not None else ""
        t.add_row("stored in", f"{escape_markup(s.location)}{size}")
        t.add_row("last saved", s.last_saved_at or "not in this run")
        self._print_table(t)

    def session_table(self, rows: list[SessionSummary], damaged: list[DamagedFile]) -> None:
        from rich.table import Table

        if not rows and not damaged:
            self.info("No sessions yet: start one with `chatcli new`.")
            return
        # At a terminal the table fits the screen (titles cut with …); piped or redirected it is printed at
        # its natural width, so nothing is cut from what a script or a pager reads.
        fit = self.console.is_terminal
        t = Table(
            show_edge=False, pad_edge=False, box=None, header_style="bold", expand=fit, padding=(0, 2, 0, 0)
        )
        t.add_column("id", no_wrap=True, min_width=20)
        t.add_column("title", ratio=1, overflow="ellipsis", no_wrap=True, min_width=12)
        t.add_column("backend/model", no_wrap=True, overflow="ellipsis", max_width=24 if fit else None)
        t.add_column("turns", justify="right", no_wrap=True)
        t.add_column("tokens", justify="right", no_wrap=True)
        t.add_column("updated", no_wrap=True)
        for r in rows:
            t.add_row(
                r.id,
                escape_markup(sanitize(r.title)) or "[dim](untitled)[/]",
                escape_markup(sanitize(f"{r.backend}/{r.model}")),
                str(r.turns),
                f"{r.tokens:,}",
                short_time(r.updated_at),
            )
        self._print_table(t)
        for d in damaged:
            self.err.print(f"[yellow]damaged:[/] {escape_markup(sanitize(d.message))}", soft_wrap=True)

    def search_hits(self, hits: list[SearchHit], query: str) -> None:
        """Search results: per hit a header line (session id, title, turn, role) and the snippet with the
        match in bold."""
        from chatcli.search import HIGHLIGHT

        if not hits:
            self.info(f"No message or title matches {query!r}.")
            return
        for h in hits:
            where = "title" if h.role == "title" else f"turn {h.turn} · {h.role}"
            self.console.print(
                f"[bold]{h.session_id}[/] [dim]·[/] {escape_markup(sanitize(h.title)) or '(untitled)'} "
                f"[dim]· {where}[/]",
                soft_wrap=True,
            )
            snippet = h.snippet.replace(_MARK_ON, "").replace(_MARK_OFF, "")
            snippet = snippet.replace(HIGHLIGHT[0], _MARK_ON).replace(HIGHLIGHT[1], _MARK_OFF)
            snippet = " ".join(sanitize(snippet).split())  # one line: newlines in a message become spaces
            marked = escape_markup(snippet).replace(_MARK_ON, "[bold yellow]").replace(_MARK_OFF, "[/]")
            self.console.print("  " + marked, soft_wrap=True, highlight=False)
        self.info(count(len(hits), "hit"))

    def library_stats(self, t: dict[str, Any]) -> None:
        """``chatcli stats``: figures over all sessions (keys as ``Store.totals``, ``active`` as ``active_7d``,
        plus ``mean_messages`` and ``store``)."""
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row(
            "sessions",
            f"{t['sessions']:,} ({t['active_7d']:,} active in the last 7 days)"
            + (f"; {count(t['damaged'], 'damaged file')}" if t["damaged"] else ""),
        )
        table.add_row(
            "messages",
            f"{t['messages']:,} ({t['user_messages']:,} user, "
            f"{t['assistant_messages']:,} assistant); "
            f"{t['mean_messages']} per session on average",
        )
        table.add_row("characters", f"{t['characters']:,}")
        table.add_row(
            "tokens",
            f"{t['prompt_tokens']:,} prompt · {t['completion_tokens']:,} completion · "
            f"{t['cached_tokens']:,} cached",
        )
        models = ", ".join(f"{escape_markup(sanitize(m))} ({n:,})" for m, n in t["models"][:10]) or "none"
        if len(t["models"]) > 10:
            models += f", … {len(t['models']) - 10} more"
        table.add_row("models", models)
        table.add_row("disk used", f"{t['bytes']:,} bytes in {escape_markup(t['store'])}")
        self._print_table(table)

    def _print_table(self, table: Any) -> None:
        """A table fitted to the screen at a terminal; piped or redirected, at its natural width with no
        trailing blanks, so that nothing is cut or wrapped for a script or a pager."""
        if self.console.is_terminal:
            self.console.print(table)
            return
        width = self.console.width
        self.console.width = 100_000  # print() caps its width argument at the console's width
        try:
            with self.console.capture() as captured:
                self.console.print(table, crop=False)
        finally:
            self.console.width = width
        lines = [line.rstrip() for line in captured.get().splitlines()]
        self.console.file.write("\n".join(lines) + "\n")

    # -- tools --------------------------------------------------------------------------------------------
    def tool_call(self, where: str, arguments: Any) -> None:
        """A tool call before it runs: ``server.tool`` and its arguments as indented JSON (sanitised: they
        are the model's)."""
        import json

        self.console.print(f"[bold cyan]⚙ {escape_markup(sanitize(where))}[/]", soft_wrap=True)
        text = json.dumps(arguments, indent=2, ensure_ascii=False)
        self.console.print(escape_markup(sanitize(text)), style="dim", highlight=False)

    def tool_result(self, text: str, is_error: bool, lines: int = TOOL_RESULT_LINES) -> None:
        """A tool's result folded to its first ``lines`` lines ("N more lines"), sanitised (a tool is as
        untrusted as a model); an error in red."""
        shown = sanitize(text).splitlines() or [""]
        more = len(shown) - lines
        body = "\n".join(f"  {line}" for line in shown[:lines])
        style = "red" if is_error else "dim"
        self.console.print(escape_markup(body), style=style, highlight=False)
        if more > 0:
            self.console.print(f"  [dim]… {count(more, 'more line')}[/]")

    def tool_states(self, states: list[Any]) -> None:
        """``/tools``: each server (``chatcli.mcp_client.ServerState``), its state and its tools."""
        if not states:
            self.info("No tools: this session uses no MCP server (--tools NAME, config [mcp.servers.NAME]).")
            return
        for st in states:
            colour = {"ready": "green", "failed": "red"}.get(st.state, "yellow")
            why = f": {escape_markup(sanitize(st.error))}" if st.error else ""
            self.console.print(
                f"[bold]{escape_markup(st.name)}[/] [{colour}]{st.state}[/]{why}", soft_wrap=True
            )
            for t in st.tools:
                summary = escape_markup(sanitize(t.description.splitlines()[0] if t.description else ""))
                self.console.print(f"  {escape_markup(sanitize(t.name))} [dim]{summary}[/]", soft_wrap=True)

    def reply_footer(self, message: Message) -> None:
        """A dim line under a reply that did not complete normally."""
        if message.status == "interrupted":
            self.notice("⏹ interrupted: the partial reply is saved")
        elif message.finish_reason == "length":
            self.notice("the reply was cut at the token limit (finish reason: length)")


_MARK_ON, _MARK_OFF = "\ue000", "\ue001"  # private-use characters: survive sanitize() and markup escaping


def _no_progress(done: int, total: int) -> None:
    """The progress callback where no bar is drawn."""


def short_time(iso: str) -> str:
    """Local time as ``ls -l`` would show it: ``10:19`` today, ``Nov 25 10:19`` this year, else
    ``2025-11-25``."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return escape_markup(sanitize(iso))
    now = datetime.now().astimezone()
    if when.date() == now.date():
        return when.strftime("%H:%M")
    if when.year == now.year:
        return when.strftime("%b %d %H:%M")
    return when.strftime("%Y-%m-%d")


def local_time(iso: str) -> str:
    """``2026-11-25T09:19:10.123Z`` as local time ``2026-11-25 10:19``; odd input is shown as given."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return escape_markup(sanitize(iso))


def _tool_line(s: Stats) -> str:
    """``5 (get_time 3, git_status 2) · 1 failed · 2.3 s in tools``"""
    total = sum(s.tool_calls.values())
    names = ", ".join(f"{escape_markup(sanitize(name))} {n}" for name, n in s.tool_calls.items())
    return f"{total} ({names}) · {s.tool_failures} failed · {s.tool_seconds:.1f} s in tools"


def _context_line(c: dict[str, Any]) -> str:
    """The ``stats`` line on the context window (see ContextPlanner.figures)."""
    window = c.get("window")
    if c.get("turns_sent") is None:
        return f"window {window:,} tokens; nothing sent yet" if window else "nothing sent yet"
    sent = f"{count(c['turns_sent'], 'turn')} sent"
    left = c.get("left_out", 0)
    if left:
        summarised = c.get("summarised", 0)
        sent += f", {left:,} left out" + (f" ({summarised:,} as a summary)" if summarised else "")
    tokens = c.get("tokens")
    if not window:
        size = f"{tokens:,} tokens in the last request" if tokens else "the last request's size is unknown"
        return f"{size}; window unknown (set context_window); {sent}"
    share = f" ({c['share'] * 100:.0f} %)" if c.get("share") is not None else ""
    size = f"{tokens:,} of {window:,} tokens{share}" if tokens else f"window {window:,} tokens"
    return f"{size} in the last request; {sent}"


def status_tag(m: Message) -> str:
    """`` [interrupted]`` (rich markup) after a message whose status is not ``ok``; "" otherwise."""
    return f" [yellow]\\[{m.status}][/]" if m.status != "ok" else ""


def _secs(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f} s"


def _rate(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def escape_markup(text: str) -> str:
    """``text`` with rich markup (``[...]``) escaped, so it prints as written."""
    from rich.markup import escape

    return escape(text)
