"""``python -m benchmarks.event_writes [--n N] [--events K]``: what Airflow pays to release one deferred task.

The real-triggerer benchmark (``docs/benchmarks.md``, section 6) releases 10,000 task instances at
about 90 per second, whichever trigger polled them, and that line is what holds its latency p99 above
30 s. Each release is one ``Trigger.submit_event`` call in the triggerer's supervisor
(``TriggerRunnerSupervisor.handle_events``), one metadata-DB transaction per event. Is that SQLite's
single writer, which a production metadata DB would lift, or Airflow's own work per event?

This measures the call alone, outside the triggerer, on the metadata DB the real-triggerer benchmark
builds (``airflow db migrate``, then N deferred task instances with a trigger row each, written by
:mod:`benchmarks.triggerer_db`), with the event a ``RunComfyJobTrigger`` yields on success:

- on SQLite, a file beside the run (as section 6 uses);
- on PostgreSQL, when its server binaries are installed: a fresh cluster started for the run on
  127.0.0.1 (``initdb``, default settings, ``fsync`` on; run as ``nobody`` when this runs as root,
  which ``initdb`` refuses), and stopped at the end.

Per backend: wall time and CPU per event of the process making the call (Airflow's ORM and the DB
driver; for SQLite also the database engine, which runs in-process) and, for PostgreSQL, of the
server processes. The first ``WARMUP`` calls (statement caches filling) are not counted.

Results go to stdout and ``docs/benchmarks-event-writes.md`` (raw: ``.run/bench-event-writes/``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from benchmarks.child import read_result, write_result
from benchmarks.common import code_version, free_port, machine_info
from benchmarks.real_triggerer import REPO_ROOT, AirflowHome, migrate_template, new_fernet_key, populate

RUN_ROOT = REPO_ROOT / ".run" / "bench-event-writes"
OUT = REPO_ROOT / "docs" / "benchmarks-event-writes.md"
WARMUP = 50
SPREAD_S = 30.0  # section 6: completions spread over [0, 30] s once the jobs are let run


# -- PostgreSQL on loopback -------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, else Debian's versioned directory."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


@dataclass
class Postgres:
    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/airflow"

    def version(self) -> str:
        done = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True, text=True)
        return done.stdout.strip()

    def server_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children (the PostgreSQL server and its backends)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
    return total


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[Postgres]:
    """A throwaway cluster with an ``airflow`` superuser and database; trust auth on loopback only."""
    import psycopg2

    scratch = Path(tempfile.mkdtemp(prefix="nb-pg-"))
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(scratch, "nobody")
    pg = Postgres(bin_dir, scratch / "data", free_port())
    log = scratch / "server.log"
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(pg.data), "-U", "airflow", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        options = f"-p {pg.port} -k {scratch} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(pg.data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="airflow", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE airflow")
        conn.close()
        yield pg
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(pg.data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(scratch, ignore_errors=True)


# -- the measurement (a child with the run's Airflow environment) --------------------------------------


def measure_child(events: int, server_pid: int | None) -> dict[str, Any]:
    """``Trigger.submit_event`` for ``WARMUP + events`` of the DB's triggers, one call per event.

    The server's CPU is read here, while this process's connection (its backend) is still alive.
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import func, select

    from airflow_provider_nanobanana.models import EventStatus, JobEvent, JobState

    with create_session() as session:
        ids = list(session.scalars(select(Trigger.id).order_by(Trigger.id).limit(WARMUP + events)))
    if len(ids) < WARMUP + events:
        raise RuntimeError(f"only {len(ids)} triggers in the DB, {WARMUP + events} needed")

    def submit(trigger_id: int) -> None:
        event = JobEvent(
            status=EventStatus.SUCCESS,
            request_id=f"req-{trigger_id:08d}",
            message="job completed",
            job_state=JobState.COMPLETED,
        )
        Trigger.submit_event(trigger_id=trigger_id, event=TriggerEvent(event.model_dump(mode="json")))

    for trigger_id in ids[:WARMUP]:
        submit(trigger_id)
    server0 = tree_cpu_s(server_pid) if server_pid else 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for trigger_id in ids[WARMUP:]:
        submit(trigger_id)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = tree_cpu_s(server_pid) - server0 if server_pid else None
    with create_session() as session:
        # Each call must have released its task instance, or this measured something else.
        released = session.scalar(
            select(func.count())
            .select_from(TaskInstance)
            .where(TaskInstance.state == TaskInstanceState.SCHEDULED)
        )
    return {"events": events, "wall_s": wall, "cpu_s": cpu, "server_cpu_s": server, "released": released}


def _run_measure(home: AirflowHome, events: int, server_pid: int | None) -> dict[str, Any]:
    extra = ["--server-pid", str(server_pid)] if server_pid else []
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.event_writes", "--child", str(events), *extra],
        env=home.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if (result := read_result(done.stdout)) is not None:
        return result
    tail = " | ".join(done.stderr.strip().splitlines()[-5:])
    raise RuntimeError(f"measuring child exited {done.returncode}: {tail}")


