"""N deferred task instances released by one real ``airflow triggerer`` process.

For each N and each trigger variant, in the same run:

1. a fresh ``AIRFLOW_HOME`` whose SQLite DB is a copy of one made by ``airflow db migrate`` in this
   run; N jobs submitted to a fresh emulator that holds them queued (``--max-running 0``);
2. :mod:`benchmarks.triggerer_db` (a child with the Airflow env) writes the DAG, one running DAG run
   and N ``deferred`` task instances, each with its own trigger row;
3. ``airflow triggerer --capacity 20000 --skip-serve-logs`` starts (own process group); its process
   tree is sampled every second (PSS, RSS, CPU of the supervisor and of its trigger-runner child);
4. once the emulator has seen every job polled at least once (pickup), it is told to run them all
   (``PUT /_emulator/config``); each job's run time is drawn from [0, ``spread_s``], so completions
   spread over that window as real edits do;
5. the DB is polled every 0.5 s for task instances that left ``deferred``; detection latency of a
   task instance = when it was first seen released - when its job completed at the emulator;
6. the triggerer and the emulator are stopped, the triggerer's log is searched for blocked-loop
   warnings.

The ``timedelta`` variant holds N of Airflow's own ``TimeDeltaTrigger`` (1 day) for ``hold_s`` after
all have started (their per-trigger log files exist): the memory baseline of a triggerer doing
nothing but holding N triggers. Every process is on 127.0.0.1 and is stopped, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.child import read_result
from benchmarks.common import EMULATOR_TOKEN, ChildServer, percentile, start_tracked_emulator

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_ROOT = REPO_ROOT / ".run" / "bench-triggerer"
DAGS_FOLDER = REPO_ROOT / "benchmarks" / "dags"
CAPACITY = 20_000
RAN_ON = "real triggerer"
VARIANTS = ("ours", "timedelta", "peer")  # the peer last: the likeliest to hit its bounds
LABELS = {
    "ours": "RunComfyJobTrigger (provider)",
    "peer": "peer-style: conn lookup + new client per poll, fixed 5 s",
    "timedelta": "TimeDeltaTrigger (1 day), Airflow's own",
}
DAG_ID, TASK_ID = "nb_triggerer_bench", "edit"
_BLOCKED = re.compile(r"async thread was blocked for ([\d.]+) seconds")
_LOOP_BLOCKED = re.compile(r"loop blocked", re.IGNORECASE)
_SUCCESS = re.compile(r'"status":\s*"success"')
_STATUS_MESSAGE = re.compile(r'"status":\s*"(\w+)".*?"message":\s*"([^"]{0,80})')
RSS_GUARD_MB = 4000.0  # a run whose triggerer tree passes this is stopped (the peer's clients add up)
MB = 2**20


@dataclass(frozen=True)
class Limits:
    """Time bounds of one run; every wait in it ends by one of these."""

    pickup_s: float  # triggerer start -> every job polled once (or every trigger started)
    release_s: float  # jobs told to run -> every task instance released
    hold_s: float  # TimeDeltaTrigger: how long to sample once all have started
    spread_s: float  # each job runs a time drawn from [0, spread_s] once released

    @classmethod
    def for_n(cls, n: int, quick: bool = False) -> Limits:
        if quick:
            return cls(pickup_s=120.0, release_s=120.0, hold_s=10.0, spread_s=10.0)
        return cls(pickup_s=90.0 + 0.03 * n, release_s=150.0 + 0.03 * n, hold_s=30.0, spread_s=30.0)


# -- Airflow environment ------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """The parent's environment minus anything Airflow reads (see ``devstack.services.base_env``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


