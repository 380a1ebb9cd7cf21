"""Shared by the media tests: a local file server standing in for RunComfy's CDN, and hook helpers.

The file server can lie about Content-Type, answer 403/503, redirect, drop the connection mid-body, or
stream hundreds of megabytes from a generator, and it counts requests so tests can prove what was
(not) fetched. S3 is a real S3 HTTP API: the session's moto server on loopback.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from airflow_provider_nanobanana.media import ArchiveResult, S3MediaHook

MiB = 1024 * 1024
REQUEST_ID = "req_0123-abc"
FIELDS = {
    "dag_id": "edits",
    "run_id": "manual__2026-01-01T00:00:00+00:00",
    "task_id": "edit",
    "map_index": -1,
}
RUN_DIR = "archive/edits/manual__2026-01-01T00_00_00_00_00/edit/-1"


def image_bytes(fmt: str, size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")
WEBP = image_bytes("WEBP")


def big_body(total: int, block: bytes) -> Iterator[bytes]:
    """A PNG signature followed by ``block`` repeated up to ``total`` bytes, generated lazily."""
    yield PNG[:16]
    sent = 16
    while sent < total:
        piece = block[: total - sent]
        yield piece
        sent += len(piece)


# --- Local file server ---------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes | Callable[[], Iterable[bytes]] = PNG
    #: Content-Length to announce; defaults to len(body) for bytes bodies.
    length: int | None = None
    content_type: str | None = "image/png"
    headers: dict[str, str] = field(default_factory=dict)
    #: Close the socket after this many body bytes (the announced length is never reached).
    drop_after: int | None = None
    #: Runs when the request arrives, before anything is answered.
    before: Callable[[], None] | None = None


class FileServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.request_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests[path] += 1
                    server.request_headers.append(dict(self.headers))
                route = server.routes.get(path, Route(status=404, body=b"missing", content_type="text/plain"))
                if route.before:
                    route.before()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(route)

            def _answer(self, route: Route) -> None:
                body = route.body if isinstance(route.body, bytes) else None
                self.send_response(route.status)
                if route.content_type:
                    self.send_header("Content-Type", route.content_type)
                length = route.length if route.length is not None else len(body or b"")
                self.send_header("Content-Length", str(length))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                chunks: Iterable[bytes] = [body] if body is not None else route.body()  # type: ignore[operator]
                sent = 0
                for chunk in chunks:
                    if route.drop_after is not None and sent + len(chunk) > route.drop_after:
                        self.wfile.write(chunk[: route.drop_after - sent])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(self, path: str, route: Route | None = None) -> str:
        self.routes[path] = route or Route()
        return self.url(path)

    def total_requests(self) -> int:
        return sum(self.requests.values())

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def make_hook(endpoint_url: str, **overrides: Any) -> S3MediaHook:
    settings: dict[str, Any] = {
        "endpoint_url": endpoint_url,
        "region_name": "us-east-1",
        "allowed_output_hosts": ["127.0.0.1"],
        "max_attempts": 2,
        "retry_base_delay_s": 0.0,
        "s3_max_attempts": 2,
        "http_timeout_s": 10.0,
    }
    settings.update(overrides)
    return S3MediaHook(None, **settings)


def archive(hook: S3MediaHook, urls: list[str], bucket: str, **kwargs: Any) -> ArchiveResult:
    options: dict[str, Any] = {
        "request_id": REQUEST_ID,
        "dest_uri": f"s3://{bucket}/archive/",
        "fields": FIELDS,
    }
    options.update(kwargs)
    return hook.archive_outputs(urls, **options)


def keys_under(client: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def count_calls(hook: S3MediaHook, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` call the hook's client makes."""
    calls: list[dict[str, Any]] = []
    hook.get_client().meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: calls.append(dict(params))
    )
    return calls
