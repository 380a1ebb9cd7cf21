"""``python -m devstack.demo``: the whole pipeline, offline, in about two minutes.

1. start the RunComfy emulator, a moto S3 server and Airflow 3 (API server, scheduler, dag-processor,
   triggerer) as local processes under ``.run/demo/``;
2. upload labelled input images to ``s3://nanobanana-demo/inputs/``;
3. trigger ``nanobanana_s3_enrichment`` and print progress until it finishes;
4. print where every output and manifest went, and write a contact sheet PNG of inputs and outputs;
5. print how many task tries succeeded first time, and any executor/state mismatch the scheduler
   logged (issue #14, Airflow's defer-exit race), so a retry hidden by a successful run shows;
6. stop every process it started (also on failure or Ctrl-C).

A stress of the same pipeline: ``python -m devstack.demo --images 40 --emulator-args
"--max-running 8 --queue-s 0 --run-s 3"``.

Exits 0 on success; otherwise 1 with the tails of the service and task logs.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.airflow_api import AirflowClient
from devstack.contact_sheet import SheetRow, write_contact_sheet
from devstack.enrichment import (
    DAG_ID,
    DEFAULT_BUCKET,
    EDIT_TASK_ID,
    INPUT_PREFIX,
    OUTPUT_PREFIX,
    EditResult,
    ProgressPrinter,
    collect_edit_results,
    trigger_enrichment,
)
from devstack.seed import SeededImage, read_object, seed_inputs
from devstack.services import RUN_ROOT, LocalStack
from devstack.tries import (
    count_task_tries,
    deferral_timings,
    describe_affected,
    format_timings,
    format_tries,
    scan_scheduler_log,
)

#: Two jobs at a time, so some edits visibly queue in the emulator while their tasks are deferred.
DEFAULT_EMULATOR_ARGS = "--max-running 2 --queue-s 1 --run-s 3"
#: The DAG's ``max_images`` param (a safety cap on paid requests) defaults to 50 and allows 500.
DAG_MAX_IMAGES_DEFAULT, DAG_MAX_IMAGES_LIMIT = 50, 500


class DemoFailed(RuntimeError):
    """The DAG run did not succeed, or its outputs are not what it claims."""


def say(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images",
        type=_image_count,
        default=6,
        help=f"input images to seed, 1-{DAG_MAX_IMAGES_LIMIT} (default 6)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the run (default: 300, or 120 + 8 per image when that is more)",
    )
    parser.add_argument("--name", default="demo", help="directory under .run/ (default demo)")
    parser.add_argument(
        "--emulator-args",
        default=DEFAULT_EMULATOR_ARGS,
        help=f"emulator CLI flags, e.g. '--failure-rate 0.5' (default {DEFAULT_EMULATOR_ARGS!r})",
    )
    parser.add_argument(
        "--airflow-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra Airflow setting for every component, e.g. AIRFLOW__CORE__PARALLELISM=8 (repeatable)",
    )
    parser.add_argument(
        "--prompt", default="Turn this picture into a watercolour painting; keep the label readable"
    )
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = run_timeout_s(args.images)
    for item in args.airflow_env:
        if "=" not in item:
            parser.error(f"--airflow-env takes NAME=VALUE, got {item!r}")
    return args


def _image_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= DAG_MAX_IMAGES_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1-{DAG_MAX_IMAGES_LIMIT}, got {count}")
    return count


def run_timeout_s(images: int) -> float:
    """Long enough for a loaded 2-core machine: every edit is two short worker runs around a wait."""
    return float(max(300, 120 + 8 * images))


def airflow_env(items: Sequence[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


@dataclass
class TryReport:
    """What the end of the demo says about task tries; filled as soon as the run has ended."""

    lines: list[str] = field(default_factory=list)

    def collect(self, stack: LocalStack, client: AirflowClient, run_id: str) -> None:
        tally = count_task_tries(client, DAG_ID, run_id)
        scan = scan_scheduler_log(stack.airflow.scheduler_log)
        self.lines = [f"[demo] {format_tries(tally, scan)}"]
        if tally.clean and scan.clean:
            return
        self.lines += [f"[demo]   {line}" for line in describe_affected(tally)]
        self.lines += [f"[demo]   scheduler: {line[:300]}" for line in scan.mismatch_lines[:5]]
        timings = deferral_timings(stack.airflow.scheduler_log, stack.airflow.task_log_root, DAG_ID, run_id)
        self.lines += [f"[demo]   {line}" for line in format_timings(timings)]
        edits = sum(ti.task_id == EDIT_TASK_ID for ti in tally.tis)
        try:
            submits = f"{stack.emulator.counters()['submits']} paid submit(s)"
        except Exception as exc:  # noqa: BLE001 - the report must not fail the demo
            submits = f"submits unknown ({exc.__class__.__name__})"
        self.lines.append(
            f"[demo]   executor/state mismatches are Airflow's defer-exit race (issue #14); "
            f"{edits} edit task(s), {submits} at the emulator"
        )


def build_sheet(s3: object, seeded: list[SeededImage], results: list[EditResult]) -> list[SheetRow]:
    """Match outputs to inputs through each request's manifest (it records the ``s3://`` inputs)."""
    rows = {
        img.uri: SheetRow(label=f"input {img.index}", input_png=read_object(s3, img.uri)) for img in seeded
    }
    for result in results:
        for uri in result.input_uris[:1]:
            row = rows.get(uri)
            if row is None:
                continue
            for n, out in enumerate(result.archived, start=1):
                row.outputs.append(read_object(s3, out))
                row.output_labels.append(f"output {n}: {result.request_id[:12]}")
    return list(rows.values())


