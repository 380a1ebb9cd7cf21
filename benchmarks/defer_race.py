"""``python -m benchmarks.defer_race [--quick] [--mixes ...] [--configs ...] [--repeats N]``.

What the guards against Airflow's defer-exit race (issue #14, docs/reliability.md) cost, measured on
real Airflow: devstack's LocalStack (API server, scheduler, dag-processor and triggerer as separate
processes, LocalExecutor, SQLite, ``[core] parallelism`` 4) running ``nanobanana_s3_enrichment``
with N mapped edits against the emulator. Three settings of ``[nanobanana]`` are compared, each on a
fresh stack, in the same invocation:

- (a) guards off: ``wait_before_defer_s=0``, ``min_deferral_s=0`` (0.1.0's behaviour: submit, defer);
- (b) the defaults: ``wait_before_defer_s=10``, ``min_deferral_s=15``;
- (c) hold only: ``wait_before_defer_s=0``, ``min_deferral_s=15``.

Per edit it records the tries (REST API ``.../taskInstances/{task}/{map_index}/tries``), the extra
latency (the final try's ``end_date`` minus the job's ``finished_at`` at the emulator), and the
worker-slot seconds (the sum of the LocalExecutor supervisor's ``Workload finished ... duration``
over every worker run of every try: the first run up to ``defer()``, the resumed run, retries; the
time spent deferred is not worker time, and a try's ``duration`` in the API includes it). The
example DAG keeps its ``retries=1`` (``retry_delay`` 30 s), so a try lost to the race shows as a
retry and its cost as latency, as users of that DAG see it.

Results go to stdout and ``docs/benchmarks-defer-race.md`` (and the raw numbers to
``.run/bench-defer-race/results.json``). Every stack is stopped, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from devstack.airflow_api import AirflowClient
from devstack.enrichment import DAG_ID, EDIT_TASK_ID, trigger_enrichment
from devstack.seed import seed_inputs
from devstack.services import EMULATOR_TOKEN, REPO_ROOT, RUN_ROOT, LocalStack
from devstack.tries import FAILED_TRY_STATES, deferral_timings, scan_scheduler_log

REQUEST_ID_XCOM_KEY = "runcomfy_request_id"  # airflow_provider_nanobanana.links, without importing Airflow
SEED = 14
BUCKET = "nanobanana-bench"
OUT = Path("docs/benchmarks-defer-race.md")
RAW = RUN_ROOT / "bench-defer-race" / "results.json"
RUN_TIMEOUT_S = 900.0
_WORKLOAD_FINISHED = re.compile(
    r"Workload finished .*duration=(?P<duration>[\d.]+).*workload_id=(?P<ti_id>[0-9a-f-]+)"
)
_MISMATCH = re.compile(r"state attribute is (?P<state>\w+)")
_TI_REPR = re.compile(
    r"<TaskInstance: [^ .]+\.(?P<task_id>\S+) (?P<run_id>\S+) map_index=(?P<map_index>\d+) \[\w+\] "
    r"ti_id=(?P<ti_id>[0-9a-f-]+)>"
)
_ATTEMPT = re.compile(r"map_index=(?P<map_index>\d+)/attempt=(?P<n>\d+)\.log$")


@dataclass(frozen=True)
class Guard:
    key: str
    label: str
    wait_before_defer_s: float
    min_deferral_s: float

    def airflow_env(self) -> dict[str, str]:
        return {
            "AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S": str(self.wait_before_defer_s),
            "AIRFLOW__NANOBANANA__MIN_DEFERRAL_S": str(self.min_deferral_s),
        }


@dataclass(frozen=True)
class Mix:
    key: str
    label: str
    run_s: float
    run_s_max: float

    def emulator_args(self, images: int) -> list[str]:
        return [
            *("--max-running", str(images), "--queue-s", "0", "--seed", str(SEED)),
            *("--run-s", str(self.run_s), "--run-s-max", str(self.run_s_max)),
        ]


GUARDS = {
    g.key: g
    for g in (
        Guard("off", "(a) guards off (0.1.0)", 0.0, 0.0),
        Guard("defaults", "(b) defaults", 10.0, 15.0),
        Guard("hold", "(c) hold only", 0.0, 15.0),
    )
}
MIXES = {m.key: m for m in (Mix("short", "Short jobs", 0.0, 5.0), Mix("long", "Longer jobs", 5.0, 60.0))}


@dataclass
class EditMeasure:
    """One mapped edit: its tries, its job's end and its cost."""

    map_index: int
    tries: int
    failed_tries: int
    final_state: str | None
    deferrals: int
    worker_s: float
    worker_runs: int
    extra_latency_s: float | None


