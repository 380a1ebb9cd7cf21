"""Triggerer density: N RunComfy triggers on one event loop, as the triggerer runs them.

The child submits N jobs first (not measured), then starts one asyncio task per trigger that drives
``run()`` to its single event. Measured over the trigger phase only: RSS growth per trigger, CPU
seconds per job, event-loop lag (sleep overshoot) and polls per job from the emulator's counters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from benchmarks.common import (
    LoopLagSampler,
    cpu_s,
    emulator_counters,
    peak_rss_mb,
    percentile,
    rss_mb,
)

SUBMIT_CONCURRENCY = 64
STEADY_AFTER_S = 5.0  # the first seconds are the ramp: every trigger's first poll is due at once


async def submit_jobs(n: int, png_url: str) -> list[str]:
    """Submit ``n`` edits through the provider's hook (the worker's part; not measured)."""
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
    from airflow_provider_nanobanana.models import EditRequest

    hook = RunComfyHook()
    request = EditRequest.build(prompt="benchmark edit", image_urls=[png_url], allow_insecure_inputs=True)
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    async def one() -> str:
        async with gate:
            return (await hook.asubmit(request)).request_id

    return list(await asyncio.gather(*(one() for _ in range(n))))


def make_trigger(impl: str, request_id: str, deadline: float, args: dict[str, Any]) -> Any:
    initial, cap = float(args["poll_interval_s"]), float(args["poll_max_s"])
    if impl == "naive":
        from benchmarks.naive import ClientPerPollTrigger

        return ClientPerPollTrigger(
            request_id=request_id, deadline_epoch_s=deadline, poll_interval_s=initial, poll_max_s=cap
        )
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

    return RunComfyJobTrigger(
        request_id=request_id, deadline_epoch_s=deadline, poll_interval_s=initial, poll_max_s=cap
    )


async def drive(trigger: Any) -> dict[str, Any]:
    """What the triggerer does with one trigger: iterate ``run()`` until its first event."""
    async for event in trigger.run():
        return dict(event.payload)
    return {"status": "no-event"}


async def _watchdog(limit_mb: float, tasks: list[asyncio.Task[dict[str, Any]]], flag: list[str]) -> None:
    """Cancel everything if RSS passes ``limit_mb``: the naive variant must not take the machine down."""
    while True:
        await asyncio.sleep(0.5)
        if rss_mb() > limit_mb:
            flag.append(f"aborted: RSS above {limit_mb:.0f} MB")
            for task in tasks:
                task.cancel()
            return


async def measure(args: dict[str, Any]) -> dict[str, Any]:
    n, impl = int(args["n"]), str(args["impl"])
    emulator = psutil.Process(int(args["emulator_pid"]))
    t_submit = time.monotonic()
    request_ids = await submit_jobs(n, str(args["png_url"]))
    submit_s = time.monotonic() - t_submit
    before = await asyncio.to_thread(emulator_counters, str(args["emulator_url"]))
    base_rss, base_cpu = rss_mb(), cpu_s()
    emu_cpu0 = sum(emulator.cpu_times()[:2])
    sampler = LoopLagSampler()
    sampler.start()
    t0 = time.monotonic()
    deadline = time.time() + float(args["job_timeout_s"])
    tasks = [asyncio.create_task(drive(make_trigger(impl, rid, deadline, args))) for rid in request_ids]
    flag: list[str] = []
    guard = asyncio.create_task(_watchdog(float(args["rss_guard_mb"]), tasks, flag))
    done, pending = await asyncio.wait(tasks, timeout=float(args["wall_limit_s"]))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    guard.cancel()
    wall = time.monotonic() - t0
    cpu = cpu_s() - base_cpu
    emu_cpu = sum(emulator.cpu_times()[:2]) - emu_cpu0
    await sampler.stop()
    after = await asyncio.to_thread(emulator_counters, str(args["emulator_url"]))
    events = [t.result() for t in done if not t.cancelled() and t.exception() is None]
    statuses = [e.get("status") for e in events]
    lags = sampler.lags_after(t0 + STEADY_AFTER_S)
    all_lags = [lag for _, lag in sampler.samples]
    polls = (after["status_polls"] - before["status_polls"]) + (
        after["result_polls"] - before["result_polls"]
    )
    peak = max(sampler.rss_peak_mb, rss_mb())
    return {
        "impl": impl,
        "n": n,
        "submit_s": round(submit_s, 1),
        "wall_s": round(wall, 1),
        "completed": statuses.count("success"),
        "errors": n - statuses.count("success"),
        "error_kinds": sorted({str(s) for s in statuses if s != "success"}) + flag,
        "base_rss_mb": round(base_rss, 1),
        "peak_rss_mb": round(peak, 1),
        "ru_maxrss_mb": round(peak_rss_mb(), 1),
        "rss_per_trigger_kb": round((peak - base_rss) * 1024 / n, 1),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_job": round(cpu * 1000 / n, 2),
        "cpu_ms_per_poll": round(cpu * 1000 / max(polls, 1), 2),
        "lag_p99_ms": round(percentile(lags or all_lags, 99) * 1000, 1),
        "lag_max_ms": round(max(all_lags, default=0.0) * 1000, 1),
        "polls_per_job": round(polls / n, 2),
        "polls_per_s": round(polls / wall, 1),
        "emulator_cpu_pct": round(100 * emu_cpu / wall, 1),
    }


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(measure(args))
