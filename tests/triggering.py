"""Driving a trigger's ``run()`` the way a triggerer does, including killing it mid-flight."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest


async def counters(emulator: Any) -> dict[str, Any]:
    """The emulator's counters without blocking the loop the trigger under test runs on."""
    return await asyncio.to_thread(emulator.counters)


async def until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not reached within {timeout_s} s")
        await asyncio.sleep(0.02)


async def kill(runner: asyncio.Task[Any]) -> None:
    """What a dying triggerer does to a trigger: cancel its run() wherever it is."""
    assert not runner.done(), "the trigger finished before it could be killed"
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
