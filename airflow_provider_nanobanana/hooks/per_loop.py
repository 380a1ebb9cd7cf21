"""What one event loop shares across all its RunComfy waiters.

A triggerer runs thousands of triggers on one loop; each of them building its own client, or looking
up its own connection, is what does not scale. Both are kept here per loop: two
``httpx.AsyncClient`` per distinct settings (one for GETs, one for the rest), one connection lookup
per connection id. When the loop shuts down its clients are closed and its state dropped
(:func:`_release_at_shutdown`), so a process that runs many loops does not keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from airflow_provider_nanobanana.config import POLL_TRANSPORT
from airflow_provider_nanobanana.hooks.settings import RunComfySettings
from airflow_provider_nanobanana.redaction import redact_httpx_logs

#: Methods the aiohttp-backed client may send: idempotent reads only (see :class:`ReadOnlyTransport`).
READ_METHODS = frozenset({"GET"})

# Per (event loop, settings, kind): thousands of triggers in one triggerer share a connection pool
# and SSL context instead of paying ~32 ms CPU and ~0.85 MB each for their own. The value is the
# build under way or done, so the triggers that arrive together await one build.
_ASYNC_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], asyncio.Task[httpx.AsyncClient]]
]
_ASYNC_CLIENTS = weakref.WeakKeyDictionary()


class ReadOnlyTransport(httpx.AsyncBaseTransport):
    """httpx-aiohttp's transport, refusing anything but a GET before a byte is sent.

    A poll through it costs about a third of the CPU it costs through httpx's own, but it reports a
    connection dropped *after* the request was sent as ``ConnectTimeout``, which reads as "never
    sent". For a status or result GET that does not matter (asking again is harmless); for a submit
    it would turn "a job may exist and be billed" into a blind resubmit. So POSTs never get here:
    the hook picks the client by method (:func:`shared_async_client`), and this class refuses any
    other method in case someone hands it the wrong client.
    """

    def __init__(self, settings: RunComfySettings) -> None:
        from httpx_aiohttp import AiohttpTransport

        self.ssl_context = httpx.create_ssl_context(verify=settings.verify_tls)
        self._inner = AiohttpTransport(client=self._session)

    def _session(self) -> Any:
        import aiohttp

        # trust_env stays off: proxies from the environment are handled by not using this transport
        # at all (see _wants_proxy), and aiohttp's trust_env would also read ~/.netrc.
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=15.0, ssl=self.ssl_context)
        return aiohttp.ClientSession(connector=connector)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method not in READ_METHODS:
            raise RuntimeError(
                f"{request.method} refused: the aiohttp transport sends only {sorted(READ_METHODS)}"
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def shared_async_client(settings: RunComfySettings, *, method: str = "POST") -> httpx.AsyncClient:
    """The event loop's client for one request method: GETs through :class:`ReadOnlyTransport`
    (unless ``[nanobanana] poll_transport = httpx`` or a proxy is configured), everything else
    through httpx's own transport.

    The first call per loop and kind builds the client in a worker thread: that loads a CA bundle
    into an SSL context and, for the aiohttp one, imports aiohttp (which builds two more), several
    hundred ms of CPU on a busy triggerer that would otherwise hold every trigger on the loop
    (docs/benchmarks-loop-blocks.md). Callers that arrive meanwhile await the same build; a failed
    build is not kept.
    """
    loop = asyncio.get_running_loop()
    clients = _ASYNC_CLIENTS.setdefault(loop, {})
    # Every poll passes here: the lookup is one dict access. Which transport a GET takes (the
    # option, the proxy environment) is decided once, when its client is built.
    reads = method in READ_METHODS
    key = (*settings.cache_key, reads)
    build = clients.get(key)
    if build is None or _unusable(build):
        _release_at_shutdown(loop)
        build = clients[key] = loop.create_task(_build_off_loop(settings, reads=reads))
    return await asyncio.shield(build)


def _unusable(build: asyncio.Task[httpx.AsyncClient]) -> bool:
    if not build.done():
        return False
    return build.cancelled() or build.exception() is not None or build.result().is_closed


async def _build_off_loop(settings: RunComfySettings, *, reads: bool) -> httpx.AsyncClient:
    client = await asyncio.to_thread(_new_client, settings, reads=reads)
    _close_at_loop_shutdown(asyncio.get_running_loop(), client)
    return client


def _new_client(settings: RunComfySettings, *, reads: bool) -> httpx.AsyncClient:
    """Blocking: SSL contexts and imports. Binds to no loop, so it is safe in any thread: httpx
    binds on first use, and :class:`ReadOnlyTransport` hands httpx-aiohttp a factory, so the aiohttp
    session (which would bind to the thread's loop) is made on the first request, on the loop."""
    read_only = reads and POLL_TRANSPORT.get() == "aiohttp" and not _wants_proxy(settings)
    redact_httpx_logs()
    transport = ReadOnlyTransport(settings) if read_only else None
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    return httpx.AsyncClient(limits=limits, transport=transport, **settings.client_kwargs())


#: Per loop, the generators that close its clients (the loop itself holds them only weakly).
_CLOSERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[AsyncIterator[None]]]
_CLOSERS = weakref.WeakKeyDictionary()
_RELEASERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]]
_RELEASERS = weakref.WeakKeyDictionary()


