"""The test doubles themselves: a patched sleep must not see another thread's sleeps."""

from __future__ import annotations

import asyncio
import threading

from tests.fakes import record_async_sleeps


async def test_only_the_tests_own_sleeps_are_recorded(monkeypatch):
    """A server left running on another thread (uvicorn sleeps 0.1 s in its main loop) once filled
    a recorded-sleeps list with 11,000 entries and failed an unrelated trigger test in CI."""
    stop, ticks = threading.Event(), []

    async def server_main_loop() -> None:
        while not stop.is_set():
            ticks.append(1)
            await asyncio.sleep(0.01)

    background = threading.Thread(target=asyncio.run, args=(server_main_loop(),), daemon=True)
    background.start()
    try:
        slept = record_async_sleeps(monkeypatch)
        while len(ticks) < 20:  # the other thread keeps sleeping while the patch is on
            await asyncio.sleep(0)
            threading.Event().wait(0.01)
        await asyncio.sleep(5)
    finally:
        stop.set()
        background.join(timeout=10)
    assert [s for s in slept if s] == [5]
