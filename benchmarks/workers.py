"""Worker-slot seconds per job: deferrable operator vs ``deferrable=False`` vs requests+sleep.

Runs against an emulator with an accelerated clock (``time_scale``): a 60 s queue is 60/scale real
seconds, and every poll interval is divided by the same factor, so the polling schedule relative to
the job is what it would be in real time. Worker-slot seconds are reported both as measured and
multiplied back by ``time_scale`` (emulated seconds).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.common import EMULATOR_TOKEN


class _FakeTI:
    """Just enough of a task instance for ``execute``: XCom pushes and the ledger's identity."""

    dag_id, task_id, run_id, map_index = "bench", "edit", "bench_run", -1

    def xcom_push(self, key: str, value: Any) -> None:
        pass


class _MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def _context() -> dict[str, Any]:
    return {"ti": _FakeTI(), "task_state_store": _MemoryStore()}


def _operator(png_url: str, scale: float, *, deferrable: bool, seed: int) -> Any:
    from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

    return NanoBananaEditOperator(
        task_id=f"edit_{seed}",
        prompt="benchmark edit",
        image_urls=[png_url],
        seed=seed,
        poll_interval=2.0 / scale,
        poll_max_interval=30.0 / scale,
        deferrable=deferrable,
        aws_conn_id=None,
    )


def deferrable_job(png_url: str, scale: float, seed: int) -> tuple[float, float]:
    """(worker seconds, wall seconds): execute() up to TaskDeferred, then execute_complete()."""
    from airflow.sdk.exceptions import TaskDeferred

    from benchmarks.density import drive

    op, ctx = _operator(png_url, scale, deferrable=True, seed=seed), _context()
    t0 = time.monotonic()
    try:
        op.execute(ctx)
        raise RuntimeError("the job finished before deferring; lengthen the queue")
    except TaskDeferred as deferred:
        worker = time.monotonic() - t0
        event = asyncio.run(drive(deferred.trigger))
    t1 = time.monotonic()
    op.execute_complete(ctx, event)
    end = time.monotonic()
    return worker + (end - t1), end - t0


def blocking_job(png_url: str, scale: float, seed: int) -> tuple[float, float]:
    op = _operator(png_url, scale, deferrable=False, seed=seed)
    t0 = time.monotonic()
    op.execute(_context())
    wall = time.monotonic() - t0
    return wall, wall


def requests_job(base_url: str, png_url: str, scale: float, seed: int) -> tuple[float, float]:
    from benchmarks.naive import requests_sleep_wait

    body = {"prompt": "benchmark edit", "image_urls": [png_url], "seed": seed}
    t0 = time.monotonic()
    out = requests_sleep_wait(base_url, EMULATOR_TOKEN, body, poll_s=5.0 / scale, timeout_s=600 / scale)
    if out["status"] != "completed":
        raise RuntimeError(f"naive job ended {out['status']}")
    wall = time.monotonic() - t0
    return wall, wall


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    scale, jobs, png = float(args["time_scale"]), int(args["jobs"]), str(args["png_url"])
    variants = {
        "deferrable (submit + defer, execute_complete)": lambda s: deferrable_job(png, scale, s),
        "deferrable=False (waits on the worker)": lambda s: blocking_job(png, scale, s),
        "PythonOperator: requests + time.sleep(5)": lambda s: requests_job(
            args["emulator_url"], png, scale, s
        ),
    }
    rows = []
    for name, run in variants.items():
        run(10_000)  # warm-up: imports, connection lookup, TLS-free client setup; not counted
        samples = [run(seed) for seed in range(jobs)]
        worker = sum(s[0] for s in samples) / jobs
        wall = sum(s[1] for s in samples) / jobs
        rows.append(
            {
                "variant": name,
                "jobs": jobs,
                "worker_s": round(worker, 3),
                "worker_s_emulated": round(worker * scale, 1),
                "job_wall_s_emulated": round(wall * scale, 1),
            }
        )
    return {"rows": rows}
