"""Injected failures: the ways a real API, gateway or network lets a client down.

Each fault is decided by one seeded draw per request, before the endpoint does any work, so a
scenario replays the same way every time. The responses below are what a client then sees: a 429
with or without ``Retry-After``, a 5xx, an HTML error page from a proxy, a 200 whose JSON is cut
off, a body that trickles, or a connection that closes under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from airflow_provider_nanobanana.emulator.config import FIVE_XX_STATUSES, FaultConfig
from airflow_provider_nanobanana.emulator.connections import ConnectionRegistry


class FaultKind(str, Enum):
    LATENCY = "latency"
    DROP = "drop"
    LOST_RESPONSE = "lost_response"
    RATE_LIMITED = "429"
    SERVER_ERROR = "5xx"
    MALFORMED = "malformed"
    HTML = "html"
    SLOW_BODY = "slow_body"
    EXPIRED_OUTPUTS = "expire_outputs"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 0
    #: For drops: close before any byte of the response (else after the headers and part of the body).
    no_response: bool = False


class FaultInjector:
    """Draws faults from its own seeded generator, apart from job outcomes, so adding a fault does
    not change which jobs fail."""

    def __init__(self, seed: int) -> None:
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self._rng = random.Random(f"faults:{seed}")

    def decide(self, faults: FaultConfig, endpoint: str) -> Fault | None:
        if endpoint not in faults.endpoints or not faults.any_rate:
            return None
        lost = faults.rate_lost_response if endpoint == "submit" else 0.0
        slices = (
            (FaultKind.DROP, faults.rate_drop),
            (FaultKind.LOST_RESPONSE, lost),
            (FaultKind.RATE_LIMITED, faults.rate_429),
            (FaultKind.SERVER_ERROR, faults.rate_5xx),
            (FaultKind.MALFORMED, faults.rate_malformed),
            (FaultKind.HTML, faults.rate_html),
        )
        draw = self._rng.random()
        edge = 0.0
        for kind, rate in slices:
            edge += rate
            if rate > 0 and draw < edge:
                return self._detail(kind, faults)
        return None

    def _detail(self, kind: FaultKind, faults: FaultConfig) -> Fault:
        if kind is FaultKind.SERVER_ERROR:
            return Fault(kind, status=faults.status_5xx or self._rng.choice(FIVE_XX_STATUSES))
        if kind in (FaultKind.DROP, FaultKind.LOST_RESPONSE):
            mode = faults.drop_mode
            no_response = mode == "no_response" or (mode == "mixed" and self._rng.random() < 0.5)
            return Fault(kind, no_response=no_response)
        return Fault(kind)


_HTML_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx (emulated)</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_MALFORMED_BODIES = (
    b'{"request_id": "',
    b'{"status": "in_progress", "request_id": ',
    b"{'status': 'completed'}",
)


def fault_response(fault: Fault, faults: FaultConfig, connections: ConnectionRegistry, seq: int) -> Response:
    """The response standing in for the endpoint's own; ``seq`` varies the malformed body."""
    if fault.kind is FaultKind.RATE_LIMITED:
        headers = {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
        body = {"error_code": 429001, "error_message": "TooManyRequests: rate limit exceeded (emulated)"}
        return JSONResponse(body, status_code=429, headers=headers)
    if fault.kind is FaultKind.SERVER_ERROR:
        phrase = _phrase(fault.status)
        body = {
            "error_code": fault.status * 1000 + 1,
            "error_message": f"{phrase}: upstream failure (emulated)",
        }
        return JSONResponse(body, status_code=fault.status)
    if fault.kind is FaultKind.MALFORMED:
        return Response(_MALFORMED_BODIES[seq % len(_MALFORMED_BODIES)], media_type="application/json")
    if fault.kind is FaultKind.HTML:
        return HTMLResponse(_HTML_PAGE, status_code=502)
    return DroppedConnection(connections, no_response=fault.no_response)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "ServerError"


class DroppedConnection(Response):
    """Closes the connection: before any response, or after headers and part of the announced body.

    Either way the client gets a transport error (``httpx.RemoteProtocolError``), never a response.
    """

    def __init__(self, connections: ConnectionRegistry, *, no_response: bool, body: bytes = b"") -> None:
        super().__init__(status_code=200, media_type="application/json")
        self._connections = connections
        self._no_response = no_response
        self._full = body or b'{"request_id": "0000000000000000", "status": "in_queue"}'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = self._connections.transport_for(scope)
        if not (self._no_response and transport is not None):
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self._full)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            partial = self._full[: max(1, len(self._full) // 2)]
            await send({"type": "http.response.body", "body": partial, "more_body": True})
        if transport is None:
            # Not served by an emulator server: raising makes the ASGI server close the connection.
            raise ConnectionAbortedError("emulated dropped connection")
        transport.close()
        await _until_disconnected(receive)


async def _until_disconnected(receive: Receive, timeout_s: float = 2.0) -> None:
    """Wait for the server to notice the close, so it neither logs nor answers on our behalf."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(wait(), timeout=timeout_s)


class SlowBody(Response):
    """Sends ``inner`` unchanged except that its body arrives in pieces over ``duration_s``."""

    def __init__(self, inner: Response, duration_s: float, pieces: int = 10) -> None:
        self.status_code = inner.status_code
        self.body = inner.body
        self.raw_headers = inner.raw_headers
        self.background = None
        self._duration_s = duration_s
        self._pieces = max(1, min(pieces, len(inner.body)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = bytes(self.body)
        step = math.ceil(len(body) / self._pieces) if body else 1
        offsets = range(0, max(len(body), 1), step)
        for number, offset in enumerate(offsets):
            await asyncio.sleep(self._duration_s / self._pieces)
            last = number == len(offsets) - 1
            await send(
                {"type": "http.response.body", "body": body[offset : offset + step], "more_body": not last}
            )
