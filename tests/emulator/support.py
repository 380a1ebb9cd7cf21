"""Helpers for the emulator suite: input images, a host serving them, and a thin API client."""

from __future__ import annotations

import http.server
import io
import os
import socket
import threading
import time
from typing import Any

import httpx
from PIL import Image

from airflow_provider_nanobanana.emulator import EmulatorServer
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, JobState

#: Fast but observable timings: a test can see each state before it passes.
FAST: dict[str, Any] = {"queue_s": 0.05, "run_s": 0.1}
SUBMIT_PATH = f"/v1/models/{DEFAULT_MODEL_ID}"


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (200, 40, 40), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: its size is about 3 bytes per pixel."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class ImageHost:
    """A plain HTTP server for job inputs: real images, wrong types, junk, 404s, big files."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str | None, bytes]] = {
            "/red-300x200.png": (200, "image/png", png_bytes((300, 200))),
            "/blue-300x200.png": (200, "image/png", png_bytes((300, 200), (30, 60, 220))),
            "/tall-200x400.jpg": (200, "image/jpeg", png_bytes((200, 400), (40, 160, 40), "JPEG")),
            "/page.html": (200, "text/html; charset=utf-8", b"<html><body>login required</body></html>"),
            "/junk.png": (200, "image/png", b"this is not a png at all" * 10),
            "/gone.png": (404, "text/plain", b"not found"),
            "/big.png": (200, "image/png", noise_png(120)),
        }
        self.chunked = {"/big-no-length.png"}  # served without Content-Length, connection-delimited
        self.routes["/big-no-length.png"] = self.routes["/big.png"]
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = host.routes.get(self.path, (404, "text/plain", b"no route"))
                if self.path in host.chunked:
                    self.protocol_version = "HTTP/1.0"
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                if self.path not in host.chunked:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def closed_port_url() -> str:
    """A URL on a loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.png"


class Api:
    """A thin client of the emulated API, as a provider's hook would use it."""

    def __init__(self, emu: EmulatorServer, image_host: ImageHost) -> None:
        self.emu = emu
        self.images = image_host
        self.http = httpx.Client(base_url=emu.base_url, headers=emu.auth_headers, trust_env=False, timeout=10)

    def body(self, **fields: Any) -> dict[str, Any]:
        return {
            "prompt": "turn the sky purple",
            "image_urls": [self.images.url("/red-300x200.png")],
            **fields,
        }

    def submit(self, **fields: Any) -> httpx.Response:
        return self.http.post(SUBMIT_PATH, json=self.body(**fields))

    def submit_id(self, **fields: Any) -> str:
        response = self.submit(**fields)
        assert response.status_code == 200, response.text
        return str(response.json()["request_id"])

    def status(self, request_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/requests/{request_id}/status")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def result(self, request_id: str, **params: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/requests/{request_id}/result", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def cancel(self, request_id: str) -> httpx.Response:
        return self.http.post(f"/v1/requests/{request_id}/cancel")

    def wait(self, request_id: str, *states: JobState, timeout_s: float = 10.0) -> dict[str, Any]:
        wanted = {state.value for state in states} or {s.value for s in JobState if s.is_terminal}
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.result(request_id)
            if body["status"] in wanted:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{request_id} still {body['status']}, wanted {sorted(wanted)}")
            time.sleep(0.02)

    def download(self, url: str) -> httpx.Response:
        # Outputs are public pre-signed links: fetched without the API token, like a CDN file.
        return httpx.get(url, trust_env=False, timeout=10)

    def close(self) -> None:
        self.http.close()
