"""A REPL imports the HTTP client while it waits for the first line (``chatcli.backends.preload``), so the
first turn does not spend that time before its request goes out. Seen from outside with CPython's
``-X importtime`` (``PYTHONPROFILEIMPORTTIME``), which writes a line to stderr as each import completes:
httpx's comes before anything is typed."""

from __future__ import annotations

import re

from chatproc import Chat as PipedChat
from fakellm import FakeLLMServer
from ptyproc import Chat, new_args, start

HTTPX_IMPORTED = re.compile(rb"\| httpx\r?\n")  # "import time: <self> | <cumulative> | httpx"


def test_a_piped_repl_loads_the_http_client_while_no_line_has_come(
    child_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    chat = PipedChat(["-m", "chatcli", *new_args(fake_llm)], {**child_env, "PYTHONPROFILEIMPORTTIME": "1"})
    try:
        assert chat.wait_for(b"New session", 20) is not None, chat.text("err")
        assert chat.wait_for(HTTPX_IMPORTED, 10, stream="err") is not None
        chat.send("hello")
        assert chat.wait_for(b"Echo: hello", 20) is not None, chat.text("err")
        chat.close_stdin()
        assert chat.wait() == 0
    finally:
        chat.kill()


def test_at_a_terminal_it_loads_once_the_prompt_is_drawn(
    pty_env: dict[str, str], fake_llm: FakeLLMServer, chats: list[Chat]
) -> None:
    c, _ = start(chats, {**pty_env, "PYTHONPROFILEIMPORTTIME": "1"}, *new_args(fake_llm))
    c.expect(HTTPX_IMPORTED.pattern.decode())
    c.command("hello", "Echo: hello")  # (waits for the reply)
    assert fake_llm.requests[0]["json"]["messages"][-1]["content"] == "hello"
