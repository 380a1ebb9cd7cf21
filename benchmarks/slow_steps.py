"""Which code held a real triggerer's event loop: every slow callback, timed and attributed.

Airflow's watchdog reports "async thread was blocked for X seconds" but, as its docstring says, cannot
tell which trigger did it. Installed in the triggerer's processes (``slow_steps_site/sitecustomize.py``,
enabled by ``NB_SLOW_STEPS=<file prefix>``), this:

- times every asyncio callback (``Handle._run``: one uninterrupted step of one task, or one plain
  callback), which is exactly what can hold the loop; a step of ``SLOW_S`` or more is recorded with
  its task's coroutine (for a trigger task, the trigger class it runs);
- also records each busy stretch of ``BUSY_S`` or more: steps back to back, the loop never idle
  between them. Airflow's watchdog counts these as "blocked" too (its 0.1 s sleep waits behind every
  ready step), though no single step in them is long;
- samples the main thread's stack every ``SAMPLE_S`` from a side thread, and for each slow step or
  busy stretch keeps where the samples within it were: the innermost frame outside the standard
  library, and whether any frame of the stack was provider code (``airflow_provider_nanobanana``);
- times the cyclic garbage collector (``gc.callbacks``): it holds the GIL, so no sample is taken
  while it runs, and a step it stops shows few samples for its length.

One JSON line per slow step or busy stretch goes to ``<prefix>.<pid>.jsonl``. The cost is two clock
reads per callback and a stack walk per sample.
"""

from __future__ import annotations

import asyncio.events
import collections
import gc
import json
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

SLOW_S = 0.25
SAMPLE_S = 0.02
#: Steps closer together than this belong to one busy stretch (the loop never waited for I/O between).
BUSY_GAP_S = 0.005
BUSY_S = 1.0
PROVIDER = f"{os.sep}airflow_provider_nanobanana{os.sep}"
_STDLIB = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
_SITE = f"{os.sep}site-packages{os.sep}"


def owner(filename: str) -> str:
    """``provider``, ``airflow``, ``stdlib``, or the site-packages distribution a file belongs to."""
    if PROVIDER in filename:
        return "provider"
    if _SITE in filename:
        top = filename.split(_SITE, 1)[1].split(os.sep, 1)[0]
        return "airflow" if top == "airflow" else top.removesuffix(".py")
    if filename.startswith(_STDLIB) or filename.startswith("<"):
        return "stdlib"
    return "other"


def where(frame: FrameType | None) -> tuple[str, str]:
    """Where the main thread is, and the innermost provider frame on its stack (``""`` if none).

    The spot is the innermost frame outside the standard library (``structlog:_output.py:msg``), or
    ``asyncio:<file>:<function>`` when the loop's own machinery (below ``_run_once``) is running.
    """
    spot, innermost, provider = "", "", ""
    while frame is not None:
        code = frame.f_code
        kind = owner(code.co_filename)
        if kind == "provider" and not provider:
            provider = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}:{code.co_name}"
        if not innermost:
            innermost = f"{os.path.basename(code.co_filename)}:{code.co_name}"
        if not spot:
            if kind != "stdlib":
                spot = f"{kind}:{os.path.basename(code.co_filename)}:{code.co_name}"
            elif code.co_name == "_run_once" and code.co_filename.endswith("base_events.py"):
                spot = f"asyncio:{innermost}"
        frame = frame.f_back
    return spot or f"stdlib:{innermost}", provider


