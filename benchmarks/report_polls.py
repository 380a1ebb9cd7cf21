"""The poll sections of ``docs/benchmarks.md``: polls per job and detection latency, and poll cost."""

from __future__ import annotations

from typing import Any

from benchmarks.polls import AWARE, FIXED, TODAY
from benchmarks.run_table import table

SIMULATION, EMULATOR = "simulation", "emulator, one event loop"
TARGET_POLL_RATIO = 5.0
LATENCIES = ("lat_mean", "lat_p50", "lat_p95", "lat_p99")


def _rows(res: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sim = res["simulated"].get("rows", [])
    real = res["real"].get("rows", []) if "error" not in res["real"] else []
    return sim, real


def _of(rows: list[dict[str, Any]], policy: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["policy"] == policy), None)


def _ratio(rows: list[dict[str, Any]]) -> float | None:
    fixed, aware = _of(rows, FIXED), _of(rows, AWARE)
    if not fixed or not aware or "lat_mean" not in aware:
        return None
    return float(fixed["mean"]) / max(float(aware["mean"]), 1e-9)


def _latency_not_worse(rows: list[dict[str, Any]]) -> tuple[bool, str] | None:
    today, aware = _of(rows, TODAY), _of(rows, AWARE)
    if not today or not aware or "lat_mean" not in aware:
        return None
    worse = [k for k in LATENCIES if aware[k] > today[k]]
    text = ", ".join(f"{k.removeprefix('lat_')} {aware[k]} vs {today[k]} s" for k in LATENCIES)
    return not worse, text


def target_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary's rows: the 5x target and 'latency not worse than today', per place it ran."""
    out: list[dict[str, Any]] = []
    for ran_on, rows in zip((SIMULATION, EMULATOR), _rows(res), strict=True):
        ratio = _ratio(rows)
        if ratio is None:
            continue
        missed = "" if ratio >= TARGET_POLL_RATIO else f" (missed by {TARGET_POLL_RATIO - ratio:.2f}x)"
        out.append(
            {
                "target": f"{ran_on}: queue-aware polling >= {TARGET_POLL_RATIO:g}x fewer status polls/job "
                "than fixed 5 s",
                "measured": f"{ratio:.2f}x{missed}",
                "verdict": "met" if ratio >= TARGET_POLL_RATIO else "**missed**",
            }
        )
        latency = _latency_not_worse(rows)
        if latency is not None:
            ok, text = latency
            out.append(
                {
                    "target": f"{ran_on}: detection latency not worse than today's backoff (mean, p50, p95, p99)",
                    "measured": text,
                    "verdict": "met" if ok else "**missed**",
                }
            )
    return out


def polls_section(res: dict[str, Any], command: str) -> list[str]:
    sim, real = _rows(res)
    if sim and "lat_mean" not in sim[0]:
        return ["## 3. Polls per job", "", "(results of an older format: re-run `--only polls`)", ""]
    fixed_sim, fixed_real = _of(sim, FIXED), _of(real, FIXED)
    rows = []
    for fixed, group in ((fixed_sim, sim), (fixed_real, real)):
        for r in group:
            ratio = round(fixed["mean"] / max(r["mean"], 1e-9), 2) if fixed else None
            rows.append({**r, "ratio": ratio})
    cols = [
        ("policy", "policy"),
        ("ran_on", "ran on"),
        ("jobs", "jobs"),
        ("mean", "status polls/job (mean)"),
        ("p50", "p50"),
        ("p95", "p95"),
        ("ratio", "fixed 5 s / this"),
        ("lat_mean", "detection latency mean s"),
        ("lat_p50", "p50 s"),
        ("lat_p95", "p95 s"),
        ("lat_p99", "p99 s"),
        ("lat_max", "max s"),
    ]
    s, r = res["simulated"], res["real"]
    verdicts = [f"- {row['target']}: {row['measured']} — {row['verdict']}" for row in target_rows(res)]
    same, real_ratio = r.get("same_jobs_simulated"), _ratio(real)
    if same and fixed_sim and real_ratio is not None:
        verdicts.append(
            f"- Why the emulator row differs from the simulation row: mostly its sample. Its {r['jobs']} jobs "
            f"(the first of the list, waits as laid out in its queue) through the simulation give "
            f"{same['ratio']}x (fixed 5 s {same['fixed']} polls/job against {fixed_sim['mean']} for all "
            f"{s['jobs']:,}: shorter jobs, fewer polls to save); {real_ratio:.2f}x was measured. The rest is "
            "the emulator's bursty first cycle of starts and the timing noise of a shared machine on an "
            "accelerated clock."
        )
    return [
        "## 3. Polls per job and detection latency: fixed 5 s, today's backoff, queue-aware",
        "",
        f"`{command}`",
        "",
        f"Jobs: durations log-uniform 10 s - 10 min (seed {s['seed']}); each waits in one FIFO queue that "
        f"drains at {s.get('rate', 2):g} positions/s ({res.get('slots', 20)} running slots, runs drawn from "
        "5-15 s), then runs. `queue_position` = jobs ahead (the emulator's count; a row with 1-based "
        "positions too, since RunComfy does not document which). Detection latency = when the poll that "
        "saw the job finished was made - when it finished. 'Today' is 0.1.x's `PollPolicy` (2 s x1.5, "
        "cap 30 s) ignoring the queue position; 'queue-aware' is the package default (`QueueDrain`, "
        "`[nanobanana] poll_queue_max_s` = 300).",
        "",
        f"- **{SIMULATION}**: {s['jobs']:,} jobs (mean duration {s['mean_duration_s']} s) on one virtual "
        "clock, the package's own `JobWatch.on_status`/`next_delay`, one `QueueDrain` shared by all jobs as "
        "in one triggerer.",
        f"- **{EMULATOR}**: the first {r.get('jobs', '?')} jobs of the same list on three emulators (one per "
        f"policy, counters apart) with `time_scale={r.get('time_scale', res.get('time_scale'))}`, each job "
        f"queued behind filler jobs ({r.get('queue_length', '?')} in the queue) so that it waits about its "
        "simulated time; real triggers on one event loop, every interval divided by the time scale, "
        "latency from the emulator's `finished_at` in emulated seconds. Status polls are counted at the "
        f"emulator (per job, so no percentiles). errors: {r.get('errors', r.get('error'))}.",
        "",
        table(rows, cols),
        "",
        *verdicts,
        "",
        "Why fewer: a queued job far from the head sleeps 90% of its predicted wait (positions ahead / "
        "the drain rate the loop has seen, at most 300 s, and no further ahead than twice as long as the "
        "loop has watched the queue move). When that sleep ends and other jobs' answers have taught the "
        "model something since, the job re-plans from its last position carried forward, without a "
        "request (`JobWatch.wake`), so a 10-minute queue costs 2-3 polls instead of one per 30 s; near "
        "the head, or running, the next look is at 95% of the expected run time. "
        "Why latency does not grow: today's backoff has reached 30 s by the time a long-queued job runs, "
        "so its end is seen up to 30 s late; the queue-aware schedule is close to the job when it ends. "
        "In the simulation fixed 5 s polling sees ends sooner still (2.5 s on average), at several times the polls; "
        "on the emulator the machine's timing noise is of the size of these differences (fixed 5 s, at "
        "most 5 s late on an idle machine, measured up to 15 s). "
        "Before the model has a rate, a queued job whose neighbours are already teaching it waits for "
        "that rate (at most 30 s after its own last answer) instead of asking again. "
        "Where the emulator's polls go: the first at submit; about one while the queue is learnt (its 10 "
        "slots start together and none frees for 5 s or more); one or two on the approach; and runs of "
        "5-15 s make a look aimed at 95% of the mean run early for the longer half.",
        "",
        *_repeat_lines(res, cols),
    ]