@dataclass
class RunMeasure:
    mix: str
    guard: str
    repeat: int
    images: int
    run_state: str
    total_s: float
    mismatches: int
    #: The task instance's state in each mismatch line (``queued``, ``running``, ``scheduled``).
    mismatch_states: dict[str, int] = field(default_factory=dict)
    edits: list[EditMeasure] = field(default_factory=list)
    unmatched_workloads: int = 0

    @property
    def retried(self) -> int:
        return sum(e.tries > 1 for e in self.edits)

    @property
    def failed_tries(self) -> int:
        return sum(e.failed_tries for e in self.edits)

    @property
    def failed_edits(self) -> int:
        return sum(e.final_state != "success" for e in self.edits)


def _time(value: str | None) -> datetime | None:
    return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _span_s(start: str | None, end: str | None) -> float:
    a, b = _time(start), _time(end)
    return math.nan if a is None or b is None else (b - a).total_seconds()


def job_finished_at(emulator_url: str, request_id: str) -> datetime | None:
    """The job's ``finished_at`` from the emulator's result endpoint (the emulator's wall clock)."""
    response = httpx.get(
        f"{emulator_url}/v1/requests/{request_id}/result",
        headers={"Authorization": f"Bearer {EMULATOR_TOKEN}"},
        timeout=10,
    )
    response.raise_for_status()
    return _time(response.json().get("finished_at"))


def ti_ids_by_map_index(scheduler_log: Path, task_log_root: Path, run_id: str) -> dict[str, int]:
    """``ti_id`` (the supervisor's ``workload_id``) -> map index of every edit task instance.

    From the scheduler's ``<TaskInstance: dag.edit_image run map_index=3 [queued] ti_id=...>``
    lines, and the task logs' JSON records as a fallback. In Airflow 3.3.2 a task instance keeps
    its ``ti_id`` across tries.
    """
    found: dict[str, int] = {}
    for match in _TI_REPR.finditer(scheduler_log.read_text(errors="replace")):
        if match["task_id"] == EDIT_TASK_ID and match["run_id"] == run_id:
            found[match["ti_id"]] = int(match["map_index"])
    run_dir = task_log_root / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={EDIT_TASK_ID}"
    for path in sorted(run_dir.glob("map_index=*/attempt=*.log")) if run_dir.exists() else []:
        if (attempt := _ATTEMPT.search(path.as_posix())) is None:
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("ti_id"):
                found.setdefault(str(record["ti_id"]), int(attempt["map_index"]))
    return found


def worker_runs(scheduler_log: Path) -> dict[str, list[float]]:
    """``workload_id`` -> the ``duration`` of each ``Workload finished`` line (one per worker run)."""
    runs: dict[str, list[float]] = {}
    for line in scheduler_log.read_text(errors="replace").splitlines():
        if (match := _WORKLOAD_FINISHED.search(line)) is not None:
            runs.setdefault(match["ti_id"], []).append(float(match["duration"]))
    return runs


