"""``python -m benchmarks.run [--quick] [--only NAME ...] [--skip NAME ...] [--out PATH] [--reuse JSON] [--render-from JSON]``: run, print, write the doc.

Every row is measured in the same run as its baseline, against servers started here on loopback
(emulator, input-image server, moto), each in its own process. Results go to stdout and to
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import defer_race, event_writes, loop_blocks, polls
from benchmarks.archive import output_url
from benchmarks.child import run_child
from benchmarks.common import (
    code_version,
    machine_info,
    servers,
    start_emulator,
    start_moto,
    start_png_server,
)
from benchmarks.report import render

SEED = 9
MB = 2**20
AIRFLOW_TRIGGERER_CAPACITY = 1000  # [triggerer] capacity default
DEFAULT_OUT = "docs/benchmarks.md"


def _save(saved: dict[str, Any], path: Path) -> None:
    """Whole or not at all: the file is committed, and a run killed mid-write must not truncate it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(saved, default=str))
    partial.replace(path)


def results_path(out: str) -> Path:
    """Where a run saves its raw results: beside the page it writes (``docs/benchmarks.json``, committed,
    so a fresh checkout can refresh one section with ``--only NAME --reuse docs/benchmarks.json``)."""
    return Path(out).with_suffix(".json")


@dataclass(frozen=True)
class Plan:
    """What one mode measures; ``--quick`` shrinks every N and duration."""

    density_ns: tuple[int, ...]
    naive_ns: tuple[int, ...]
    queue_s: float
    run_s: float
    naive_wall_limit_s: float
    worker_jobs: int
    poll_real_jobs: int
    poll_scale: float
    archive_mb: tuple[int, ...]
    batch_n: int
    transport_requests: int
    triggerer_ns: tuple[int, ...] = (1000, 5000, 10000)
    triggerer_budget_s: float = 40 * 60.0


FULL = Plan((100, 1000, 5000, 10000), (100, 1000), 30.0, 10.0, 150.0, 3, 100, 20.0, (1, 10, 50), 1000, 3000)
QUICK = Plan((100, 1000), (100,), 10.0, 5.0, 60.0, 1, 20, 40.0, (1, 10), 200, 1000, (100,), 10 * 60.0)


# -- the benchmarks ---------------------------------------------------------------------------------


def bench_density(plan: Plan) -> dict[str, Any]:
    emu = start_emulator(queue_s=plan.queue_s, run_s=plan.run_s, max_running=1_000_000, seed=SEED)
    png = start_png_server()
    rows = []
    with servers(emu, png):
        runs = [("shared", n) for n in plan.density_ns] + [("naive", n) for n in plan.naive_ns]
        for impl, n in runs:
            limit = plan.naive_wall_limit_s if impl == "naive" else 900.0
            args = {
                "emulator_url": emu.url,
                "emulator_pid": emu.proc.pid,
                "png_url": png.url,
                "n": n,
                "impl": impl,
                "poll_interval_s": 2.0,
                "poll_max_s": 30.0,
                "job_timeout_s": limit + 60,
                "wall_limit_s": limit,
                "rss_guard_mb": 3000.0,
            }
            result = run_child("density", args, timeout_s=limit + 300)
            result.setdefault("impl", impl)
            result.setdefault("n", n)
            result["impl"] = {
                "shared": "RunComfyJobTrigger (shared client + budget)",
                "naive": "naive: new AsyncClient per poll",
            }[impl]
            rows.append(result)
            print(f"  density {impl} N={n}: {result}", flush=True)
    return {"rows": rows, "queue_s": plan.queue_s, "run_s": plan.run_s}


def bench_workers(plan: Plan) -> dict[str, Any]:
    scale = 20.0
    emu = start_emulator(queue_s=60, run_s=10, max_running=1000, time_scale=scale, seed=SEED)
    png = start_png_server()
    with servers(emu, png):
        args = {"emulator_url": emu.url, "png_url": png.url, "time_scale": scale, "jobs": plan.worker_jobs}
        result = run_child("workers", args, timeout_s=600)
    for row in result.get("rows", []):
        # Submit/defer/complete are real work, not waits: they do not stretch with the clock.
        deferred = row["variant"].startswith("deferrable (")
        row["worker_s_realtime"] = row["worker_s"] if deferred else row["worker_s_emulated"]
    result["time_scale"] = scale
    return result


def bench_polls(plan: Plan) -> dict[str, Any]:
    """Simulation and emulator run of fixed 5 s, today's backoff and queue-aware polling (polls.py)."""
    return polls.bench(plan.poll_real_jobs, plan.poll_scale, SEED)


