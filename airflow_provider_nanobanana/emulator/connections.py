"""Access to the socket behind an ASGI request, so a fault can close it without any response.

ASGI gives an application no way to hang up: if it returns or raises before responding, uvicorn
answers ``500`` itself. Real networks do hang up, and a client must treat that as a transport error,
so the emulator's servers use an HTTP protocol class that records each connection's transport under
its peer address; ``scope["client"]`` finds it again. Under any other server the registry stays
empty and faults fall back to sending headers and a truncated body.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from starlette.types import Scope

Peer = tuple[str, int]


class ConnectionRegistry:
    """Open transports of one server, by the client's (host, port)."""

    def __init__(self) -> None:
        self._transports: dict[Peer, asyncio.BaseTransport] = {}

    def transport_for(self, scope: Scope) -> asyncio.BaseTransport | None:
        client = scope.get("client")
        if not client:
            return None
        return self._transports.get((str(client[0]), int(client[1])))

    def protocol_class(self, base: type[asyncio.Protocol] | None = None) -> type[asyncio.Protocol]:
        """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) that records into this registry."""
        if base is None:
            from uvicorn.protocols.http.auto import AutoHTTPProtocol

            base = AutoHTTPProtocol
        return _tracking_protocol(base, self._transports)


def _peer(transport: asyncio.BaseTransport) -> Peer | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return None


def _tracking_protocol(
    base: type[asyncio.Protocol], registry: MutableMapping[Peer, asyncio.BaseTransport]
) -> type[asyncio.Protocol]:
    class TrackingProtocol(base):  # type: ignore[valid-type, misc]
        _emulator_peer: Peer | None = None

        def connection_made(self, transport: asyncio.BaseTransport, *args: Any, **kwargs: Any) -> None:
            self._emulator_peer = _peer(transport)
            if self._emulator_peer is not None:
                registry[self._emulator_peer] = transport
            super().connection_made(transport, *args, **kwargs)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._emulator_peer is not None:
                registry.pop(self._emulator_peer, None)
            super().connection_lost(exc)

    TrackingProtocol.__name__ = f"Tracking{base.__name__}"
    return TrackingProtocol