def measure(stack: LocalStack, client: AirflowClient, run_id: str, run_state: str) -> RunMeasure:
    run = client.dag_run(DAG_ID, run_id)
    scheduler_log = stack.airflow.scheduler_log
    by_ti = ti_ids_by_map_index(scheduler_log, stack.airflow.task_log_root, run_id)
    worker_by_index: dict[int, list[float]] = {}
    for ti_id, durations in worker_runs(scheduler_log).items():
        if ti_id in by_ti:
            worker_by_index.setdefault(by_ti[ti_id], []).extend(durations)
    deferrals: dict[int, int] = {}
    for timing in deferral_timings(scheduler_log, stack.airflow.task_log_root, DAG_ID, run_id):
        if timing.task_id == EDIT_TASK_ID:
            deferrals[timing.map_index] = deferrals.get(timing.map_index, 0) + 1
    edit_indexes = sorted(
        ti.map_index for ti in client.task_instances(DAG_ID, run_id) if ti.task_id == EDIT_TASK_ID
    )
    result = RunMeasure(
        mix="",
        guard="",
        repeat=0,
        images=len(edit_indexes),
        run_state=run_state,
        total_s=_span_s(run.get("start_date"), run.get("end_date")),
        mismatches=len(mismatch_lines := scan_scheduler_log(scheduler_log).mismatch_lines),
        mismatch_states=dict(Counter(m["state"] for line in mismatch_lines if (m := _MISMATCH.search(line)))),
    )
    for index in edit_indexes:
        # Only the final try: in Airflow 3.3.2 a try failed through the executor-mismatch path leaves
        # no TaskInstanceHistory row, so ``.../tries`` can list one try for a task on its second.
        final = client.task_instance_tries(DAG_ID, run_id, EDIT_TASK_ID, index)[-1]
        try_number, state = int(final["try_number"]), final.get("state")
        latency = None
        if state == "success":
            request_id = client.xcom(DAG_ID, run_id, EDIT_TASK_ID, key=REQUEST_ID_XCOM_KEY, map_index=index)
            finished = job_finished_at(stack.emulator.base_url, str(request_id))
            ended = _time(final.get("end_date"))
            if finished is not None and ended is not None:
                latency = (ended - finished).total_seconds()
        runs = worker_by_index.get(index)
        result.edits.append(
            EditMeasure(
                map_index=index,
                tries=try_number,
                # Every try before the last failed; the last one too unless it succeeded.
                failed_tries=try_number - 1 + (state in FAILED_TRY_STATES),
                final_state=state,
                deferrals=deferrals.get(index, 0),
                worker_s=math.nan if runs is None else sum(runs),
                worker_runs=0 if runs is None else len(runs),
                extra_latency_s=latency,
            )
        )
    result.unmatched_workloads = sum(1 for e in result.edits if math.isnan(e.worker_s))
    return result


def run_one(mix: Mix, guard: Guard, images: int, repeat: int, log: Any = print) -> RunMeasure:
    """One fresh stack, one DAG run of ``images`` mapped edits; the stack is always stopped."""
    name = f"bench-race-{mix.key}-{guard.key}-{repeat}"
    stack = LocalStack(
        name, emulator_args=mix.emulator_args(images), airflow_env=guard.airflow_env(), log=log
    )
    with stack:
        s3 = stack.moto.client()
        seed_inputs(s3, BUCKET, "in/", images)
        client = stack.airflow.client()
        conf = {
            "bucket": BUCKET,
            "input_prefix": "in/",
            "output_prefix": "out/",
            "max_images": max(50, images),
        }
        run_id = trigger_enrichment(client, conf, alive=stack.check_alive)

        def alive(_state: str, _tis: object) -> None:
            stack.check_alive()

        state = client.wait_for_run(DAG_ID, run_id, timeout_s=RUN_TIMEOUT_S, on_poll=alive, interval_s=2.0)
        result = measure(stack, client, run_id, state)
    result.mix, result.guard, result.repeat = mix.key, guard.key, repeat
    if result.run_state == "success" and not result.mismatches and not result.retried:
        shutil.rmtree(stack.run_dir, ignore_errors=True)
    else:
        log(f"   kept {stack.run_dir} (scheduler and task logs) for a look at the lost tries")
    return result


