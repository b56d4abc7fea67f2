"""A TCP proxy on 127.0.0.1 that the tests control: it forwards to ``upstream`` until ``stall()``, then stops
forwarding in both directions while keeping every connection open (a network that hangs instead of
refusing: what is sent is accepted and never answered), until ``resume()``; new connections are accepted
and stall too. ``proxied_url`` rewrites a database URL to go through it."""

from __future__ import annotations

import select
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class StallProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def proxied_url(self, url: str) -> str:
        u = urlsplit(url)
        login = u.netloc.rsplit("@", 1)[0] + "@" if "@" in u.netloc else ""
        return urlunsplit((u.scheme, f"{login}127.0.0.1:{self.port}", u.path, u.query, u.fragment))

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed.is_set():
                self._flowing.wait()  # stalled: nothing is read, nothing forwarded
                ready, _, _ = select.select([a, b], [], [], 0.1)
                if not self._flowing.is_set():
                    continue
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):  # (ValueError: select on a socket close() has closed meanwhile)
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
