"""A chatcli REPL in a real pseudo-terminal (pexpect), for the tests of what a terminal user sees."""

from __future__ import annotations

import re
import sys

import pexpect

from fakellm import FakeLLMServer

PROMPT = "›"
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]|[\x08\r]")


def plain(text: str) -> str:
    """Terminal output without escape sequences, backspaces and carriage returns."""
    return ANSI.sub("", text)


class Chat:
    """One ``python -m chatcli ...`` in a 40x100 pseudo-terminal."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "chatcli", *args],
            env=env,
            dimensions=(40, 100),
            timeout=10,
            encoding="utf-8",
            codec_errors="replace",
        )
        self.log: list[str] = []

    def expect(self, pattern: str | type, **kw: object) -> str:
        """Wait for ``pattern``; return the plain text that came before it."""
        self.child.expect(pattern, **kw)
        before = self.child.before if isinstance(self.child.before, str) else ""
        self.log.append(before)
        return plain(before)

    def expect_prompt(self) -> str:
        return self.expect(PROMPT)

    def send(self, line: str) -> None:
        self.child.sendline(line)

    def command(self, line: str, last: str) -> str:
        """Send ``line`` and wait for ``last`` (text near the end of its output) and then the prompt;
        return everything between the typed line and ``last`` as plain text."""
        self.send(line)
        out = self.expect(re.escape(last))
        self.expect_prompt()
        return out

    def quit_with_ctrl_d(self) -> str:
        self.child.sendeof()
        out = self.expect(pexpect.EOF)
        self.child.close()
        return out

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


def start(chats: list[Chat], env: dict[str, str], *args: str) -> tuple[Chat, str]:
    """Open the REPL; return it (at its first prompt) and the session id from the banner."""
    c = Chat(env, *args)
    chats.append(c)
    c.expect(r"(New|Resumed) session ([0-9A-Za-z_-]+)")
    sid = c.child.match.group(2)
    c.expect_prompt()
    return c, sid


def new_args(llm: FakeLLMServer) -> list[str]:
    return ["new", "--backend", "openai", "--base-url", f"{llm.url}/v1"]
