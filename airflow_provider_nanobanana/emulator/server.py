"""Running the emulator as a real HTTP server: in a background thread for tests, or in the foreground.

Tests need a real socket, not an in-process transport: retries, timeouts, dropped connections and
keep-alive only behave truthfully over TCP. The socket is bound before uvicorn starts so port 0
(any free port) can be used and the chosen port is known up front, and startup is only reported
once a request has actually been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from airflow_provider_nanobanana.emulator.app import Emulator, create_app
from airflow_provider_nanobanana.emulator.config import EmulatorConfig, FaultConfig

STARTUP_TIMEOUT_S = 15.0


class QuietServer(uvicorn.Server):
    """A uvicorn server that says when it accepts connections and leaves signals to its owner.

    uvicorn re-raises a captured SIGTERM after shutdown, which would end the process with -15
    instead of 0; the emulator's command line installs its own handlers instead.
    """

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()
            if self._on_started is not None:
                self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(4096)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: Starlette, *, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn settings for an emulator app: quiet, no access log, hang-ups possible (see connections)."""
    emulator: Emulator = app.state.emulator
    return uvicorn.Config(
        app,
        http=emulator.connections.protocol_class(),
        lifespan="on",
        log_config=None,
        log_level=log_level,
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=3,
    )


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is what uvicorn would pick), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_coroutine(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion on a new event loop owned by the calling thread."""
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(coro)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class EmulatorServer:
    """The emulator on ``127.0.0.1`` in a background thread.

    >>> with EmulatorServer(EmulatorConfig(queue_s=0.1)) as emu:  # doctest: +SKIP
    ...     url = f"{emu.base_url}/v1/models/google/nano-banana-2/edit"
    ...     httpx.post(url, headers=emu.auth_headers, json={"prompt": "...", "image_urls": [...]})
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config or EmulatorConfig()
        self.app = create_app(self.config)
        self.emulator: Emulator = self.app.state.emulator
        self._host = host
        self._port = port
        self._server: QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._admin: httpx.Client | None = None
        self.base_url = ""

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        if self._server is not None:
            return self
        sock = bind_socket(self._host, self._port)
        port = sock.getsockname()[1]
        config = uvicorn_config(self.app)
        server = QuietServer(config)
        thread = threading.Thread(
            target=run_coroutine,
            args=(server.serve(sockets=[sock]),),
            name=f"runcomfy-emulator-{port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        self.base_url = url_for(self._host, port)
        thread.start()
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self

    def _wait_until_serving(self) -> None:
        server, thread = self._server, self._thread
        assert server is not None
        assert thread is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.ready.wait(0.01):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator did not start")
        self._admin = httpx.Client(base_url=self.base_url, trust_env=False, timeout=10.0)
        while True:
            try:
                self._admin.get("/_emulator/health").raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- convenience for tests --------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.config.token

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}"}

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _client(self) -> httpx.Client:
        if self._admin is None:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        return self._admin

    def counters(self) -> dict[str, Any]:
        response = self._client().get("/_emulator/counters")
        response.raise_for_status()
        return dict(response.json())

    def get_config(self) -> dict[str, Any]:
        response = self._client().get("/_emulator/config")
        response.raise_for_status()
        return dict(response.json())

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Replace settings on the running server (any :class:`EmulatorConfig` field but ``token``)."""
        if isinstance(changes.get("faults"), FaultConfig):
            changes["faults"] = changes["faults"].model_dump(mode="json")
        response = self._client().put("/_emulator/config", json=changes)
        response.raise_for_status()
        return dict(response.json())

    def set_faults(self, faults: FaultConfig | None = None, **fields: Any) -> dict[str, Any]:
        """Replace the whole fault set: ``set_faults(rate_429=1.0)``; ``set_faults()`` clears it."""
        chosen = faults if faults is not None else FaultConfig(**fields)
        return self.configure(faults=chosen)

    def reset(self) -> None:
        self._client().post("/_emulator/reset").raise_for_status()

    def force_cancel(self, request_id: str) -> dict[str, Any]:
        response = self._client().post(f"/_emulator/requests/{request_id}/force_cancel")
        response.raise_for_status()
        return dict(response.json())

    def force_fail(self, request_id: str, message: str | None = None) -> dict[str, Any]:
        body = {"message": message} if message else {}
        response = self._client().post(f"/_emulator/requests/{request_id}/fail", json=body)
        response.raise_for_status()
        return dict(response.json())
