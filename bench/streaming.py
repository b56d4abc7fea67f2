"""Streaming: chatcli's token rate with rendering on, against a bare httpx loop reading the same stream.

Both read from ``sseserver.py`` (another process). chatcli runs a real turn: ``ConversationSession.send``
with the OpenAI backend, every piece fed to ``ReplyView`` (rich Live, Markdown) on a 100x40 terminal
console writing to /dev/null. The bare loop is the least a client can do: httpx ``iter_lines``, orjson
for each event, count the text pieces. Rates are tokens per second from the first token to the end.

The first turn at the REPL: a piped ``chatcli new`` (a process of its own, the console script) is sent its
first line one second after its banner, as a user takes that long to type, then a second line; measured
from writing each line to the first byte of the reply on its stdout. The second turn is the floor: what a
first turn costs above it is what chatcli had not done while it waited.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import PYTHON, Report, Row, chatcli_cmd, child_env, interleaved, median

HERE = Path(__file__).resolve().parent
PACED_RATE = 2_000  # tokens/s of the paced stream (the target's rate)
PACED_TOKENS = 4_000  # two seconds
SHORT, LONG = 2_000, 20_000
GROUP = "Streaming"


@dataclass
class Run:
    ttft: float  # seconds from the request to the first token
    seconds: float  # from the first token to the end of the reply
    tokens: int
    cpu: float  # CPU seconds of this process during the reply

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


@contextmanager
def sse_server() -> Iterator[str]:
    """Start ``sseserver.py``; yields ``http://127.0.0.1:PORT``."""
    proc = subprocess.Popen([PYTHON, str(HERE / "sseserver.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"sseserver.py did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}"
    finally:
        proc.terminate()
        proc.wait(10)


def stream_url(server: str, rate: int, tokens: int) -> str:
    return f"{server}/rate/{rate}/tokens/{tokens}/v1"


# -- the two clients -----------------------------------------------------------------------------------
def bare_run(client: Any, base: str) -> Run:
    import orjson

    body = {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    c0 = time.process_time()
    t0 = time.perf_counter()
    first: float | None = None
    count = 0
    with client.stream("POST", base + "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            choices = orjson.loads(data).get("choices")
            if choices and choices[0]["delta"].get("content"):
                if first is None:
                    first = time.perf_counter()
                count += 1
    end = time.perf_counter()
    assert first is not None
    return Run(first - t0, end - first, count, time.process_time() - c0)


class Chatcli:
    """Turns through chatcli's own objects; one backend (and HTTP connection pool) for all of them, a
    fresh session per turn so every reply is saved into a session of the same size."""

    def __init__(self, folder: Path) -> None:
        from rich.console import Console

        from chatcli.backends.openai import OpenAIBackend
        from chatcli.render import Renderer
        from chatcli.stores.folder import FolderStore

        self.store = FolderStore(folder)
        self.backend = OpenAIBackend("http://127.0.0.1:9/v1", "bench-model")
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        console = Console(
            file=self.devnull,
            force_terminal=True,
            width=100,
            height=40,
            highlight=False,
            soft_wrap=False,
            emoji=False,
            color_system="256",
        )
        self.renderer = Renderer(console, console)

    def run(self, base: str) -> Run:
        from chatcli.session import ConversationSession

        self.backend.base_url = base
        session = ConversationSession.create(self.store, self.backend, model="bench-model")
        first: float | None = None
        count = 0
        view = self.renderer.reply()

        def on_delta(text: str) -> None:
            nonlocal first, count
            if first is None:
                first = time.perf_counter()
            count += 1
            view.feed(text)

        try:
            c0 = time.process_time()
            t0 = time.perf_counter()
            with view:
                reply = session.send("hi", on_delta=on_delta)
            end = time.perf_counter()
            cpu = time.process_time() - c0
        finally:
            session.backend = None  # keep the shared backend open
            session.close()
        assert reply.status == "ok" and first is not None, reply
        return Run(first - t0, end - first, count, cpu)

    def close(self) -> None:
        self.backend.close()
        self.devnull.close()


def render_only(tokens: list[str]) -> tuple[float, float]:
    """Feed ``tokens`` straight to a ReplyView (no network, no session): (seconds, CPU seconds)."""
    from rich.console import Console

    from chatcli.render import ReplyView

    with open(os.devnull, "w") as devnull:
        console = Console(
            file=devnull,
            force_terminal=True,
            width=100,
            height=40,
            highlight=False,
            soft_wrap=False,
            emoji=False,
            color_system="256",
        )
        c0 = time.process_time()
        t0 = time.perf_counter()
        with ReplyView(console) as view:
            for t in tokens:
                view.feed(t)
        return time.perf_counter() - t0, time.process_time() - c0


# -- the benchmark -------------------------------------------------------------------------------------
def repl_turns(base: str, folder: Path, pause: float = 1.0) -> tuple[float, float]:
    """A piped ``chatcli new`` against ``base`` (an OpenAI-compatible URL) with its user folders under
    ``folder``: seconds from writing its first line (``pause`` seconds after the banner) to the first byte of
    the reply on stdout, and the same for a second line. Raises RuntimeError when chatcli does not answer."""
    proc = subprocess.Popen(
        [*chatcli_cmd(), "new", "--backend", "openai", "--base-url", base],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=child_env(folder, NO_COLOR="1"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if b"session" not in proc.stdout.readline():  # the banner
            raise RuntimeError("chatcli new showed no banner")
        time.sleep(pause)
        times = []
        for line in (b"hello\n", b"again\n"):
            t0 = time.perf_counter()
            proc.stdin.write(line)
            proc.stdin.flush()
            if not os.read(proc.stdout.fileno(), 65536):
                raise RuntimeError("chatcli new ended before it answered")
            times.append(time.perf_counter() - t0)
            while select.select([proc.stdout], [], [], 0.5)[0]:  # the rest of the reply
                os.read(proc.stdout.fileno(), 1 << 20)
        return times[0], times[1]
    finally:
        proc.stdin.close()
        proc.wait(30)


def run(report: Report, folder: Path, quick: bool = False) -> None:
    import httpx

    from sseserver import reply_tokens

    runs = 3 if quick else 5
    with sse_server() as server:
        client = httpx.Client(trust_env=False, timeout=60)
        cc = Chatcli(folder / "stream-sessions")
        try:
            bare_run(client, stream_url(server, 0, 10))  # warm both clients (connections, imports)
            cc.run(stream_url(server, 0, 10))

            # The first turn at the REPL against the second.
            turns = [repl_turns(stream_url(server, 0, 20), folder / f"repl-{i}") for i in range(runs * 2 - 1)]
            first, second = median([t[0] for t in turns]), median([t[1] for t in turns])
            report.add(
                Row(
                    GROUP,
                    "first turn at the REPL: line to first token (second turn = floor)",
                    first * 1000,
                    "ms",
                    second * 1000,
                    note="piped chatcli new, its first line 1 s after the banner",
                    runs=len(turns),
                )
            )

            # Time to first token: short replies, many runs.
            base = stream_url(server, 0, 20)
            bare, chat = interleaved(runs * 3, lambda: bare_run(client, base), lambda: cc.run(base))
            b_ttft, c_ttft = median([r.ttft for r in bare]), median([r.ttft for r in chat])
            report.add(
                Row(
                    GROUP,
                    "time to first token (bare httpx = floor)",
                    c_ttft * 1000,
                    "ms",
                    b_ttft * 1000,
                    note=f"chatcli adds {(c_ttft - b_ttft) * 1000:.1f} ms (its save of "
                    f"the user message before sending, with fsync, is part of it)",
                    runs=len(chat),
                )
            )

            # The target: a stream paced at 2,000 tokens/s.
            base = stream_url(server, PACED_RATE, PACED_TOKENS)
            bare, chat = interleaved(runs, lambda: bare_run(client, base), lambda: cc.run(base))
            b_rate, c_rate = median([r.rate for r in bare]), median([r.rate for r in chat])
            report.add(
                Row(
                    GROUP,
                    f"token rate at {PACED_RATE:,} tok/s, rendering on",
                    c_rate,
                    "tok/s",
                    b_rate,
                    target="≥ 90 % of floor",
                    ok=c_rate >= 0.9 * b_rate,
                    note=f"{c_rate / b_rate:.1%} of bare httpx; {PACED_TOKENS:,}-token replies",
                    runs=len(chat),
                )
            )
            report.add(
                Row(
                    GROUP,
                    f"CPU per token at {PACED_RATE:,} tok/s",
                    median([r.cpu / r.tokens for r in chat]) * 1e6,
                    "µs/tok",
                    median([r.cpu / r.tokens for r in bare]) * 1e6,
                    note="CPU time of the client process per token",
                    runs=len(chat),
                )
            )

            # As fast as the server can send: the headroom, and whether cost per token stays flat.
            per_token: dict[int, float] = {}
            for n in (SHORT, LONG):
                url = stream_url(server, 0, n)
                bare, chat = interleaved(
                    max(3, runs - 2), lambda u=url: bare_run(client, u), lambda u=url: cc.run(u)
                )
                b_rate, c_rate = median([r.rate for r in bare]), median([r.rate for r in chat])
                per_token[n] = 1 / c_rate
                report.add(
                    Row(
                        GROUP,
                        f"max token rate, {n:,}-token reply",
                        c_rate,
                        "tok/s",
                        b_rate,
                        note=f"{c_rate / b_rate:.0%} of bare httpx",
                        runs=len(chat),
                    )
                )
            ratio = per_token[LONG] / per_token[SHORT]
            report.add(
                Row(
                    GROUP,
                    f"time per token, {LONG:,} vs {SHORT:,}-token reply",
                    ratio,
                    "×",
                    target="≤ 1.5× (linear)",
                    ok=ratio <= 1.5,
                    note=f"{per_token[SHORT] * 1e6:.0f} → {per_token[LONG] * 1e6:.0f} µs/token",
                )
            )
        finally:
            cc.close()
            client.close()

    # Rendering alone, without network or session: the Markdown reply, and one tall code block (the worst
    # case for a renderer that keeps the unfinished block as one string).
    shapes = {"Markdown reply": reply_tokens, "one code block": code_block_tokens}
    for shape, make in shapes.items():
        cost: dict[int, float] = {}
        for n in (SHORT, LONG):
            tokens = make(n)
            results = [render_only(tokens) for _ in range(3)]
            cost[n] = median([r[0] for r in results]) / n
            report.add(
                Row(
                    GROUP,
                    f"render only: {n:,}-token {shape}",
                    cost[n] * 1e6,
                    "µs/tok",
                    note=f"CPU {median([r[1] for r in results]) / n * 1e6:.1f} µs/token",
                    runs=len(results),
                )
            )
        ratio = cost[LONG] / cost[SHORT]
        report.add(
            Row(
                GROUP,
                f"render time per token, {shape}, {LONG:,} vs {SHORT:,}",
                ratio,
                "×",
                target="≤ 1.5× (linear)",
                ok=ratio <= 1.5,
            )
        )


def code_block_tokens(n: int) -> list[str]:
    """``n`` tokens of one fenced code block: 8 tokens a line, no blank line until the end."""
    out = ["```python\n"]
    i = 0
    while len(out) < n - 1:
        out += [f"value_{i}", " =", " compute", "(", f"{i}", ",", " 2", ")\n"]
        i += 1
    return [*out[: n - 1], "\n```\n"]