# -- report ------------------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base <= 0:
        return "n/a"
    return f"{value / base:.2f}x"


def _s(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


@dataclass
class Row:
    """One (mix, guard) over its repeats."""

    runs: list[RunMeasure]

    @property
    def edits(self) -> list[EditMeasure]:
        return [e for r in self.runs for e in r.edits]

    def latencies(self) -> list[float]:
        return [e.extra_latency_s for e in self.edits if e.extra_latency_s is not None]

    def worker_runs_per_job(self) -> float:
        return statistics.fmean(e.worker_runs for e in self.edits) if self.edits else math.nan

    def worker_per_job(self) -> float:
        values = [e.worker_s for e in self.edits if not math.isnan(e.worker_s)]
        return statistics.fmean(values) if values else math.nan

    def total_s(self) -> float:
        values = [r.total_s for r in self.runs if not math.isnan(r.total_s)]
        return statistics.fmean(values) if values else math.nan

    def spread(self, per_run: Callable[[RunMeasure], float]) -> str:
        """`` (min-max)`` of one value over the runs, when there is more than one run."""
        values = [v for v in map(per_run, self.runs) if not math.isnan(v)]
        return f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""


def _run_worker_per_job(run: RunMeasure) -> float:
    return Row([run]).worker_per_job()


def code_version() -> str:
    """``git describe`` of the checkout the stacks import the provider from (``REPO_ROOT``)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return out.stdout.strip()


def machine_label() -> str:
    try:
        from importlib.metadata import version

        airflow = version("apache-airflow")
    except Exception:  # noqa: BLE001 - a label must never stop the report
        airflow = "?"
    return f"real Airflow {airflow}, LocalExecutor, {os.cpu_count()} cores"


@dataclass(frozen=True)
class Meta:
    """How a set of results was produced; stored with the raw numbers so a re-render keeps it."""

    command: str
    elapsed_s: float
    quick: bool
    code: str
    date: str
    machine: str


def current_meta(command: str, elapsed_s: float, quick: bool) -> Meta:
    return Meta(
        command=command,
        elapsed_s=elapsed_s,
        quick=quick,
        code=f"`{code_version()}` (the stacks import it from `{REPO_ROOT.name}/`)",
        date=f"{datetime.now(timezone.utc):%Y-%m-%d}",
        machine=f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}",
    )


def render(results: Sequence[RunMeasure], meta: Meta) -> str:
    label = machine_label()
    quick = meta.quick
    lines = [
        "# Benchmark: the defer-exit race guards",
        "",
        "Generated by `benchmarks/defer_race.py`; do not edit by hand. Regenerate with "
        "`uv run --frozen python -m benchmarks.defer_race` (also part of `make bench`). What the race is and "
        "why the guards exist: [reliability.md](reliability.md#airflows-defer-exit-race).",
        "",
        f"- Command: `{meta.command}` ({'quick' if quick else 'full'} mode, {meta.elapsed_s / 60:.1f} min)",
        f"- Provider code: {meta.code}",
        f"- Machine: {meta.machine}; date {meta.date}",
        f"- Stack: {label}: devstack's LocalStack (API server, scheduler, dag-processor, triggerer as "
        "separate processes; SQLite; `[core] parallelism` 4, so 4 worker slots), a fresh stack per row. "
        f"`{DAG_ID}` with one mapped `{EDIT_TASK_ID}` per image (example DAG: `retries=1`, "
        "`retry_delay` 30 s); the emulator runs every job at once (`--max-running N --queue-s 0`), run times "
        f"drawn uniformly (seed {SEED}).",
        "- Configs: (a) `wait_before_defer_s=0, min_deferral_s=0` (0.1.0's behaviour), (b) the defaults "
        "`10, 15`, (c) `0, 15`. Ratios are against (a) of the same mix in this run.",
        "- Lost tries: edits that were retried / tries that failed / the scheduler's "
        '"finished with state success, but the task instance\'s state attribute is X" lines (by X).',
        "- Extra latency: the edit's final `end_date` minus its job's `finished_at` at the emulator (retries "
        "included). Worker-slot s: the LocalExecutor supervisor's `Workload finished ... duration`, summed over "
        "every worker run of every try (before `defer()`, after resume, retries); deferred time is not in it. "
        "Run time: the DAG run's `start_date` to `end_date`. In brackets: the lowest and highest run.",
        "- The machine is shared and noisy (other test suites may run on it): compare rows of one run, not runs, "
        "and mind the ranges.",
        "",
    ]
    if quick:
        lines += ["> Quick mode: fewer images, short jobs only. Quote the full mode.", ""]
    header = (
        "| setup | config | runs x edits | deferred | retried / failed tries / mismatches | "
        "extra latency median / p90 / max (s) | x (a) median | worker-slot s per job, worker runs per job | x (a) | "
        "run time (s) | x (a) |"
    )
    for mix_key in dict.fromkeys(r.mix for r in results):
        mix = MIXES[mix_key]
        rows = {
            g: Row([r for r in results if r.mix == mix_key and r.guard == g])
            for g in GUARDS
            if any(r.mix == mix_key and r.guard == g for r in results)
        }
        base = rows.get("off")
        lines += [f"## {mix.label}: {mix.run_s:g}-{mix.run_s_max:g} s", "", header, "|" + "---|" * 11]
        for key, row in rows.items():
            guard = GUARDS[key]
            lat = row.latencies()
            med, p90, worst = (
                statistics.median(lat) if lat else math.nan,
                _pct(lat, 0.9),
                max(lat, default=math.nan),
            )
            base_med = statistics.median(base.latencies()) if base and base.latencies() else math.nan
            deferred = sum(e.deferrals > 0 for e in row.edits)
            retried = sum(r.retried for r in row.runs)
            failed = sum(r.failed_tries for r in row.runs)
            mismatches = sum(r.mismatches for r in row.runs)
            by_state: Counter[str] = Counter()
            for r in row.runs:
                by_state.update(r.mismatch_states)
            if by_state:
                mismatches_text = (
                    f"{mismatches} ({', '.join(f'{k} {v}' for k, v in sorted(by_state.items()))})"
                )
            else:
                mismatches_text = str(mismatches)
            states = {r.run_state for r in row.runs}
            run_note = "" if states == {"success"} else f" ({', '.join(sorted(states))})"
            lines.append(
                f"| {label} | {guard.label}: wait {guard.wait_before_defer_s:g} s, hold {guard.min_deferral_s:g} s "
                f"| {len(row.runs)} x {len(row.edits) // max(1, len(row.runs))} | {deferred}/{len(row.edits)} "
                f"| {retried} / {failed} / {mismatches_text} | {_s(med)} / {_s(p90)} / {_s(worst)} "
                f"| {_ratio(med, base_med)} | {_s(row.worker_per_job())}{row.spread(_run_worker_per_job)}, "
                f"{row.worker_runs_per_job():.1f} runs "
                f"| {_ratio(row.worker_per_job(), base.worker_per_job() if base else math.nan)} "
                f"| {_s(row.total_s())}{row.spread(lambda r: r.total_s)}{run_note} | {_ratio(row.total_s(), base.total_s() if base else math.nan)} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- entry points -------------------------------------------------------------------------------------


def run(
    mixes: Sequence[str], guards: Sequence[str], images: int, repeats: int, log: Any = print
) -> list[RunMeasure]:
    """Every (mix, guard, repeat) on its own stack; guards interleave so machine noise spreads evenly."""
    results = []
    for mix_key in mixes:
        for repeat in range(repeats):
            for guard_key in guards:
                started = time.monotonic()
                log(f"== defer race: {mix_key}, {GUARDS[guard_key].label}, repeat {repeat + 1}/{repeats}")
                try:
                    result = run_one(MIXES[mix_key], GUARDS[guard_key], images, repeat, log=log)
                except Exception as exc:  # noqa: BLE001 - one broken run must not lose the others
                    log(f"   FAILED: {type(exc).__name__}: {str(exc)[:500]} (its files stay under .run/)")
                    failed = RunMeasure(
                        mix_key, guard_key, repeat, images, f"error: {type(exc).__name__}", math.nan, 0
                    )
                    results.append(failed)
                    continue
                results.append(result)
                lat = [e.extra_latency_s for e in result.edits if e.extra_latency_s is not None]
                log(
                    f"   {result.run_state} in {result.total_s:.0f}s ({time.monotonic() - started:.0f}s with the "
                    f"stack): {result.retried} retried, {result.failed_tries} failed tries, {result.mismatches} "
                    f"mismatches; latency median {statistics.median(lat) if lat else math.nan:.1f}s; "
                    f"{result.unmatched_workloads} edit(s) without worker timings; mismatch states "
                    f"{result.mismatch_states}; not successful: "
                    f"{[(e.map_index, e.tries, e.final_state) for e in result.edits if e.final_state != 'success']}"
                )
    return results


def write(results: Sequence[RunMeasure], meta: Meta, out: Path) -> str:
    text = render(results, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text(json.dumps({"meta": asdict(meta), "runs": [asdict(r) for r in results]}, indent=1))
    return text


def load(path: Path) -> tuple[list[RunMeasure], Meta]:
    """Results and metadata written by :func:`write`, for ``--from-json``."""
    data = json.loads(path.read_text())
    runs = []
    for raw in data["runs"]:
        edits = [EditMeasure(**e) for e in raw.pop("edits")]
        runs.append(RunMeasure(**raw, edits=edits))
    return runs, Meta(**data["meta"])


def bench(quick: bool = False) -> dict[str, Any]:
    """Entry point for ``benchmarks/run.py`` (``make bench``): runs, writes its own doc, returns a summary."""
    argv = ["--quick"] if quick else []
    t0 = time.monotonic()
    args = parse_args(argv)
    results = run(args.mixes, args.configs, args.images, args.repeats)
    write(results, current_meta(_command(argv), time.monotonic() - t0, args.quick), Path(args.out))
    return {"doc": args.out, "runs": [asdict(r) for r in results]}


def _command(argv: Sequence[str]) -> str:
    return ("uv run --frozen python -m benchmarks.defer_race " + shlex.join(list(argv))).strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.defer_race", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="20 images, short jobs only (about 8 minutes)")
    parser.add_argument("--mixes", nargs="+", choices=list(MIXES), default=None, help="default: all")
    parser.add_argument("--configs", nargs="+", choices=list(GUARDS), default=list(GUARDS))
    parser.add_argument(
        "--images", type=int, default=None, help="mapped edits per run (default 40; quick 20)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per (mix, config) (default 1)")
    parser.add_argument("--out", default=str(OUT), help=f"where to write the report (default {OUT})")
    parser.add_argument(
        "--from-json", type=Path, default=None, help=f"only re-render the report from an earlier {RAW.name}"
    )
    args = parser.parse_args(argv)
    if args.mixes is None:
        args.mixes = ["short"] if args.quick else list(MIXES)
    if args.images is None:
        args.images = 20 if args.quick else 40
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the stack's context manager, which stops it


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_json is not None:
        results, meta = load(args.from_json)
        text = render(results, meta)
        Path(args.out).write_text(text + "\n")
        print(text)
        print(f"re-rendered {args.from_json} into {args.out}", file=sys.stderr)
        return 0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    t0 = time.monotonic()
    results = run(args.mixes, args.configs, args.images, args.repeats)
    text = write(results, current_meta(_command(argv), time.monotonic() - t0, args.quick), Path(args.out))
    print(text)
    print(f"wrote {args.out} and {RAW}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
