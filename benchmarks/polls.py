"""Polls per job: adaptive backoff (PollPolicy) vs a fixed 5 s interval, same job durations.

The comparison is first computed by simulating both schedules against seeded job durations
(log-uniform 10 s to 10 min, of which the last ``RUN_S`` are ``in_progress``), with the package's
own ``PollPolicy.delay`` and the same step rule as ``JobWatch.on_status``. A real run then replays
the first jobs of the same list on two accelerated emulators (one per policy, so their counters
stay apart), with every poll interval divided by the same ``time_scale``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from benchmarks.common import EMULATOR_TOKEN, emulator_counters, emulator_put_config

MIN_S, MAX_S, RUN_S, FIXED_S = 10.0, 600.0, 10.0, 5.0


def durations(n: int, seed: int) -> list[float]:
    """Seeded log-uniform job durations: most edits are short, a long tail waits in a queue."""
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(MIN_S), math.log(MAX_S))) for _ in range(n)]


def adaptive_polls(duration: float, rng: random.Random, initial: float = 2.0, cap: float = 30.0) -> int:
    """Status polls the trigger makes: first at t=0, then ``PollPolicy.delay(step)``; the step
    goes back to 1 when the job leaves the queue (as ``JobWatch.on_status`` does)."""
    from airflow_provider_nanobanana.polling import PollPolicy

    policy = PollPolicy(initial_s=initial, max_s=cap)
    queued_until = max(0.0, duration - RUN_S)
    t, step, polls, was_queued = 0.0, 0, 0, True
    while True:
        polls += 1
        if t >= duration:
            return polls
        queued = t < queued_until
        step = 1 if (was_queued and not queued) else step + 1
        was_queued = queued
        t += policy.delay(step, rng=rng)


def fixed_polls(duration: float, interval: float = FIXED_S) -> int:
    return math.floor(duration / interval) + 1


@dataclass(frozen=True)
class SimRow:
    policy: str
    mean: float
    p50: float
    p95: float


def simulate(n: int, seed: int) -> dict[str, Any]:
    jobs = durations(n, seed)
    rng = random.Random(seed + 1)
    policies = {
        "fixed 5 s": [fixed_polls(d) for d in jobs],
        "PollPolicy 2 s x1.5 cap 30 s (package default)": [adaptive_polls(d, rng) for d in jobs],
        "PollPolicy cap 60 s (what-if)": [adaptive_polls(d, rng, cap=60.0) for d in jobs],
        "PollPolicy cap 120 s (what-if)": [adaptive_polls(d, rng, cap=120.0) for d in jobs],
    }
    rows = []
    for name, counts in policies.items():
        ordered = sorted(counts)
        rows.append(
            SimRow(
                name,
                sum(counts) / n,
                float(ordered[n // 2]),
                float(ordered[int(n * 0.95)]),
            ).__dict__
        )
    return {"jobs": n, "seed": seed, "mean_duration_s": round(sum(jobs) / n, 1), "rows": rows}


# -- the real run (child process) -------------------------------------------------------------------


def _submit_raw(base_url: str, png_url: str) -> str:
    body = json.dumps({"prompt": "benchmark edit", "image_urls": [png_url]}).encode()
    req = urllib.request.Request(f"{base_url}/v1/models/google/nano-banana-2/edit", data=body, method="POST")
    req.add_header("Authorization", f"Bearer {EMULATOR_TOKEN}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["request_id"])


async def _real(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_nanobanana import polling
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
    from benchmarks.density import drive
    from benchmarks.naive import FixedIntervalTrigger

    scale = float(args["time_scale"])
    # The 150 polls/s budget is a real-time rate; on a clock `scale` times faster it scales too.
    polling._BUDGETS[asyncio.get_running_loop()] = polling.PollBudget(150.0 * scale, 256)
    adaptive_url, fixed_url, png = str(args["emulator_url"]), str(args["fixed_url"]), str(args["png_url"])
    random.seed(int(args["seed"]))
    # Ascending queue times: the emulator starts jobs FIFO, so a long queue must not block short ones.
    jobs = sorted(durations(int(args["jobs"]), int(args["seed"])))
    deadline = time.time() + 2 * MAX_S / scale + 60
    tasks = []
    for duration in jobs:
        for url in (adaptive_url, fixed_url):
            await asyncio.to_thread(emulator_put_config, url, {"queue_s": max(0.0, duration - RUN_S)})
        rid_a = await asyncio.to_thread(_submit_raw, adaptive_url, png)
        rid_f = await asyncio.to_thread(_submit_raw, fixed_url, png)
        adaptive = RunComfyJobTrigger(
            request_id=rid_a, deadline_epoch_s=deadline, poll_interval_s=2.0 / scale, poll_max_s=30.0 / scale
        )
        fixed = FixedIntervalTrigger(
            request_id=rid_f, deadline_epoch_s=deadline, interval_s=FIXED_S / scale, conn_id="runcomfy_fixed"
        )
        tasks += [asyncio.create_task(drive(adaptive)), asyncio.create_task(drive(fixed))]
    events = await asyncio.wait_for(asyncio.gather(*tasks), timeout=4 * MAX_S / scale + 120)
    n = len(jobs)
    out: dict[str, Any] = {"jobs": n, "errors": sum(e.get("status") != "success" for e in events)}
    for name, url in (("adaptive", adaptive_url), ("fixed", fixed_url)):
        counters = await asyncio.to_thread(emulator_counters, url)
        out[f"{name}_status_polls_per_job"] = round(counters["status_polls"] / n, 2)
        out[f"{name}_calls_per_job"] = round((counters["status_polls"] + counters["result_polls"]) / n, 2)
    sim_rng = random.Random(int(args["seed"]) + 1)
    out["sim_adaptive_polls_per_job"] = round(sum(adaptive_polls(d, sim_rng) for d in jobs) / n, 2)
    out["sim_fixed_polls_per_job"] = round(sum(fixed_polls(d) for d in jobs) / n, 2)
    return out


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    conn = json.loads(os.environ["AIRFLOW_CONN_RUNCOMFY_DEFAULT"])
    os.environ["AIRFLOW_CONN_RUNCOMFY_FIXED"] = json.dumps({**conn, "host": args["fixed_url"]})
    return asyncio.run(_real(args))
