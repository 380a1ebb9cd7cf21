"""Polls per job and detection latency: fixed 5 s, today's backoff, and queue-position-aware polling.

Jobs: durations log-uniform 10 s to 10 min (seeded); each waits in one FIFO queue that drains at
``RATE`` positions per second (``SLOTS`` running slots, runs of 5-15 s, 10 s on average), then runs.
``queue_position`` counts the jobs ahead, as the emulator reports it (a 1-based variant is simulated
too, because RunComfy does not document which it is).

1. **Simulation**: every job's schedule on one virtual clock, with the package's own ``JobWatch``
   (``on_status`` / ``next_delay``); all queue-aware jobs share one ``QueueDrain``, as the jobs of
   one triggerer do.
2. **Emulator, one event loop**: the first jobs of the same list on three accelerated emulators (one
   per policy, so their counters stay apart), queued behind filler jobs so that each waits about its
   simulated time; real triggers on one loop, every interval divided by ``time_scale``. Detection
   latency = trigger event time - the emulator's ``finished_at``, in emulated seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import os
import random
import statistics
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

from benchmarks.common import EMULATOR_TOKEN, emulator_counters, emulator_put_config

MIN_S, MAX_S, RUN_S, FIXED_S = 10.0, 600.0, 10.0, 5.0
#: The queue: this many running slots, runs of RUN_LO_S..RUN_HI_S (10 s on average): 1 position/s.
SLOTS, RUN_LO_S, RUN_HI_S = 10, 5.0, 15.0
RATE = SLOTS / ((RUN_LO_S + RUN_HI_S) / 2)
#: Real seconds the emulators hold their queues while it is submitted.
HOLD_S = 25.0

FIXED = "fixed 5 s"
TODAY = "PollPolicy 2 s x1.5 cap 30 s, queue-blind (0.1.x)"
AWARE = "queue-aware (package default)"
AWARE_1 = "queue-aware, positions counted from 1"
CONN_OF = {FIXED: "runcomfy_fixed", TODAY: "runcomfy_today", AWARE: "runcomfy_default"}


def durations(n: int, seed: int) -> list[float]:
    """Seeded log-uniform job durations: most edits are short, a long tail waits in a queue."""
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(MIN_S), math.log(MAX_S))) for _ in range(n)]


def fixed_polls(duration: float, interval: float = FIXED_S) -> int:
    return math.floor(duration / interval) + 1


def _status(state: str, position: int | None = None) -> Any:
    from airflow_provider_nanobanana.models import StatusResponse

    return StatusResponse.model_validate({"request_id": "sim", "status": state, "queue_position": position})


def queue_jobs(n: int, seed: int) -> list[tuple[float, float]]:
    """(queue wait, run time) per job: the wait is the duration's part beyond ``RUN_S``, the run a
    seeded draw from ``RUN_LO_S..RUN_HI_S`` (as the emulator draws it)."""
    rng = random.Random(seed + 1)
    return [(max(0.0, d - RUN_S), rng.uniform(RUN_LO_S, RUN_HI_S)) for d in durations(n, seed)]


def simulate_policy(
    jobs: list[tuple[float, float]], *, aware: bool, base: int = 0, seed: int = 0
) -> list[tuple[int, float]]:
    """(status polls, detection latency) per job on one virtual clock; all jobs submitted at t=0.

    A job is queued for its wait (``floor(wait_left * RATE)`` jobs ahead, plus ``base``), then in
    progress for its run; its first poll is at submit.
    """
    from airflow_provider_nanobanana.polling import JobWatch
    from airflow_provider_nanobanana.queue_drain import QueueDrain

    random.seed(seed)  # PollPolicy's jitter
    drain = QueueDrain() if aware else None
    top = base + int(MAX_S * RATE) + 2
    queued = [_status("in_queue", p) for p in range(base, top)]
    running, done = _status("in_progress"), _status("completed")
    watches = [JobWatch(f"j{i}", 1e12, drain=drain, started_epoch_s=0.0) for i in range(len(jobs))]
    heap = [(0.0, i) for i in range(len(jobs))]
    out: list[tuple[int, float]] = [(0, 0.0)] * len(jobs)
    while heap:
        now, i = heapq.heappop(heap)
        (wait, run), watch = jobs[i], watches[i]
        if (more := watch.wake(now)) > 0:  # re-planned without a request
            heapq.heappush(heap, (now + more, i))
            continue
        if now < wait:
            status = queued[math.floor((wait - now) * RATE)]
        else:
            status = running if now < wait + run else done
        if watch.on_status(status, now) is not None:
            out[i] = (watch.polls, now - wait - run)
            continue
        heapq.heappush(heap, (now + watch.next_delay(now), i))
    return out


def _summary(name: str, ran_on: str, polls: list[float], latency: list[float]) -> dict[str, Any]:
    p, lat = sorted(polls), sorted(latency)

    def q(values: list[float], share: float) -> float:
        return float(values[min(len(values) - 1, int(len(values) * share))])

    return {
        "policy": name,
        "ran_on": ran_on,
        "jobs": len(p),
        "mean": round(statistics.fmean(p), 2),
        "p50": q(p, 0.5),
        "p95": q(p, 0.95),
        "lat_mean": round(statistics.fmean(lat), 2),
        "lat_p50": round(q(lat, 0.5), 2),
        "lat_p95": round(q(lat, 0.95), 2),
        "lat_p99": round(q(lat, 0.99), 2),
        "lat_max": round(lat[-1], 2),
    }


def simulate(n: int, seed: int) -> dict[str, Any]:
    jobs = queue_jobs(n, seed)
    ends = [wait + run for wait, run in jobs]
    runs: dict[str, list[tuple[int, float]]] = {
        FIXED: [(fixed_polls(end), math.ceil(end / FIXED_S) * FIXED_S - end) for end in ends],
        TODAY: simulate_policy(jobs, aware=False, seed=seed),
        AWARE: simulate_policy(jobs, aware=True, seed=seed),
        AWARE_1: simulate_policy(jobs, aware=True, base=1, seed=seed),
    }
    rows = [
        _summary(name, "simulation", [float(p) for p, _ in r], [lat for _, lat in r])
        for name, r in runs.items()
    ]
    return {"jobs": n, "seed": seed, "mean_duration_s": round(sum(ends) / n, 1), "rate": RATE, "rows": rows}


# -- the emulator run (child process) ---------------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", f"Bearer {EMULATOR_TOKEN}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def _submit_raw(base_url: str, png_url: str) -> str:
    body = {"prompt": "benchmark edit", "image_urls": [png_url]}
    return str(_post(f"{base_url}/v1/models/google/nano-banana-2/edit", body)["request_id"])


def _finished_at(base_url: str, request_id: str) -> float:
    req = urllib.request.Request(f"{base_url}/v1/requests/{request_id}/result")
    req.add_header("Authorization", f"Bearer {EMULATOR_TOKEN}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return datetime.fromisoformat(json.loads(resp.read())["finished_at"]).timestamp()


def queue_layout(waits: list[float]) -> list[int | None]:
    """The FIFO to submit: job ``i`` at the index ``round(wait * RATE)`` (the next free one on a
    collision), filler jobs (None) everywhere else."""
    taken: dict[int, int] = {}
    for i in sorted(range(len(waits)), key=lambda i: waits[i]):
        at = round(waits[i] * RATE)
        while at in taken:
            at += 1
        taken[at] = i
    return [taken.get(k) for k in range(max(taken) + 1)]


def _blind_trigger() -> type:
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

    class QueueBlindTrigger(RunComfyJobTrigger):
        """Today's (0.1.x) schedule: backoff alone, ``queue_position`` ignored."""

        async def _wait(self, watch: Any) -> Any:
            watch.drain = None
            return await super()._wait(watch)

    return QueueBlindTrigger