@dataclass
class AirflowHome:
    """One fresh ``AIRFLOW_HOME``; the same Fernet key and JWT secret in every process of a run."""

    path: Path
    fernet_key: str
    jwt_secret: str
    emulator_url: str | None = None
    #: Another metadata DB than this home's SQLite file (``benchmarks.event_writes``: PostgreSQL).
    sql_alchemy_conn: str | None = None
    #: Time every event-loop step of the triggerer's processes into files with this prefix
    #: (``benchmarks.slow_steps``, for ``benchmarks.loop_blocks``).
    slow_steps_prefix: str | None = None

    @property
    def db(self) -> Path:
        return self.path / "airflow.db"

    def env(self) -> dict[str, str]:
        env = base_env()
        env.update(
            {
                "AIRFLOW_HOME": str(self.path),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn or f"sqlite:///{self.db}",
                "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.path / "logs"),
                "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
                # The triggerer imports benchmarks.peer_trigger by its classpath.
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            }
        )
        if self.slow_steps_prefix is not None:
            env["NB_SLOW_STEPS"] = self.slow_steps_prefix
            env["PYTHONPATH"] = os.pathsep.join(
                [str(REPO_ROOT / "benchmarks" / "slow_steps_site"), env["PYTHONPATH"]]
            )
        if self.emulator_url is not None:
            conn = {
                "conn_type": "runcomfy",
                "host": self.emulator_url,
                "password": EMULATOR_TOKEN,
                "extra": {"allow_insecure_inputs": True},
            }
            env["AIRFLOW_CONN_RUNCOMFY_DEFAULT"] = json.dumps(conn)
        return env


def new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def migrate_template(
    root: Path,
    fernet_key: str,
    jwt_secret: str,
    timeout_s: float = 300.0,
    sql_alchemy_conn: str | None = None,
) -> Path:
    """``airflow db migrate`` once per run; every variant starts from a copy of this DB."""
    home = AirflowHome(root / "template", fernet_key, jwt_secret, sql_alchemy_conn=sql_alchemy_conn)
    home.path.mkdir(parents=True, exist_ok=True)
    log = root / "airflow-db-migrate.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=home.env(),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            start_new_session=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed ({done.returncode}); see {log}")
    return home.db


def populate(
    home: AirflowHome, variant: str, request_ids: Sequence[str | None], timeout_s: float
) -> dict[str, Any]:
    """Run :mod:`benchmarks.triggerer_db` in a child with this home's Airflow env."""
    args_path = home.path / "populate-args.json"
    args = {
        "variant": variant,
        "n": len(request_ids),
        "request_ids": list(request_ids),
        "dags_folder": str(DAGS_FOLDER),
    }
    args_path.write_text(json.dumps(args))
    log = home.path.parent / "populate.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.triggerer_db", str(args_path)],
            env=home.env(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
            timeout=timeout_s,
            start_new_session=True,
            check=False,
        )
    result = read_result(done.stdout.decode(errors="replace"))
    if result is not None:
        result.pop("request_id_by_map_index", None)
        return result
    raise RuntimeError(f"populating the DB failed ({done.returncode}); see {log}")


# -- emulator -------------------------------------------------------------------------------------


