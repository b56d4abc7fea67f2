"""Context window: what deciding a request's window costs per turn as a session grows past its window.

chatcli: ``ConversationSession.plan_turn()`` (which messages the next request holds, the notice about
what was left out) on a session of N messages of ~500 characters whose every reply records its request
(``context``) and the server's ``usage.prompt_tokens``, with a new user message at the end and a window
of 8,192 tokens set (``context_window``): no request is made, as in a real turn when the previous
reply's usage is known (the fake backend would fail the run if one were). Floor: building the request's
role/content dicts for the same messages the plan chose (what any client sends), with nothing decided.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from common import Report, Row, interleaved, median
from datagen import Corpus, messages

SIZES = (10, 1_000, 10_000)
CHARS = 500
WINDOW = 8192
GROUP = "Context window"


class _NoRequests:
    """A backend that must not be asked anything while a window is decided."""

    name, model, base_url = "openai", "bench-model", "http://127.0.0.1:9/v1"

    def context_window(self, timeouts: Any) -> int | None:
        raise AssertionError("deciding the window made a request")

    def count_tokens(self, messages: Any, timeouts: Any) -> int | None:
        raise AssertionError("deciding the window made a request")

    def recorded(self) -> dict[str, str]:
        return {"base_url": self.base_url}

    def close(self) -> None:
        pass


def _session(folder: Path, n: int) -> Any:
    from chatcli.context import plan
    from chatcli.messages import ContextUsed, Usage
    from chatcli.model import Message
    from chatcli.session import ConversationSession
    from chatcli.stores.folder import FolderStore

    store = FolderStore(folder)
    s = ConversationSession.create(store, _NoRequests(), model="bench-model")  # type: ignore[arg-type]
    # The context_window setting: held by the session's planner (chatcli.planner) where it has one, else by
    # the session itself; a setting that did not take would make the backend above fail the run.
    getattr(s, "planner", s).window_setting = WINDOW
    corpus = Corpus(seed=11)
    for d in messages(corpus, n, CHARS):
        m = Message(role=d["role"], content=d["content"])
        if m.role == "assistant":
            p = plan(s.messages, context_start=0, system="", window=WINDOW, max_tokens=None)
            m.context = ContextUsed(p.start, p.tokens, False, WINDOW)
            m.usage = Usage(prompt_tokens=int((p.tokens or 0) * 0.9), completion_tokens=120)
        s.messages.append(m)
    s.messages.append(Message(role="user", content=corpus.text(CHARS)))
    s.notify = lambda text: None  # type: ignore[method-assign]
    return s


def _case(n: int, folder: Path, runs: int) -> tuple[list[float], list[float], int]:
    s = _session(folder, n)
    chosen = s.plan_turn()

    def decide() -> float:
        t0 = time.perf_counter()
        s.plan_turn()
        return time.perf_counter() - t0

    def floor() -> float:
        t0 = time.perf_counter()
        [{"role": s.messages[i].role, "content": s.messages[i].content} for i in chosen.indexes]
        return time.perf_counter() - t0

    chatcli, least = interleaved(runs, decide, floor)
    return chatcli, least, len(chosen.indexes)


def run(report: Report, data: Path, quick: bool) -> None:
    runs = 15 if quick else 60
    for n in SIZES:
        with tempfile.TemporaryDirectory(dir=data) as tmp:
            chatcli, least, sent = _case(n, Path(tmp), runs)
        target = n == 10_000
        value = median(chatcli) * 1000
        report.add(
            Row(
                GROUP,
                f"deciding the window, {n:,} messages ({sent} sent)",
                value,
                "ms",
                median(least) * 1000,
                target="≤ 5 ms" if target else "",
                ok=value <= 5 if target else None,
                runs=runs,
            )
        )