async def _real(args: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_nanobanana import polling, queue_drain
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
    from benchmarks.naive import FixedIntervalTrigger

    scale = float(args["time_scale"])
    # The poll budget is a real-time rate; on a clock `scale` times faster it scales too.
    polling._BUDGETS[asyncio.get_running_loop()] = polling.PollBudget(400.0 * scale, 256)
    urls: dict[str, str] = args["urls"]
    png = str(args["png_url"])
    jobs = queue_jobs(int(args["jobs"]), int(args["seed"]))
    layout = queue_layout([wait for wait, _ in jobs])
    ids: dict[str, list[str]] = {name: [""] * len(jobs) for name in urls}
    # The whole queue is submitted first, index by index to every emulator, and nothing may start
    # until HOLD_S after the first submit (``queue_s``); the triggers start watching at that moment.
    for url in urls.values():
        await asyncio.to_thread(emulator_put_config, url, {"queue_s": HOLD_S * scale})
    starts_at = time.time() + HOLD_S
    fillers: dict[str, str] = {}

    def submit_queue(name: str, url: str) -> None:
        import httpx

        body = {"prompt": "benchmark edit", "image_urls": [png]}
        headers = {"Authorization": f"Bearer {EMULATOR_TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            for slot in layout:
                answer = client.post("/v1/models/google/nano-banana-2/edit", json=body)
                rid = str(answer.raise_for_status().json()["request_id"])
                if slot is not None:
                    ids[name][slot] = rid
                else:
                    fillers.setdefault(CONN_OF[name], rid)

    await asyncio.gather(*(asyncio.to_thread(submit_queue, name, url) for name, url in urls.items()))
    if time.time() > starts_at - 1:
        raise RuntimeError(f"submitting {len(layout)} jobs took longer than the {HOLD_S} s hold")
    deadline = time.time() + 4 * MAX_S / scale + 60
    blind = _blind_trigger()
    makers: dict[str, Callable[[str], Any]] = {
        FIXED: lambda rid: FixedIntervalTrigger(
            request_id=rid, deadline_epoch_s=deadline, interval_s=FIXED_S / scale, conn_id="runcomfy_fixed"
        ),
        TODAY: lambda rid: blind(
            request_id=rid,
            deadline_epoch_s=deadline,
            runcomfy_conn_id="runcomfy_today",
            poll_interval_s=2.0 / scale,
            poll_max_s=30.0 / scale,
        ),
        AWARE: lambda rid: RunComfyJobTrigger(
            request_id=rid, deadline_epoch_s=deadline, poll_interval_s=2.0 / scale, poll_max_s=30.0 / scale
        ),
    }
    # The queue model's own time constants are real-time seconds too.
    queue_drain._DRAINS[asyncio.get_running_loop()] = {
        "runcomfy_default": queue_drain.QueueDrain(
            max_wait_s=300.0 / scale, half_life_s=120.0 / scale, min_evidence_s=4.0 / scale
        )
    }
    seen: dict[str, list[float]] = {name: [0.0] * len(jobs) for name in urls}

    async def watch(name: str, i: int) -> dict[str, Any]:
        async for event in makers[name](ids[name][i]).run():
            seen[name][i] = time.time()
            return dict(event.payload)
        return {"status": "no-event"}

    # Warm up (imports, connection lookups, both clients) with one status GET per emulator, not counted.
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook

    for conn_id in ("runcomfy_default", "runcomfy_fixed", "runcomfy_today"):
        await RunComfyHook(conn_id).aget_status(fillers[conn_id])
    await asyncio.sleep(starts_at - time.time())  # the queue starts moving; every trigger starts watching
    tasks = [asyncio.create_task(watch(name, i)) for name in urls for i in range(len(jobs))]
    events = await asyncio.wait_for(asyncio.gather(*tasks), timeout=4 * MAX_S / scale + 120)
    out: dict[str, Any] = {"jobs": len(jobs), "queue_length": len(layout), "time_scale": scale}
    out["errors"] = sum(e.get("status") != "success" for e in events)
    rows = []
    for name, url in urls.items():
        counters = await asyncio.to_thread(emulator_counters, url)
        finished = [await asyncio.to_thread(_finished_at, url, rid) for rid in ids[name]]
        latency = [(seen[name][i] - finished[i]) * scale for i in range(len(jobs))]
        per_job = (counters["status_polls"] - 1) / len(jobs)  # less the warm-up GET
        row = _summary(name, "emulator, one event loop", [per_job], latency)
        row["jobs"] = len(jobs)
        row["calls"] = round((counters["status_polls"] + counters["result_polls"] - len(jobs)) / len(jobs), 2)
        row["p50"] = row["p95"] = "-"  # only the total is counted per emulator
        rows.append(row)
    out["rows"] = rows
    return out


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    conn = json.loads(os.environ["AIRFLOW_CONN_RUNCOMFY_DEFAULT"])
    for name, env in ((FIXED, "RUNCOMFY_FIXED"), (TODAY, "RUNCOMFY_TODAY")):
        os.environ[f"AIRFLOW_CONN_{env}"] = json.dumps({**conn, "host": args["urls"][name]})
    return asyncio.run(_real(args))


def bench(real_jobs: int, time_scale: float, seed: int) -> dict[str, Any]:
    """Simulation, then the emulator run (its own child process), for ``benchmarks.run``.

    ``time_scale`` is capped at 5: above that, a CPU hiccup of the shared machine is many emulated
    seconds of detection latency."""
    time_scale = min(time_scale, 5.0)
    from benchmarks.child import run_child
    from benchmarks.common import servers, start_emulator, start_png_server

    simulated = simulate(10_000, seed)
    kw = {
        "queue_s": 0,
        "run_s": RUN_LO_S,
        "run_s_max": RUN_HI_S,
        "max_running": SLOTS,
        "time_scale": time_scale,
        "seed": seed,
    }
    emulators = {name: start_emulator(**kw) for name in (FIXED, TODAY, AWARE)}
    png = start_png_server()
    with servers(*emulators.values(), png):
        args = {
            "emulator_url": emulators[AWARE].url,
            "urls": {name: emu.url for name, emu in emulators.items()},
            "png_url": png.url,
            "time_scale": time_scale,
            "jobs": real_jobs,
            "seed": seed,
        }
        real = run_child("polls", args, timeout_s=1200)
    if "error" not in real:
        real["same_jobs_simulated"] = same_jobs_simulated(real_jobs, seed)
    return {"simulated": simulated, "real": real, "time_scale": time_scale, "slots": SLOTS, "rate": RATE}


def same_jobs_simulated(n: int, seed: int) -> dict[str, float]:
    """The emulator's jobs (waits as laid out in its queue) through the simulation: what the emulator
    row would be without its own effects (discrete starts, the machine's timing noise)."""
    jobs = queue_jobs(n, seed)
    layout = queue_layout([wait for wait, _ in jobs])
    laid = [(layout.index(i) / RATE, run) for i, (_, run) in enumerate(jobs)]
    fixed = statistics.fmean(fixed_polls(wait + run) for wait, run in laid)
    aware = statistics.fmean(polls for polls, _ in simulate_policy(laid, aware=True, seed=seed))
    return {"fixed": round(fixed, 2), "aware": round(aware, 2), "ratio": round(fixed / aware, 2)}
