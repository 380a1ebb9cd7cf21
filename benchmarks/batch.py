"""Batch: one RunComfyBatchTrigger for N items vs N individual RunComfyJobTriggers (trigger side).

Both run against the same accelerated emulator (``time_scale``) with poll intervals and the
process-wide poll budget scaled by the same factor. The individual path also needs N submits on
workers; they are timed separately (a worker slot each in a real deployment, plus N scheduler task
instances, which this benchmark does not model: a real 1000-mapped-task run does not fit the time
budget of this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from benchmarks.common import LoopLagSampler, cpu_s, emulator_counters, percentile, rss_mb

BUCKET = "bench-batch"


def _write_checkpoint(n: int, png_url: str, prefix: str) -> None:
    from airflow_provider_nanobanana.batch import BatchCheckpoint, BatchItem, BatchState
    from airflow_provider_nanobanana.media import S3MediaHook

    client = S3MediaHook("aws_default").get_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    items = [BatchItem(id=f"item-{i:05d}", image_urls=[png_url], prompt=f"edit {i}") for i in range(n)]
    state = BatchState(batch_id=prefix, model_id="google/nano-banana-2/edit", parameters={}, items=items)
    BatchCheckpoint(client, BUCKET, prefix).save(state)


async def _batch(args: dict[str, Any], scale: float) -> tuple[float, dict[str, Any]]:
    from airflow_provider_nanobanana.triggers.batch import RunComfyBatchTrigger
    from benchmarks.density import drive

    trigger = RunComfyBatchTrigger(
        checkpoint_bucket=BUCKET,
        checkpoint_prefix=str(args["prefix"]),
        deadline_epoch_s=time.time() + 3600,
        max_in_flight=int(args["max_in_flight"]),
        rate_per_s=10.0 * scale,
        poll_interval_s=2.0 / scale,
        poll_max_s=30.0 / scale,
    )
    event = await drive(trigger)
    summary = event.get("summary", {})
    return 0.0, {"event": event.get("status"), "summary_counts": summary.get("counts", summary)}


async def _individual(args: dict[str, Any], scale: float) -> tuple[float, dict[str, Any]]:
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
    from benchmarks.density import drive, submit_jobs

    t0 = time.monotonic()
    rids = await submit_jobs(int(args["n"]), str(args["png_url"]))
    submit_s = time.monotonic() - t0
    deadline = time.time() + 3600
    triggers = [
        RunComfyJobTrigger(
            request_id=rid, deadline_epoch_s=deadline, poll_interval_s=2.0 / scale, poll_max_s=30.0 / scale
        )
        for rid in rids
    ]
    events = await asyncio.gather(*(drive(t) for t in triggers))
    ok = sum(e.get("status") == "success" for e in events)
    return submit_s, {"event": "success" if ok == len(events) else "partial", "completed": ok}


async def _measure(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_nanobanana import polling

    scale = float(args["time_scale"])
    polling._BUDGETS[asyncio.get_running_loop()] = polling.PollBudget(150.0 * scale, 256)
    mode = str(args["mode"])
    if mode == "batch":
        await asyncio.to_thread(_write_checkpoint, int(args["n"]), str(args["png_url"]), str(args["prefix"]))
    else:
        from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook  # noqa: F401 - import cost up front
    before = await asyncio.to_thread(emulator_counters, str(args["emulator_url"]))
    base_rss, base_cpu = rss_mb(), cpu_s()
    sampler = LoopLagSampler()
    sampler.start()
    t0 = time.monotonic()
    runner = _batch if mode == "batch" else _individual
    submit_s, outcome = await asyncio.wait_for(runner(args, scale), timeout=float(args["wall_limit_s"]))
    wall = time.monotonic() - t0
    cpu = cpu_s() - base_cpu
    await sampler.stop()
    after = await asyncio.to_thread(emulator_counters, str(args["emulator_url"]))
    n = int(args["n"])

    def delta(key: str) -> int:
        return int(after[key] - before[key])

    return {
        "mode": mode,
        "n": n,
        **outcome,
        "wall_s": round(wall, 1),
        "submit_phase_s": round(submit_s, 1),
        "wall_s_emulated": round(wall * scale, 0),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_item": round(cpu * 1000 / n, 2),
        "rss_growth_mb": round(max(sampler.rss_peak_mb, rss_mb()) - base_rss, 1),
        "lag_p99_ms": round(percentile([lag for _, lag in sampler.samples], 99) * 1000, 1),
        "submits": delta("submits"),
        "status_polls_per_item": round(delta("status_polls") / n, 2),
        "result_polls_per_item": round(delta("result_polls") / n, 2),
        "peak_running": after.get("peak_running"),
    }


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_measure(args))