def _release_at_shutdown(loop: asyncio.AbstractEventLoop) -> None:
    """Drop this module's state for ``loop`` when it shuts down (``shutdown_asyncgens``).

    The keys are weak, but the values (build tasks, clients, lookups) hold their loop strongly, so
    without this a finished loop and its clients would live as long as the process: every
    ``asyncio.run`` of a worker's in-place wait, or of a test, would add one.
    """
    if loop in _RELEASERS:
        return

    async def release() -> AsyncIterator[None]:
        try:
            yield
        finally:
            for state in (_ASYNC_CLIENTS, _LOOP_SETTINGS, _CLOSERS, _WAITERS, _RELEASERS):
                state.pop(loop, None)

    gen = _RELEASERS[loop] = release()
    loop.create_task(_start(gen))


def _close_at_loop_shutdown(loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
    """Close ``client`` when its loop shuts down (``asyncio.run`` and the triggerer call
    ``shutdown_asyncgens``, which closes every started async generator): an aiohttp session left
    open logs "Unclosed client session" errors at exit, and sockets would stay open until then."""

    async def closer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    gen = closer()
    _CLOSERS.setdefault(loop, []).append(gen)
    loop.create_task(_start(gen))


async def _start(gen: AsyncIterator[None]) -> None:
    await gen.__anext__()


def _wants_proxy(settings: RunComfySettings) -> bool:
    """Whether httpx would send to ``base_url`` through a proxy from the environment (``HTTPS_PROXY``
    ...): then GETs take the same way as POSTs rather than a second proxy configuration."""
    host = urlsplit(settings.base_url).hostname or ""
    proxies = urllib.request.getproxies_environment()
    scheme = urlsplit(settings.base_url).scheme
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(host, proxies)  # type: ignore[attr-defined]


#: How long a triggerer keeps one connection's settings before reading them again (a rotated token
#: is picked up within this time).
SETTINGS_TTL_S = 300.0

_LOOP_SETTINGS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Task[RunComfySettings]]]
]
_LOOP_SETTINGS = weakref.WeakKeyDictionary()


async def settings_of_loop(
    conn_id: str, lookup: Callable[[], Coroutine[Any, Any, RunComfySettings]]
) -> RunComfySettings:
    """One connection lookup per event loop, connection id and TTL, shared by every waiter.

    In a triggerer every lookup is a round trip through its supervisor process, which serves one
    request per loop pass; 10,000 triggers each resolving their own connection starve it. Waiters
    that arrive while a lookup is under way await that same lookup; a failed one is not kept.
    """
    loop = asyncio.get_running_loop()
    cache = _LOOP_SETTINGS.setdefault(loop, {})
    now = loop.time()
    entry = cache.get(conn_id)
    stale = entry is None or entry[0] <= now
    if entry is not None and entry[1].done() and entry[1].exception() is not None:
        stale = True
    if stale:
        _release_at_shutdown(loop)
        cache[conn_id] = entry = (now + SETTINGS_TTL_S, loop.create_task(lookup()))
    assert entry is not None
    return await asyncio.shield(entry[1])


_WAITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def waiting_on_loop() -> Iterator[None]:
    """Count the caller among its loop's waiters for as long as it waits (see :func:`waiters_on_loop`)."""
    loop = asyncio.get_running_loop()
    _WAITERS[loop] = _WAITERS.get(loop, 0) + 1
    try:
        yield
    finally:
        # A waiter in an async generator closed at shutdown may end after the loop's release.
        if loop in _WAITERS:
            _WAITERS[loop] -= 1


def waiters_on_loop() -> int:
    """How many single-job waiters (``RunComfyJobTrigger``) this event loop holds now; a batch
    trigger's jobs are not counted: it logs per batch, not per job."""
    return _WAITERS.get(asyncio.get_running_loop(), 0)