ARCHIVE_REPEATS = 3


def bench_archive(plan: Plan) -> dict[str, Any]:
    """Ours vs download-then-put at each size, alternating, 3 fresh children each; the median is reported."""
    png, moto = start_png_server(), start_moto()
    rows, runs = [], []
    with servers(png, moto):
        for size_mb in plan.archive_mb:
            emu = start_emulator(queue_s=0, run_s=0, max_running=10, output_pad_bytes=size_mb * MB)
            with servers(emu):
                url = output_url(emu.url, png.url)
                by_variant: dict[str, list[dict[str, Any]]] = {"streaming": [], "naive": []}
                for repeat in range(ARCHIVE_REPEATS):
                    order = ("streaming", "naive") if repeat % 2 == 0 else ("naive", "streaming")
                    for variant in order:
                        args = {
                            "emulator_url": emu.url,
                            "moto_url": moto.url,
                            "url": url,
                            "variant": variant,
                            "size_mb": size_mb,
                            "repeat": repeat,
                        }
                        result = run_child("archive", args, timeout_s=600)
                        result.setdefault("size_mb", size_mb)
                        by_variant[variant].append(result)
                        runs.append({**result, "variant": variant})
                        print(f"  archive {variant} {size_mb} MB #{repeat}: {result}", flush=True)
                medians = {v: _median_run(r) for v, r in by_variant.items()}
                ours, naive = medians["streaming"], medians["naive"]
                if "wall_s" in ours and "wall_s" in naive:
                    ours["speed_vs_naive"] = round(naive["wall_s"] / max(ours["wall_s"], 1e-9), 2)
                ours["variant"] = "S3MediaHook.archive_outputs (stream, SHA-256 checksums, pipelined parts)"
                naive["variant"] = "requests.get().content + put_object"
                rows += [ours, naive]
    return {"rows": rows, "runs": runs, "repeats": ARCHIVE_REPEATS, "ran_on": "moto server on loopback"}


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (errors only if every run failed)."""
    ok = sorted((r for r in results if "wall_s" in r), key=lambda r: r["wall_s"])
    return dict(ok[len(ok) // 2]) if ok else dict(results[0])


def bench_reuse(plan: Plan) -> dict[str, Any]:
    """Hash cost of a fingerprint vs one plain GET; a re-run of a batch with ``reuse_outputs``."""
    png, moto = start_png_server(), start_moto()
    emu = start_emulator(queue_s=0, run_s=0, max_running=1_000_000, seed=SEED)
    with servers(png, moto, emu):
        base = {"emulator_url": emu.url, "moto_url": moto.url}
        hashing = run_child("reuse", {**base, "mode": "hash", "sizes_mb": [1, 10]}, timeout_s=600)
        print(f"  reuse hash: {hashing}", flush=True)
        batch = run_child("reuse", {**base, "mode": "batch", "n": plan.batch_n}, timeout_s=1800)
        print(f"  reuse batch: {batch}", flush=True)
    return {"hash": hashing, "batch": batch, "ran_on": "moto server and emulator on loopback"}


def bench_batch(plan: Plan) -> dict[str, Any]:
    scale = 20.0
    png, moto = start_png_server(), start_moto()
    emu = start_emulator(queue_s=60, run_s=10, max_running=1_000_000, time_scale=scale, seed=SEED)
    rows = []
    with servers(png, moto, emu):
        for mode in ("batch", "individual"):
            args = {
                "emulator_url": emu.url,
                "moto_url": moto.url,
                "png_url": png.url,
                "mode": mode,
                "n": plan.batch_n,
                "prefix": f"batch-{int(time.time())}",
                "max_in_flight": 200,
                "time_scale": scale,
                "wall_limit_s": 600,
            }
            result = run_child("batch", args, timeout_s=900)
            result["mode"] = {
                "batch": "RunComfyBatchTrigger (1 trigger, max_in_flight=200)",
                "individual": f"{plan.batch_n} x RunComfyJobTrigger (+ {plan.batch_n} worker submits)",
            }[mode]
            rows.append(result)
            print(f"  batch {mode}: {result}", flush=True)
    return {"rows": rows, "time_scale": scale}


def bench_transport(plan: Plan) -> dict[str, Any]:
    png = start_png_server()
    emu = start_emulator(queue_s=3600, run_s=10, max_running=10)
    with servers(png, emu):
        args = {
            "emulator_url": emu.url,
            "emulator_pid": emu.proc.pid,
            "png_url": png.url,
            "requests": plan.transport_requests,
            "concurrency": 32,
        }
        return run_child("transport", args, timeout_s=600)


def bench_triggerer(plan: Plan) -> dict[str, Any]:
    """N deferred task instances on one real ``airflow triggerer``: ours, peer-style, TimeDelta."""
    from benchmarks.real_triggerer import run_matrix

    png = start_png_server()
    with servers(png):
        return run_matrix(
            plan.triggerer_ns,
            png_url=png.url,
            budget_s=plan.triggerer_budget_s,
            quick=plan is QUICK,
            log=lambda line: print(line, flush=True),
        )


BENCHES: dict[str, Callable[[Plan], dict[str, Any]]] = {
    "transport": bench_transport,
    "polls": bench_polls,
    "workers": bench_workers,
    "archive": bench_archive,
    "reuse": bench_reuse,
    "batch": bench_batch,
    "density": bench_density,
    "triggerer": bench_triggerer,
    # Real Airflow stacks; writes its own docs/benchmarks-defer-race.md (not part of this report).
    "defer_race": lambda plan: defer_race.bench(quick=plan is QUICK),
    # Airflow's own per-event release cost; writes docs/benchmarks-event-writes.md.
    "event_writes": lambda plan: event_writes.measure_and_write(
        n=1_000 if plan is QUICK else 10_000,
        events=500,
        out=event_writes.OUT,
        command="uv run --frozen python -m benchmarks.run (event_writes)",
    ),
    # Real triggerers with every loop step timed; writes docs/benchmarks-loop-blocks.md.
    "loop_blocks": lambda plan: loop_blocks.measure_and_write(
        n=2_000 if plan is QUICK else 10_000,
        out=loop_blocks.OUT,
        command="uv run --frozen python -m benchmarks.run (loop_blocks)",
        quick=plan is QUICK,
    ),
}


def write_report(saved: dict[str, Any], out: Path) -> str:
    """Charts and ``docs/benchmarks.md`` from a run's saved results (see ``--render-from``)."""
    results = saved["results"]
    if "triggerer" in results and "rows" in results["triggerer"]:
        from benchmarks.report_triggerer import write_charts

        results["triggerer"]["charts"] = write_charts(results["triggerer"], out.parent)
    text = render(
        results,
        saved["machine"],
        saved["command"],
        saved["mode"],
        saved["elapsed_s"],
        saved.get("reused"),
        saved.get("reused_from"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, short jobs (< 3 minutes)")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these benchmarks")
    parser.add_argument("--skip", nargs="*", choices=sorted(BENCHES), default=[], help="run all but these")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the report")
    parser.add_argument(
        "--reuse",
        metavar="JSON",
        help="take the benchmarks not run now from an earlier run's JSON, saved beside its page (the doc says which)",
    )
    parser.add_argument(
        "--render-from",
        metavar="JSON",
        help="run nothing: rewrite the report and charts from a run's saved JSON",
    )
    args = parser.parse_args(argv)
    if args.render_from:
        write_report(json.loads(Path(args.render_from).read_text()), Path(args.out))
        print(f"wrote {args.out} from {args.render_from}", file=sys.stderr)
        return 0
    plan = QUICK if args.quick else FULL
    command = "uv run --frozen python -m benchmarks.run " + shlex.join(
        list(argv if argv is not None else sys.argv[1:])
    )
    command = command.strip()
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    earlier_run = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    earlier = earlier_run.get("results", {})
    saved: dict[str, Any] = {
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "results": results,
        "reused": [],
        "reused_from": earlier_run.get("command"),
        "elapsed_s": 0.0,
    }
    to_run = [name for name in BENCHES if not ((args.only and name not in args.only) or name in args.skip)]
    for name in BENCHES:
        if name not in to_run and name in earlier:
            # Each section keeps the command that measured it, however many reuses later.
            results[name] = {"measured_by": earlier_run.get("command"), **earlier[name]}
            saved["reused"].append(name)
    for name in to_run:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            results[name] = {**BENCHES[name](plan), "measured_by": command, "code": code_version()}
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"   {name} took {time.monotonic() - started:.0f}s", flush=True)
        # Saved after every benchmark, reused sections included: an interrupted run keeps what
        # finished, and the file alone can still be --reuse'd or --render-from'd.
        saved["elapsed_s"] = time.monotonic() - t0
        _save(saved, results_path(args.out))
    saved["elapsed_s"] = time.monotonic() - t0
    _save(saved, results_path(args.out))
    text = write_report(saved, Path(args.out))
    print(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
