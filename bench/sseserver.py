"""A minimal OpenAI-compatible streaming server that sends tokens as fast as it can (or at a set rate).

Run in its own process (so it never competes with the client for the GIL)::

    python bench/sseserver.py        # prints "READY <port>", serves until killed

The stream is chosen by the URL, so both chatcli and a bare client need only a base URL:
``http://127.0.0.1:PORT/rate/R/tokens/N/v1`` then ``/chat/completions``. ``R`` tokens per second
(0: as fast as the socket takes them), ``N`` content tokens. Every token is its own SSE event and its own
HTTP chunk, exactly as llama.cpp sends them: ``data: {chat.completion.chunk}\\n\\n``. Then a chunk with
``finish_reason: "stop"``, one with ``usage``, and ``data: [DONE]``. Each response closes its connection.

The reply's text is Markdown-like: paragraphs, bullet lists and a fenced code block now and then (see
``reply_tokens``), so a client that renders Markdown has real work to do.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time

_PATH = re.compile(rb"^POST /rate/(\d+)/tokens/(\d+)/v1/chat/completions HTTP/1\.[01]\r\n")
_TEXT = (
    "the model streams each token as soon as it is sampled so a reader sees text appear word by "
    "word while the terminal redraws only what changed since the last frame and keeps the rest "
    "exactly where it was before"
)
_WORDS = _TEXT.split()
_CODE = [
    "def total(values):",
    "    result = 0",
    "    for v in values:",
    "        result += v * 2",
    "    return result",
    "",
    "print(total(range(10)))",
]


def reply_tokens(n: int) -> list[str]:
    """``n`` tokens of a Markdown reply: paragraphs of 60-100 tokens, every fifth a bullet list, every
    seventh a fenced Python block. Deterministic."""
    out: list[str] = []
    block = 0
    while len(out) < n:
        block += 1
        if block % 7 == 0:
            out.append("```python\n")
            for line in _CODE:
                out.extend(re.findall(r"\s*\S+|\s+", line))
                out.append("\n")
            out.append("```\n\n")
        elif block % 5 == 0:
            for item in range(4):
                out.append("-")
                out.extend(" " + _WORDS[(block * 7 + item * 3 + k) % len(_WORDS)] for k in range(8))
                out.append("\n")
            out.append("\n")
        else:
            size = 60 + (block * 13) % 41
            words = [" " + _WORDS[(block * 11 + k) % len(_WORDS)] for k in range(size)]
            words[0] = words[0].strip().capitalize()
            words[size // 2] = " **" + words[size // 2].strip() + "**"
            out.extend(words)
            out.append(".\n\n")
    return out[:n]


def _event(obj: dict) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


_cache: dict[int, list[bytes]] = {}


def encoded_stream(n: int) -> list[bytes]:
    """The HTTP chunks of an ``n``-token reply, built once per ``n``."""
    if n not in _cache:
        base = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "bench-model",
        }
        tokens = reply_tokens(n)
        chunks = [
            _event(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ],
                }
            )
        ]
        chunks += [
            _event({**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]})
            for t in tokens
        ]
        chunks.append(_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        chunks.append(
            _event(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 10,
                        "completion_tokens": len(tokens),
                        "total_tokens": 10 + len(tokens),
                    },
                }
            )
        )
        done = b"data: [DONE]\n\n"
        chunks.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        _cache[n] = chunks
    return _cache[n]


_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)


def _serve(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)) if b"ength:" in head else 0
        while len(body) < length:
            more = conn.recv(65536)
            if not more:
                return
            body += more
        m = _PATH.match(head + b"\r\n")
        if m is None:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        rate, n = int(m.group(1)), int(m.group(2))
        chunks = encoded_stream(n)
        try:
            conn.sendall(_HEAD + chunks[0])
            if rate == 0:
                for i in range(1, len(chunks), 32):
                    conn.sendall(b"".join(chunks[i : i + 32]))
                return
            start = time.perf_counter()
            sent = 1
            while sent < len(chunks):
                due = min(len(chunks), 1 + int((time.perf_counter() - start) * rate) + 1)
                if due > sent:
                    conn.sendall(b"".join(chunks[sent:due]))
                    sent = due
                else:
                    time.sleep(max(0.0, start + (sent - 1) / rate - time.perf_counter()))
        except OSError:  # the client went away
            return


def main() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(f"READY {srv.getsockname()[1]}", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
