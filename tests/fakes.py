"""Stand-ins for the parts of Airflow's runtime task context the operators touch.

Shared by unit, integration and reliability tests, so every suite fakes the context the same way.
"""

from __future__ import annotations

import json
from typing import Any


class TI:
    """The parts of a RuntimeTaskInstance the operators use; ``xcom`` is what was pushed."""

    dag_id, task_id, run_id, map_index = "enrich", "edit", "manual__2026-11-27", 0

    def __init__(self, **fields: Any) -> None:
        self.xcom: dict[str, Any] = {}
        self.pulls: dict[str, Any] = {}
        for name, value in fields.items():
            setattr(self, name, value)

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom values must be JSON-serialisable
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.pulls.get(task_ids or "", None)


class StateStore(dict):
    """Airflow 3.3's task state store: survives task tries, unlike XCom."""

    def set(self, key: str, value: Any) -> None:
        self[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.pop(key, None)


def new_context(store: StateStore | None = None, **ti_fields: Any) -> Any:
    return {"ti": TI(**ti_fields), "task_state_store": StateStore() if store is None else store}


class OutletEvents:
    """``context["outlet_events"]``: one mutable event per asset, looked up by URI as Airflow does
    (Asset objects are not hashable on every supported Airflow)."""

    def __init__(self) -> None:
        self._events: dict[str, Any] = {}

    def __getitem__(self, asset: Any) -> Any:
        from types import SimpleNamespace

        return self._events.setdefault(asset.uri, SimpleNamespace(extra={}))


class Clock:
    """A wall clock that moves only when the code under test sleeps: waits are asserted in clock
    seconds, never in wall time. Install it with :func:`install_clock`."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def install_clock(monkeypatch: Any) -> Clock:
    """Patch ``time.time`` and ``time.sleep`` (what the waiters and operators read) with a :class:`Clock`."""
    import time

    clock = Clock()
    monkeypatch.setattr(time, "time", clock.time)
    monkeypatch.setattr(time, "sleep", clock.sleep)
    return clock


def record_async_sleeps(monkeypatch: Any, clock: Any = None) -> list[float]:
    """Patch ``asyncio.sleep`` so the test's own coroutines sleep no time, and record what they asked.

    ``asyncio.sleep`` is one global, and a server left running on another thread by an earlier test
    (uvicorn's main loop sleeps 0.1 s at a time) would otherwise be recorded and set spinning. Only
    calls made on the test's thread are recorded; each still yields to the loop once. With ``clock``
    (a one-item list), each recorded sleep also moves ``clock[0]``.
    """
    import asyncio
    import threading

    real_sleep, test_thread, seen = asyncio.sleep, threading.get_ident(), []

    async def fake_sleep(seconds: float, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != test_thread:
            return await real_sleep(seconds, *args, **kwargs)
        seen.append(seconds)
        if clock is not None:
            clock[0] += seconds
        return await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return seen


def fresh_interpreter_prints(code: str) -> str:
    """The last line ``code`` prints in a new Python process: what importing something there loads,
    free of the modules this test process already holds."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]