def _get_json(url: str, timeout_s: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def _put_json(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    req.add_header("Content-Type", "application/json")
    urllib.request.urlopen(req, timeout=30).close()


async def _submit_all(base_url: str, png_url: str, n: int, concurrency: int = 32) -> list[str]:
    """N edits at the emulator, through its public API (the workers' part; not measured)."""
    headers = {"Authorization": f"Bearer {EMULATOR_TOKEN}"}
    limits = httpx.Limits(max_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=60.0, limits=limits, trust_env=False
    ) as client:

        async def one(i: int) -> str:
            async with gate:
                body = {"prompt": f"benchmark edit {i}", "image_urls": [png_url]}
                resp = await client.post("/v1/models/google/nano-banana-2/edit", json=body)
                resp.raise_for_status()
                return str(resp.json()["request_id"])

        return list(await asyncio.gather(*(one(i) for i in range(n))))


# -- sampling -------------------------------------------------------------------------------------


@dataclass
class TreeSampler:
    """Samples the triggerer's process tree every ``interval_s`` on a thread of its own.

    The leader (the ``airflow triggerer`` CLI process) is the supervisor: DB reads and writes, the
    per-trigger log files. Its child is the trigger runner: the event loop every trigger runs on.
    """

    pid: int
    interval_s: float = 1.0
    peak_pss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_before_release_mb: float = 0.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (epoch, pss MB, rss MB)
    cpu_s: dict[str, float] = field(default_factory=lambda: {"supervisor": 0.0, "runner": 0.0})
    released: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="triggerer-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        try:
            leader = psutil.Process(self.pid)
            procs = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return
        pss = rss = 0.0
        cpu = {"supervisor": 0.0, "runner": 0.0}
        for proc in procs:
            try:
                mem = proc.memory_full_info()
                times = proc.cpu_times()
            except psutil.Error:
                continue
            pss += mem.pss / MB
            rss += mem.rss / MB
            role = "supervisor" if proc.pid == self.pid else "runner"
            cpu[role] += times.user + times.system
        if pss == 0.0:
            return
        self.samples.append((time.time(), round(pss, 1), round(rss, 1)))
        self.peak_pss_mb = max(self.peak_pss_mb, pss)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if not self.released:
            self.peak_pss_before_release_mb = max(self.peak_pss_before_release_mb, pss)
        # CPU only grows; a process that is already gone keeps its last figure.
        for role, value in cpu.items():
            self.cpu_s[role] = max(self.cpu_s[role], value)


def count_started(home: Path, n: int) -> int:
    """Triggers whose per-trigger log file exists: the runner logs 'trigger ... starting' first."""
    base = home / "logs" / f"dag_id={DAG_ID}"
    if not base.exists():
        return 0
    count = 0
    for run_dir in base.iterdir():
        task_dir = run_dir / f"task_id={TASK_ID}"
        if not task_dir.is_dir():
            continue
        for entry in os.scandir(task_dir):
            with contextlib.suppress(OSError):
                if any(".trigger." in f for f in os.listdir(entry.path)):
                    count += 1
    return min(count, n)


class ReleaseWatcher:
    """Polls the metadata DB (read-only) for task instances that have left ``deferred``."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.first_seen: dict[int, float] = {}
        self.success: set[int] = set()

    def poll(self) -> int:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as conn:
                rows = conn.execute(
                    "SELECT map_index FROM task_instance WHERE dag_id = ? AND task_id = ? AND state != 'deferred'",
                    (DAG_ID, TASK_ID),
                ).fetchall()
        except sqlite3.Error:
            return len(self.first_seen)
        now = time.time()
        for (index,) in rows:
            self.first_seen.setdefault(int(index), now)
        return len(self.first_seen)

    def final_states(self) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)) as conn:
            states = dict(
                conn.execute(
                    "SELECT state, count(*) FROM task_instance WHERE dag_id = ? AND task_id = ? GROUP BY state",
                    (DAG_ID, TASK_ID),
                ).fetchall()
            )
            kwargs = conn.execute(
                "SELECT map_index, next_method, next_kwargs FROM task_instance WHERE dag_id = ? AND task_id = ? "
                "AND state != 'deferred'",
                (DAG_ID, TASK_ID),
            ).fetchall()
        self.success = {
            int(index)
            for index, method, raw in kwargs
            if method == "execute_complete" and _SUCCESS.search(str(raw))
        }
        failed = sum(1 for _, method, _ in kwargs if method == "__fail__")
        others = Counter(
            f"{m.group(1)}: {m.group(2) or '(empty message)'}"
            for index, method, raw in kwargs
            if int(index) not in self.success and method == "execute_complete"
            for m in [_STATUS_MESSAGE.search(str(raw))]
            if m is not None
        )
        return {
            "states": {str(k): v for k, v in states.items()},
            "success_events": len(self.success),
            "other_events": sum(others.values()),
            "other_event_kinds": dict(others.most_common(3)),
            "trigger_failures": failed,
        }


DEADLOCK_WCHAN = "sock_alloc_send_pskb"  # waiting for room in a full socket buffer to send
DEADLOCK_AFTER_S = 30.0


def blocked_on_each_other(pid: int) -> bool:
    """The supervisor and every child blocked in a socket send (Linux ``/proc/PID/wchan``).

    Airflow 3.3's supervisor writes its answers to the runner with a blocking send, and the runner's
    event loop writes every log line to the supervisor with a blocking write: once both socket buffers
    are full, each waits for the other forever.
    """
    try:
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return False
    if len(pids) < 2:
        return False
    for each in pids:
        try:
            if Path(f"/proc/{each}/wchan").read_text().strip() != DEADLOCK_WCHAN:
                return False
        except OSError:
            return False
    return True


def blocked_warnings(log: Path) -> dict[str, Any]:
    text = log.read_text(errors="replace") if log.exists() else ""
    seconds = [float(m.group(1)) for m in _BLOCKED.finditer(text)]
    return {
        "blocked": len(seconds) + len(_LOOP_BLOCKED.findall(text)),
        "blocked_over_1s": sum(1 for s in seconds if s > 1.0),
        "blocked_max_s": round(max(seconds, default=0.0), 2),
        "heartbeat_skips": text.count("event loop appears deadlocked"),
        "log_errors": text.count("[error"),
    }


# -- one run ----------------------------------------------------------------------------------------


def run_one(
    variant: str,
    n: int,
    *,
    root: Path,
    template_db: Path,
    fernet_key: str,
    png_url: str,
    limits: Limits,
    log: Callable[[str], None] = print,
    slow_steps: bool = False,
) -> dict[str, Any]:
    from devstack.processes import ManagedProcess, stop_all

    run_dir = root / f"{variant}-{n}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    prefix = str(run_dir / "slow-steps") if slow_steps else None
    home = AirflowHome(run_dir / "home", fernet_key, secrets.token_hex(32), slow_steps_prefix=prefix)
    home.path.mkdir(parents=True)
    shutil.copyfile(template_db, home.db)
    row: dict[str, Any] = {"variant": variant, "trigger": LABELS[variant], "n": n, "ran_on": RAN_ON}
    row["load_start"] = round(os.getloadavg()[0], 1)
    emulator: ChildServer | None = None
    triggerer: ManagedProcess | None = None
    sampler: TreeSampler | None = None
    try:
        request_ids: list[str | None] = [None] * n
        if variant != "timedelta":
            emulator = start_tracked_emulator(
                max_running=0, queue_s=0, run_s=0, run_s_max=limits.spread_s, seed=9, token=EMULATOR_TOKEN
            )
            home.emulator_url = emulator.url
            t = time.monotonic()
            request_ids = list(asyncio.run(_submit_all(emulator.url, png_url, n)))
            row["submit_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        row["populate"] = populate(home, variant, request_ids, timeout_s=600.0)
        row["populate_s"] = round(time.monotonic() - t, 1)
        log(f"  [{variant} N={n}] DB populated in {row['populate_s']}s; starting the triggerer")

        argv = [
            sys.executable,
            "-m",
            "airflow",
            "triggerer",
            "--capacity",
            str(CAPACITY),
            "--skip-serve-logs",
        ]
        triggerer = ManagedProcess(
            "triggerer", argv, home.env(), run_dir / "triggerer.log", REPO_ROOT, grace_s=30.0
        )
        t_start = time.time()
        triggerer.start()
        assert triggerer.pid is not None
        sampler = TreeSampler(triggerer.pid)
        sampler.start()
        row.update(_watch(variant, n, home, emulator, triggerer, sampler, limits, t_start, request_ids, log))
    except Exception as exc:  # noqa: BLE001 - one failed run is a row with an error, not an abort
        row["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  [{variant} N={n}] error: {row['error']}")
    finally:
        if sampler is not None:
            sampler.sample()
            sampler.stop()
        if triggerer is not None:
            stop_all([triggerer])
        if emulator is not None:
            emulator.stop()
    if sampler is not None:
        row.update(
            {
                "peak_pss_mb": round(sampler.peak_pss_mb, 1),
                "peak_rss_mb": round(sampler.peak_rss_mb, 1),
                "holding_pss_mb": round(sampler.peak_pss_before_release_mb, 1),
                "cpu_supervisor_s": round(sampler.cpu_s["supervisor"], 1),
                "cpu_runner_s": round(sampler.cpu_s["runner"], 1),
                "samples": sampler.samples[:: max(1, len(sampler.samples) // 200)],
            }
        )
    row.update(blocked_warnings(run_dir / "triggerer.log"))
    if prefix is not None:
        from benchmarks.slow_steps import read

        row["slow_steps"] = read(prefix)
    row["load_end"] = round(os.getloadavg()[0], 1)
    return row


def _watch(
    variant: str,
    n: int,
    home: AirflowHome,
    emulator: ChildServer | None,
    triggerer: Any,
    sampler: TreeSampler,
    limits: Limits,
    t_start: float,
    request_ids: Sequence[str | None],
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    watcher = ReleaseWatcher(home.db)
    started = 0
    started_at: float | None = None
    next_scan = 0.0
    released_at: float | None = None  # when the emulator was told to run the jobs
    hold_until: float | None = None
    last_report = time.monotonic()
    stuck_since: float | None = None
    while True:
        triggerer.check_alive()
        now = time.time()
        if started < n and time.monotonic() >= next_scan:
            started = count_started(home.path, n)
            next_scan = time.monotonic() + 5.0
            if started >= n:
                started_at = now
        if emulator is not None and released_at is None:
            summary = _get_json(f"{emulator.url}/_bench/summary")
            out["first_polled"] = summary["first_polled"]
            if summary["first_polled"] >= n or now - t_start > limits.pickup_s:
                if summary["first_polled"] >= n:
                    out["pickup_s"] = round(summary["last_first_poll"] - t_start, 1)
                else:
                    out["note"] = (
                        f"pickup timed out after {limits.pickup_s:.0f}s: {summary['first_polled']}/{n} polled"
                    )
                _put_json(f"{emulator.url}/_emulator/config", {"max_running": 1_000_000})
                released_at = time.time()
                sampler.released = True
                log(f"  [{variant} N={n}] {summary['first_polled']}/{n} polled; jobs released")
        if emulator is not None and released_at is not None:
            done = watcher.poll()
            if done >= n or now - released_at > limits.release_s:
                if done < n:
                    out["note"] = (
                        out.get("note", "") + f"; release timed out after {limits.release_s:.0f}s"
                    ).lstrip("; ")
                break
        if emulator is None:
            if started >= n and hold_until is None:
                hold_until = now + limits.hold_s
            if hold_until is not None and now >= hold_until:
                break
            if hold_until is None and now - t_start > limits.pickup_s:
                out["note"] = f"start timed out after {limits.pickup_s:.0f}s: {started}/{n} started"
                break
        if blocked_on_each_other(sampler.pid):
            stuck_since = stuck_since or now
            if now - stuck_since >= DEADLOCK_AFTER_S:
                out["deadlock_at_s"] = round(stuck_since - t_start, 1)
                out["note"] = (
                    out.get("note", "")
                    + f"; DEADLOCK from t={stuck_since - t_start:.0f}s: supervisor and runner both blocked "
                    f"writing to each other (kernel wchan {DEADLOCK_WCHAN}) for {DEADLOCK_AFTER_S:.0f}s; stopped"
                ).lstrip("; ")
                log(f"  [{variant} N={n}] {out['note']}")
                break
        else:
            stuck_since = None
        if sampler.peak_rss_mb > RSS_GUARD_MB:
            out["note"] = (
                out.get("note", "") + f"; aborted: triggerer tree RSS above {RSS_GUARD_MB:,.0f} MB"
            ).lstrip("; ")
            break
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            log(
                f"  [{variant} N={n}] t={now - t_start:.0f}s started={started} released={len(watcher.first_seen)}"
            )
        time.sleep(0.5)
    t_end = max(watcher.first_seen.values(), default=time.time())
    if started_at is not None:
        out["started_s"] = round(started_at - t_start, 1)
    out["started"] = started
    if emulator is None:
        out["wall_s"] = round(time.time() - t_start, 1)
        return out
    jobs = _get_json(f"{emulator.url}/_bench/jobs", timeout_s=120)
    counters = _get_json(f"{emulator.url}/_emulator/counters")
    final = watcher.final_states()
    latencies = []  # over task instances released by a success event only: an error is no detection
    for index, seen in watcher.first_seen.items():
        if index not in watcher.success:
            continue
        rid = request_ids[index]
        finished = jobs.get(rid, [None, None])[1] if rid else None
        if finished is not None:
            latencies.append(max(0.0, seen - finished))
    polls = counters["status_polls"] + counters["result_polls"]
    wall = t_end - t_start
    out.update(
        {
            "released": len(watcher.first_seen),
            **final,
            "wall_s": round(wall, 1),
            "release_phase_s": round(t_end - released_at, 1) if released_at else None,
            "polls": polls,
            "polls_per_job": round(polls / n, 2),
            "polls_per_s": round(polls / wall, 1) if wall > 0 else None,
            "lat_p50_s": round(percentile(latencies, 50), 1) if latencies else None,
            "lat_p95_s": round(percentile(latencies, 95), 1) if latencies else None,
            "lat_p99_s": round(percentile(latencies, 99), 1) if latencies else None,
            "lat_max_s": round(max(latencies), 1) if latencies else None,
            "completed_at_emulator": sum(1 for v in jobs.values() if v[2] == "completed"),
        }
    )
    return out


# -- the matrix -------------------------------------------------------------------------------------


def run_matrix(
    ns: Sequence[int],
    *,
    png_url: str,
    budget_s: float,
    quick: bool = False,
    variants: Sequence[str] = VARIANTS,
    log: Callable[[str], None] = print,
    root: Path = RUN_ROOT,
    slow_steps: bool = False,
) -> dict[str, Any]:
    """Every (N, variant) in order of N; once ``budget_s`` is spent the rest is recorded as not run."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    fernet_key = new_fernet_key()
    t0 = time.monotonic()
    template = migrate_template(root, fernet_key, secrets.token_hex(32))
    settings = provider_settings(AirflowHome(root / "template", fernet_key, secrets.token_hex(32)))
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n in ns:
        for variant in variants:
            if time.monotonic() - t0 > budget_s:
                skipped.append(f"{variant} N={n:,}")
                continue
            started = time.monotonic()
            row = run_one(
                variant,
                n,
                root=root,
                template_db=template,
                fernet_key=fernet_key,
                png_url=png_url,
                limits=Limits.for_n(n, quick),
                log=log,
                slow_steps=slow_steps,
            )
            row["run_s"] = round(time.monotonic() - started, 1)
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("samples", "populate")}
            log(f"  triggerer {variant} N={n}: {shown}")
    return {
        "rows": rows,
        "skipped": skipped,
        "budget_s": budget_s,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "limits": {str(n): Limits.for_n(n, quick).__dict__ for n in ns},
        "logs": str(root.relative_to(REPO_ROOT)),
        **settings,
    }


def provider_settings(home: AirflowHome) -> dict[str, Any]:
    """The poll budget and Airflow version the triggerer sees, read in a child with its env."""
    code = (
        "import json; from importlib.metadata import version; "
        "from airflow_provider_nanobanana.config import POLL_RATE_PER_S, POLL_MAX_IN_FLIGHT; "
        "print(json.dumps({'poll_rate_per_s': POLL_RATE_PER_S.get(), "
        "'poll_max_in_flight': POLL_MAX_IN_FLIGHT.get(), 'airflow': version('apache-airflow')}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=home.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        return {"poll_rate_per_s": None, "airflow": "?"}