def _repeat_lines(res: dict[str, Any], cols: list[tuple[str, str]]) -> list[str]:
    """The emulator part of a repeat run, shown beside the first rather than instead of it."""
    repeat = res.get("repeat")
    if not repeat:
        return []
    rows = [row for row in repeat["real"]["rows"] if row.get("ran_on") == EMULATOR]
    ratio, latency = _ratio(rows), _latency_not_worse(rows)
    return [
        f"**The emulator part again** (`{repeat['command']}`, same machine, same day): it varies from run to "
        "run. Here the queue-aware policy polled "
        + (f"{ratio:.2f}x less than fixed 5 s" if ratio is not None else "?")
        + (
            f"; latency {'not worse' if latency[0] else 'worse'} than today's backoff ({latency[1]})"
            if latency
            else ""
        )
        + ". An earlier version of the schedule (6.58x, but p95 84 s and p99 129 s of latency on this "
        "benchmark) let a rate learnt in the emulator's first, stalled seconds plan deep jobs' sleeps of up "
        "to 300 s, and they woke long after their end: every job answering in those seconds was counted, "
        "so the stall outweighed the minutes after. Now every answer is stitched into one curve of how "
        "far the queue's head has moved, so each second counts once and a long answer spanning the stall "
        "does not carry it into later seconds; and no sleep reaches further ahead than twice the queue "
        "history watched (`tests/unit/test_queue_drain.py`, `tests/unit/test_poll_schedule.py`).",
        "",
        table(rows, cols),
        "",
    ]


def transport_section(res: dict[str, Any], command: str) -> list[str]:
    cols = [
        ("client", "client"),
        ("concurrency", "concurrency"),
        ("requests", "requests"),
        ("req_per_s", "req/s"),
        ("cpu_ms_per_req", "client CPU ms/req"),
        ("emulator_cpu_pct", "emulator CPU %"),
    ]
    rows = res.get("rows", [])
    hook = {r["client"]: r["cpu_ms_per_req"] for r in rows if r["client"].startswith("RunComfyHook")}
    per_poll = ", ".join(f"{name}: {ms} ms" for name, ms in hook.items())
    return [
        "## Status-poll cost: httpx vs httpx-aiohttp vs aiohttp, and the provider's whole poll",
        "",
        f"`{command}`",
        "",
        "Closed loop, fixed concurrency, GET of one job's status on the emulator (own process). CPU ms "
        "per request is this process's CPU time / requests, the cost a triggerer pays per poll (req/s is "
        "bounded by whatever else the machine was running). The last two rows are the provider's own "
        "poll (`RunComfyHook.aget_status`: retry wrapper, bounded body reader, model parsing) through "
        "each of its transports, in the same run.",
        "",
        table(rows, cols) if rows else f"error: {res.get('error')}",
        "",
        "Decision: status and result GETs on an event loop go through `httpx-aiohttp`'s transport "
        f"({per_poll}); submit and cancel POSTs stay on httpx's own transport. The aiohttp transport maps "
        "a connection dropped after the request was sent to `httpx.ConnectTimeout`, which the hook reads "
        "as 'never sent': harmless for an idempotent GET (it is asked again), a possible second paid job "
        "for a submit. The split is structural: the loop keeps one client per kind, the hook picks by "
        "method, and the aiohttp client refuses any method but GET before connecting "
        "(`tests/unit/hooks/test_per_loop.py`). The poll budget's default follows: 400 polls/s costs "
        "about the 0.4 of a core that 0.1.x's 150/s cost through httpx's transport "
        "([trigger](trigger.md#poll-budget)).",
        "",
    ]
