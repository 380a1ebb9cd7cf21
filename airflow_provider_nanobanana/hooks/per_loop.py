"""What one event loop shares across all its RunComfy waiters.

A triggerer runs thousands of triggers on one loop; each of them building its own client, or looking
up its own connection, is what does not scale. Both are kept here per loop (weakly, so a closed loop
frees them): one ``httpx.AsyncClient`` per distinct settings, one connection lookup per connection id.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from airflow_provider_nanobanana.hooks.settings import RunComfySettings
from airflow_provider_nanobanana.redaction import redact_httpx_logs

# One AsyncClient per (event loop, settings): thousands of triggers in one triggerer share a
# connection pool and SSL context instead of paying ~32 ms CPU and ~0.85 MB each for their own.
_ASYNC_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], httpx.AsyncClient]
]
_ASYNC_CLIENTS = weakref.WeakKeyDictionary()


def shared_async_client(settings: RunComfySettings) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    clients = _ASYNC_CLIENTS.setdefault(loop, {})
    client = clients.get(settings.cache_key)
    if client is None or client.is_closed:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        redact_httpx_logs()
        client = clients[settings.cache_key] = httpx.AsyncClient(limits=limits, **settings.client_kwargs())
    return client


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
        cache[conn_id] = entry = (now + SETTINGS_TTL_S, loop.create_task(lookup()))
    assert entry is not None
    return await asyncio.shield(entry[1])
