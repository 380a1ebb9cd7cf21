"""Status-poll microbenchmark: httpx default transport vs httpx-aiohttp's AiohttpTransport vs aiohttp,
then the provider's whole poll (``RunComfyHook.aget_status``) through each of its two transports.

Closed loop at a fixed concurrency against one job's status endpoint on the emulator (its own
process; its CPU share is reported so a saturated emulator is visible). CPU ms per request is this
process's CPU time divided by requests: the cost a triggerer pays per poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import psutil

from benchmarks.common import EMULATOR_TOKEN, cpu_s
from benchmarks.polls import _submit_raw

Get = Callable[[str], Awaitable[int]]


async def _closed_loop(get: Get, path: str, requests: int, concurrency: int) -> float:
    remaining = [requests]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            if await get(path) != 200:
                raise RuntimeError("status poll failed")

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - t0


async def _variant(name: str, base: str, path: str, requests: int, concurrency: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {EMULATOR_TOKEN}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    if name == "aiohttp":
        async with aiohttp.ClientSession(base_url=base, headers=headers) as session:

            async def get(p: str) -> int:
                async with session.get(p) as resp:
                    await resp.read()
                    return resp.status

            await _closed_loop(get, path, 50, concurrency)
            c0 = cpu_s()
            wall = await _closed_loop(get, path, requests, concurrency)
            return wall, cpu_s() - c0
    if name.startswith("RunComfyHook.aget_status"):
        # Each in a loop of its own: the provider keeps one GET client per loop and picks its
        # transport when it builds it, so a second variant on this loop would reuse the first's.
        return await asyncio.to_thread(asyncio.run, _hook_variant(name, base, path, requests, concurrency))
    if name == "httpx + AiohttpTransport":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(base_url=base, headers=headers, transport=AiohttpTransport(limits=limits))
    else:
        client = httpx.AsyncClient(base_url=base, headers=headers, limits=limits)
    async with client:

        async def hget(p: str) -> int:
            resp = await client.get(p)
            resp.json()
            return resp.status_code

        await _closed_loop(hget, path, 50, concurrency)
        c0 = cpu_s()
        wall = await _closed_loop(hget, path, requests, concurrency)
        return wall, cpu_s() - c0


#: The provider's own poll, whole: budget-free hook call, retry wrapper, bounded body, model parsing.
HOOK_VARIANTS = {
    "RunComfyHook.aget_status via httpx's transport": "httpx",
    "RunComfyHook.aget_status via httpx-aiohttp (package default)": "aiohttp",
}


async def _hook_variant(
    name: str, base: str, path: str, requests: int, concurrency: int
) -> tuple[float, float]:
    import os

    from airflow_provider_nanobanana.hooks.per_loop import ReadOnlyTransport, shared_async_client
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook

    os.environ["AIRFLOW__NANOBANANA__POLL_TRANSPORT"] = HOOK_VARIANTS[name]
    hook = RunComfyHook(token=EMULATOR_TOKEN, base_url=base)
    rid = path.split("/")[3]

    async def get(_p: str) -> int:
        await hook.aget_status(rid)
        return 200

    await _closed_loop(get, path, 50, concurrency)
    client = await shared_async_client(hook.settings, method="GET")
    if isinstance(client._transport, ReadOnlyTransport) != (HOOK_VARIANTS[name] == "aiohttp"):
        raise RuntimeError(f"{name}: the hook's GET client has {type(client._transport).__name__}")
    c0 = cpu_s()
    wall = await _closed_loop(get, path, requests, concurrency)
    return wall, cpu_s() - c0


async def _measure(args: dict[str, Any]) -> dict[str, Any]:
    base, requests, concurrency = str(args["emulator_url"]), int(args["requests"]), int(args["concurrency"])
    rid = await asyncio.to_thread(_submit_raw, base, str(args["png_url"]))
    path = f"/v1/requests/{rid}/status"
    emulator = psutil.Process(int(args["emulator_pid"]))
    rows = []
    for name in ("httpx (default transport)", "httpx + AiohttpTransport", "aiohttp", *HOOK_VARIANTS):
        e0 = sum(emulator.cpu_times()[:2])
        wall, cpu = await _variant(name, base, path, requests, concurrency)
        emu = sum(emulator.cpu_times()[:2]) - e0
        rows.append(
            {
                "client": name,
                "requests": requests,
                "concurrency": concurrency,
                "req_per_s": round(requests / wall, 0),
                "cpu_ms_per_req": round(cpu * 1000 / requests, 3),
                "emulator_cpu_pct": round(100 * emu / wall, 0),
            }
        )
    return {"rows": rows}


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_measure(args))
