"""A loopback HTTP server that answers exactly the bytes a test scripts: bombs, trickles, echoes.

Unlike the emulator (a well-behaved service with injected faults), this one speaks raw sockets, so a
test can send what no framework would: a gzip bomb with a small ``Content-Length``, stacked
encodings, a body that trickles a byte at a time, a header that quotes the caller's token. It counts
what it was sent and what it managed to write, so tests assert on counts, never on wall time.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


#: A script: given the request, write the raw answer to the socket (and may sleep between writes).
Script = Callable[[Request, socket.socket], None]


@dataclass
class HostileServer:
    script: Script
    requests: list[Request] = field(default_factory=list)
    bytes_written: int = 0
    disconnects: int = 0
    _server: socketserver.ThreadingTCPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str, path_part: str = "") -> int:
        return sum(1 for r in self.requests if r.method == method and path_part in r.path)

    def write(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        self.bytes_written += len(data)

    def start(self) -> HostileServer:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                with contextlib.suppress(OSError):
                    while (request := read_request(sock)) is not None:
                        outer.requests.append(request)
                        outer.script(request, sock)
                outer.disconnects += 1

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def hostile(script: Script) -> Iterator[HostileServer]:
    server = HostileServer(script).start()
    try:
        yield server
    finally:
        server.stop()


def read_request(sock: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return Request(method, path, headers, rest[:length])


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer; ``Content-Length`` is the body's wire length unless given."""
    all_headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def gzip_bomb(decoded_bytes: int, *, layers: int = 1) -> bytes:
    """Valid JSON padded with spaces to ``decoded_bytes``, gzipped ``layers`` times (tiny on the wire)."""
    data = b'{"status": "in_queue"' + b" " * max(0, decoded_bytes - 22) + b"}"
    for _ in range(layers):
        data = gzip.compress(data, compresslevel=9)
    return data


def trickle(server: HostileServer, sock: socket.socket, head: bytes, every_s: float, limit: int) -> None:
    """Send ``head`` (status line and headers), then one body byte every ``every_s``, at most
    ``limit`` bytes: each byte arrives well inside any read timeout."""
    server.write(sock, head)
    for _ in range(limit):
        time.sleep(every_s)
        server.write(sock, b" ")