def report(results: list[EditResult], summary: object) -> None:
    say(f"\n{len(results)} edit request(s) archived:")
    for r in results:
        say(f"  [{r.map_index}] {', '.join(r.input_uris) or '?'}  ->  request {r.request_id}")
        for uri in r.archived:
            say(f"        image    {uri}")
        say(f"        manifest {r.manifest_uri}")
    if isinstance(summary, dict):
        say(
            f"summary task: {summary.get('requests')} request(s), {len(summary.get('archived', []))} image(s)"
        )


def run_demo(stack: LocalStack, args: argparse.Namespace, sheet_path: Path, tries: TryReport) -> None:
    s3 = stack.moto.client()
    seeded = seed_inputs(s3, DEFAULT_BUCKET, INPUT_PREFIX, args.images)
    say(f"[demo] seeded {len(seeded)} images under s3://{DEFAULT_BUCKET}/{INPUT_PREFIX}")
    client = stack.airflow.client()
    conf = {
        "bucket": DEFAULT_BUCKET,
        "input_prefix": INPUT_PREFIX,
        "output_prefix": OUTPUT_PREFIX,
        "prompt": args.prompt,
        "max_images": max(DAG_MAX_IMAGES_DEFAULT, args.images),
    }
    run_id = trigger_enrichment(client, conf, alive=stack.check_alive)
    say(f"[demo] triggered {DAG_ID} run {run_id}; UI: {stack.airflow.api_url}/dags/{DAG_ID}")
    printer = ProgressPrinter(say, stack.emulator.counters)
    state = client.wait_for_run(DAG_ID, run_id, timeout_s=args.timeout, on_poll=printer)
    tries.collect(stack, client, run_id)
    if state != "success":
        raise DemoFailed(f"run {run_id} ended {state!r}")
    results = collect_edit_results(client, run_id, s3)
    if len(results) != len(seeded) or not all(r.archived and r.manifest_uri for r in results):
        raise DemoFailed(f"expected {len(seeded)} archived edits, got {[r.xcom for r in results]}")
    report(results, client.xcom(DAG_ID, run_id, "summarize"))
    rows = build_sheet(s3, seeded, results)
    write_contact_sheet(rows, sheet_path, f"{DAG_ID}: inputs and edits", f"run {run_id}")
    say(f"\n[demo] contact sheet: {sheet_path}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM (CI cancelling the job, ``kill``) into an exception, so the stack is stopped."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    stack = LocalStack(
        args.name,
        emulator_args=shlex.split(args.emulator_args),
        airflow_env=airflow_env(args.airflow_env),
        log=say,
    )
    sheet_path = RUN_ROOT / args.name / "contact_sheet.png"
    tries = TryReport()
    try:
        with stack:
            run_demo(stack, args, sheet_path, tries)
    except KeyboardInterrupt:
        say("\n[demo] interrupted; every service has been stopped")
        return 130
    except Exception as exc:  # noqa: BLE001 - any failure ends the demo with logs, never a bare traceback
        say(f"\n[demo] FAILED: {exc.__class__.__name__}: {exc}\n")
        say(stack.diagnostics())
        say(f"\n[demo] all logs: {stack.log_dir} and {stack.airflow.home / 'logs'}")
        for line in tries.lines:
            say(line)
        return 1
    total_s, start_s = time.monotonic() - started, stack.timings.get("start_s", 0.0)
    say(f"[demo] done in {total_s:.0f}s (stack start {start_s:.0f}s)")
    for line in tries.lines:
        say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