def measure_backend(backend: str, n: int, events: int, pg: Postgres | None = None) -> dict[str, Any]:
    """Migrate, populate N deferred task instances, then time ``events`` releases."""
    root = RUN_ROOT / backend
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    fernet, jwt = new_fernet_key(), secrets.token_hex(32)
    conn = pg.url if pg is not None else None
    migrate_template(root, fernet, jwt, sql_alchemy_conn=conn)
    home = AirflowHome(root / "template", fernet, jwt, sql_alchemy_conn=conn)
    populate(home, "timedelta", [None] * n, timeout_s=900.0)
    measured = _run_measure(home, events, pg.server_pid() if pg is not None else None)
    if measured["released"] != WARMUP + events:
        raise RuntimeError(f"{measured['released']} task instances released by {WARMUP + events} events")
    row: dict[str, Any] = {
        "backend": pg.version() if pg is not None else f"SQLite {_sqlite_version()} (file, in-process)",
        "n": n,
        "events": events,
        "wall_ms": 1000 * measured["wall_s"] / events,
        "cpu_ms": 1000 * measured["cpu_s"] / events,
        "released": measured["released"],
    }
    if measured["server_cpu_s"] is not None:
        row["server_cpu_ms"] = 1000 * measured["server_cpu_s"] / events
    row["ceiling_per_s"] = 1000 / row["wall_ms"]
    row["release_n_s"] = n * row["wall_ms"] / 1000
    row["p99_floor_s"] = max(0.0, 0.99 * (row["release_n_s"] - SPREAD_S))
    return row


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def bench(n: int = 10_000, events: int = 500) -> dict[str, Any]:
    rows = [measure_backend("sqlite", n, events)]
    print(f"  sqlite: {rows[-1]}", flush=True)
    bin_dir = postgres_bin()
    skipped = None
    if bin_dir is None:
        skipped = "PostgreSQL: not measured (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin)"
    else:
        with running_postgres(bin_dir) as pg:
            rows.append(measure_backend("postgres", n, events, pg))
            print(f"  postgres: {rows[-1]}", flush=True)
    return {"rows": rows, "skipped": skipped, "code": code_version(), "machine": machine_info()}


# -- report ---------------------------------------------------------------------------------------


def render(result: dict[str, Any], command: str) -> str:
    machine = result["machine"]
    lines = [
        "# Benchmark: Airflow's cost to release one deferred task instance",
        "",
        "Generated by `benchmarks/event_writes.py`; do not edit by hand. Regenerate with "
        "`uv run --frozen python -m benchmarks.event_writes` (also part of `make bench`).",
        "",
        f"- Command: `{command}`",
        f"- Code measured: `{result['code']}`",
        f"- Machine: {machine['nproc']} CPUs, {machine['ram_gib']} GiB RAM, Python {machine['python']}, "
        f"Airflow {machine['airflow']}",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- Ran on: Airflow's `Trigger.submit_event` called in one process, outside any triggerer, "
        "on a metadata DB holding N deferred task instances (as section 6 of "
        "[benchmarks.md](benchmarks.md) builds it). Not a real triggerer: the call its supervisor "
        "makes once per event, alone.",
        "",
        "| metadata DB | N deferred | events timed | wall ms/event | caller CPU ms/event | "
        "DB server CPU ms/event | ceiling events/s | releasing N takes at least | p99 floor at N |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        server = f"{row['server_cpu_ms']:.2f}" if "server_cpu_ms" in row else "(in the caller)"
        lines.append(
            f"| {row['backend']} | {row['n']:,} | {row['events']} | {row['wall_ms']:.2f} | "
            f"{row['cpu_ms']:.2f} | {server} | {row['ceiling_per_s']:.0f} | {row['release_n_s']:.0f} s | "
            f"{row['p99_floor_s']:.0f} s |"
        )
    if result.get("skipped"):
        lines += ["", result["skipped"] + "."]
    lines += [
        "",
        "How to read it: the supervisor writes events one call at a time, so the ceiling is 1000 / "
        "wall ms per event, and that is before the rest of its loop (assigning and listing triggers, "
        "serving the runner's messages) takes its share. \"p99 floor at N\" is what section 6's "
        f"formula gives at that ceiling: N completions spread over {SPREAD_S:.0f} s and released in one "
        "line, each the moment its job ends, give a p99 of about 0.99 x (N / ceiling - "
        f"{SPREAD_S:.0f} s). The call is Airflow's ORM work (load the trigger's task instances, "
        "set them scheduled with the event as `next_kwargs`, one transaction), measured with the "
        "event a `RunComfyJobTrigger` yields; no provider code runs in it.",
    ]
    return "\n".join(lines) + "\n"


def measure_and_write(n: int, events: int, out: Path, command: str) -> dict[str, Any]:
    """Entry point for ``benchmarks/run.py`` (``make bench``) too: runs, writes its own doc and raw JSON."""
    result = bench(n, events)
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    (RUN_ROOT / "results.json").write_text(json.dumps(result, indent=2))
    out.write_text(render(result, command))
    return {"doc": str(out), **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="deferred task instances in the DB")
    parser.add_argument("--events", type=int, default=500, help="events timed per backend")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if args.child is not None:
        write_result(measure_child(args.child, args.server_pid))
        return 0
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["uv run --frozen python -m benchmarks.event_writes", *given])
    measure_and_write(args.n, args.events, Path(args.out), command)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