class Recorder:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pid = os.getpid()
        self.samples: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=4096)
        self.main_id = threading.main_thread().ident
        self.out = open(f"{prefix}.{self.pid}.jsonl", "a", buffering=1)  # noqa: SIM115 - lives with the process
        self.busy_from = self.busy_to = 0.0
        self.busy_steps = 0
        # Cyclic GC holds the GIL throughout, so the sampler sees nothing of it: time it apart.
        self.gc_pauses: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=1024)
        self._gc_started = 0.0
        gc.callbacks.append(self._gc)
        threading.Thread(target=self._sample, name="nb-slow-steps", daemon=True).start()

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.monotonic()
        elif time.monotonic() - self._gc_started >= 0.01:
            self.gc_pauses.append((self._gc_started, time.monotonic(), int(info.get("generation", -1))))

    def step(self, started: float, ended: float, callback: Any) -> None:
        """Every step: a slow one is recorded; so is a busy stretch of short ones (what Airflow's
        watchdog also reports as "blocked": its 0.1 s sleep waits behind all of them)."""
        if started - self.busy_to > BUSY_GAP_S:
            if self.busy_to - self.busy_from >= BUSY_S:
                self._write("busy", self.busy_from, self.busy_to, f"{self.busy_steps} steps back to back")
            self.busy_from, self.busy_steps = started, 0
        self.busy_to = ended
        self.busy_steps += 1
        if ended - started >= SLOW_S:
            self._write("step", started, ended, describe(callback))

    def _sample(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            frame = sys._current_frames().get(self.main_id or 0)
            self.samples.append((time.monotonic(), *where(frame)))

    def _write(self, kind: str, started: float, ended: float, what: str) -> None:
        inside = [(w, p) for t, w, p in list(self.samples) if started <= t <= ended]
        spots = collections.Counter(w for w, _ in inside)
        pauses = [
            (max(a, started), min(b, ended), g)
            for a, b, g in list(self.gc_pauses)
            if b > started and a < ended
        ]
        line = {
            "kind": kind,
            "wall": time.time(),
            "s": round(ended - started, 3),
            "what": what,
            "samples": len(inside),
            "provider_samples": sum(1 for _, p in inside if p),
            "top": spots.most_common(3),
            "provider_top": collections.Counter(p for _, p in inside if p).most_common(2),
            "gc_s": round(sum(b - a for a, b, _ in pauses), 3),
            "gc_generations": sorted({g for _, _, g in pauses}),
        }
        self.out.write(json.dumps(line) + "\n")


def describe(callback: Any) -> str:
    """A task step as its chain of awaiting coroutines, and the trigger class if one is on it.

    Airflow wraps each trigger (``greenback_shim`` > ``run_trigger`` > the trigger's ``run``), so the
    task's own coroutine alone does not say whose trigger it is.
    """
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return f"callback {getattr(callback, '__qualname__', type(callback).__name__)}"
    names: list[str] = []
    trigger: object = None
    coro: Any = task.get_coro()
    while coro is not None and len(names) < 8:
        names.append(getattr(coro, "__qualname__", type(coro).__name__))
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if trigger is None and frame is not None:
            trigger = frame.f_locals.get("trigger")
        coro = getattr(coro, "cr_await", None)
    kind = f" [{type(trigger).__name__}]" if trigger is not None else ""
    return "task " + " > ".join(names) + kind


_recorder: Recorder | None = None


def install(prefix: str) -> None:
    """Wrap ``Handle._run``; each process (the runner is forked) starts its own sampler on first use."""
    original: Callable[[asyncio.events.Handle], None] = asyncio.events.Handle._run

    def _run(self: asyncio.events.Handle) -> None:
        global _recorder
        if _recorder is None or _recorder.pid != os.getpid():
            _recorder = Recorder(prefix)
        started = time.monotonic()
        try:
            original(self)
        finally:
            _recorder.step(started, time.monotonic(), getattr(self, "_callback", None))

    asyncio.events.Handle._run = _run  # type: ignore[method-assign]


def read(prefix: str) -> list[dict[str, Any]]:
    """Every slow step recorded under ``prefix``, all processes."""
    folder, base = os.path.split(prefix)
    steps: list[dict[str, Any]] = []
    for name in sorted(os.listdir(folder or ".")):
        if name.startswith(os.path.basename(base) + ".") and name.endswith(".jsonl"):
            with open(os.path.join(folder, name)) as fh:
                steps += [json.loads(line) for line in fh if line.strip()]
    return steps
