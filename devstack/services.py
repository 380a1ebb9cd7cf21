"""A complete local stack as real processes: RunComfy emulator, moto S3 and Airflow 3.

Everything listens on 127.0.0.1 and lives under ``.run/<name>/`` (gitignored): the fresh
``AIRFLOW_HOME`` (SQLite DB, task logs) and one log file per service in ``logs/``. The stack is a
context manager that stops every process it started, also on Ctrl-C and on failure::

    with LocalStack("demo", emulator_args=["--run-s", "2"]) as stack:
        client = stack.airflow.client()
        ...

Four separate Airflow processes (``api-server``, ``scheduler``, ``dag-processor``, ``triggerer``)
are used rather than ``airflow standalone``: measured here they are healthy in roughly 35 s against
about 50 s, each writes its own log, and none of them needs the interactive user setup.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from devstack.airflow_api import AirflowClient
from devstack.processes import (
    ManagedProcess,
    ServiceError,
    free_port,
    run_checked,
    stop_all,
    tail,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_ROOT = REPO_ROOT / ".run"
DAGS_FOLDER = REPO_ROOT / "example_dags"

EMULATOR_TOKEN = "emulator-token"
_LISTENING = re.compile(r"listening on (http://\S+)")
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

#: Credentials moto accepts; they are also put in the environment so boto3 never looks further.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def base_env() -> dict[str, str]:
    """The parent's environment minus anything Airflow would read, plus loopback-safe defaults.

    The test suite's conftest sets ``AIRFLOW_HOME``, ``AIRFLOW__CORE__UNIT_TEST_MODE`` and a DAGs
    folder for in-process tests; a real deployment must not inherit any of them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AWS_ENV)
    env["PYTHONUNBUFFERED"] = "1"  # first-line handshakes and log tails must not sit in a buffer
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


# -- emulator ----------------------------------------------------------------------------------------


@dataclass
class EmulatorService:
    """The offline RunComfy emulator as a subprocess; its URL is read from its first output line."""

    log_dir: Path
    token: str = EMULATOR_TOKEN
    extra_args: Sequence[str] = ()
    process: ManagedProcess | None = field(default=None, init=False)
    base_url: str = field(default="", init=False)

    def start(self) -> None:
        argv = [sys.executable, "-m", "airflow_provider_nanobanana.emulator", "--port", "0"]
        argv += ["--token", self.token, *self.extra_args]
        self.process = ManagedProcess("emulator", argv, base_env(), self.log_dir / "emulator.log", REPO_ROOT)
        self.process.start()

    def wait_ready(self, timeout_s: float = 30.0) -> str:
        assert self.process is not None
        log_path = self.process.log_path

        def url() -> str | None:
            match = _LISTENING.search(log_path.read_text(errors="replace")) if log_path.exists() else None
            return match.group(1) if match else None

        self.base_url = wait_until(
            url, timeout_s=timeout_s, what="the emulator to print its URL", alive=self.process.check_alive
        )
        return self.base_url

    def counters(self) -> dict[str, Any]:
        """``GET /_emulator/counters``: submits, polls, cancels, peak concurrency, jobs by state."""
        response = httpx.get(f"{self.base_url}/_emulator/counters", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def job_status(self, request_id: str) -> str:
        """A job's state (``in_queue``, ``in_progress``, ``completed``...) through the public status API."""
        response = httpx.get(
            f"{self.base_url}/v1/requests/{request_id}/status",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["status"])

    def connection_json(self) -> str:
        """``AIRFLOW_CONN_RUNCOMFY_DEFAULT``: http inputs are allowed because S3 is moto on loopback."""
        return json.dumps(
            {
                "conn_type": "runcomfy",
                "host": self.base_url,
                "password": self.token,
                "extra": {"allow_insecure_inputs": True},
            }
        )


# -- moto S3 -----------------------------------------------------------------------------------------


@dataclass
class MotoService:
    """A moto S3 server as a subprocess on a port chosen here."""

    log_dir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        env = {**base_env(), "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        self.process = ManagedProcess("moto", argv, env, self.log_dir / "moto.log", REPO_ROOT)
        self.process.start()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert self.process is not None

        def up() -> bool | None:
            try:
                return httpx.get(self.endpoint_url, timeout=2).status_code < 500 or None
            except httpx.HTTPError:
                return None

        wait_until(up, timeout_s=timeout_s, what="moto S3", alive=self.process.check_alive)

    def client(self) -> Any:
        """A boto3 S3 client for seeding and checking (SigV4, like the provider signs)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4"),
        )

    def connection_json(self) -> str:
        """``AIRFLOW_CONN_AWS_DEFAULT`` for the Amazon provider, pointing at this server."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": AWS_ENV["AWS_ACCESS_KEY_ID"],
                "password": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": self.endpoint_url, "region_name": AWS_ENV["AWS_DEFAULT_REGION"]},
            }
        )


# -- Airflow -----------------------------------------------------------------------------------------


@dataclass
class AirflowDeployment:
    """Airflow 3 with LocalExecutor on SQLite: db migrate, then the four long-running components."""

    home: Path
    log_dir: Path
    dags_folder: Path = DAGS_FOLDER
    connections: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Source of ``$AIRFLOW_HOME/config/airflow_local_settings.py`` (cluster policies), if any.
    local_settings: str | None = None
    port: int = field(default_factory=free_port)
    processes: list[ManagedProcess] = field(default_factory=list, init=False)
    _jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32), init=False, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Configuration for every Airflow process, entirely through environment variables."""
        env = base_env()
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                # Tasks reach the API through this URL; the default assumes port 8080.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                # Every process must sign and verify task tokens with the same secret.
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__API__SECRET_KEY": self._jwt_secret,
                # New and changed DAG files show up within seconds instead of minutes.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            }
        )
        env.update(self.connections)
        env.update(self.extra_env)
        return env

    def migrate(self, timeout_s: float = 240.0) -> None:
        """Create the metadata DB (one CLI start-up plus the migrations)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_local_settings()
        argv = [sys.executable, "-m", "airflow", "db", "migrate"]
        run_checked(
            "airflow db migrate", argv, self.env(), self.log_dir / "airflow-db-migrate.log", timeout_s
        )

    def write_local_settings(self) -> Path | None:
        """Every Airflow process puts ``$AIRFLOW_HOME/config`` on sys.path and imports this module."""
        if self.local_settings is None:
            return None
        path = self.home / "config" / "airflow_local_settings.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.local_settings)
        return path

    def start(self) -> None:
        env = self.env()
        commands = {
            "api-server": ["api-server"],
            "scheduler": ["scheduler", "--skip-serve-logs"],  # logs are local files; no port clash
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer", "--skip-serve-logs"],
        }
        for name in AIRFLOW_COMPONENTS:
            argv = [sys.executable, "-m", "airflow", *commands[name]]
            proc = ManagedProcess(name, argv, env, self.log_dir / f"{name}.log", REPO_ROOT, grace_s=15.0)
            self.processes.append(proc.start())

    def start_triggerer(self, name: str, *args: str) -> ManagedProcess:
        """One more ``airflow triggerer`` (e.g. ``"triggerer-2", "--capacity", "1000"``) beside the
        first: Airflow's HA triggerers, which share the trigger table through the metadata DB."""
        argv = [sys.executable, "-m", "airflow", "triggerer", "--skip-serve-logs", *args]
        proc = ManagedProcess(name, argv, self.env(), self.log_dir / f"{name}.log", REPO_ROOT, grace_s=15.0)
        self.processes.append(proc.start())
        return proc

    def kill(self, name: str) -> ManagedProcess:
        """SIGKILL one component (e.g. ``triggerer``) with its children; the others keep running.

        It stays listed, so its log is still in the diagnostics; ``check_alive`` no longer counts it.
        """
        proc = next(p for p in self.processes if p.name == name)
        proc.kill()
        return proc

    def check_alive(self) -> None:
        for proc in self.processes:
            proc.check_alive()

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        """Until ``/api/v2/monitor/health`` reports every component healthy."""

        def healthy() -> bool | None:
            try:
                body = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                return None
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            ok = all((body.get(p) or {}).get("status") == "healthy" for p in parts)
            return True if ok else None

        wait_until(healthy, timeout_s=timeout_s, what="Airflow to report healthy", alive=self.check_alive)

    def client(self) -> AirflowClient:
        """A REST client logged in as the simple auth manager's generated admin."""
        return AirflowClient.login(self.api_url, password_file=self.password_file)

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def stop(self) -> None:
        """Stop all components together (each shuts down its own children on SIGTERM)."""
        stop_all(self.processes)

    @property
    def scheduler_log(self) -> Path:
        return self.log_dir / "scheduler.log"

    @property
    def task_log_root(self) -> Path:
        return self.home / "logs"

    def task_log_files(self) -> list[Path]:
        """Worker and triggerer logs of task instances, newest last."""
        root = self.home / "logs"
        if not root.exists():
            return []
        return sorted(root.glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)


# -- the whole stack ---------------------------------------------------------------------------------


class LocalStack:
    """Emulator + moto + Airflow under ``.run/<name>/``; a context manager that always cleans up.

    :param name: directory name under ``.run/``; wiped at start so every stack is fresh.
    :param emulator_args: extra emulator CLI flags, e.g. ``["--max-running", "1", "--queue-s", "2"]``.
    :param airflow_env: extra Airflow settings (``AIRFLOW__...`` variables) for this stack; they win
        over the defaults (``AIRFLOW__CORE__PARALLELISM``...).
    :param local_settings: source of an ``airflow_local_settings.py`` for every Airflow process, e.g. a
        ``task_policy`` that changes a task's ``retries`` without editing the DAG file.
    :param before_airflow: called once moto and the emulator are ready and before Airflow starts (e.g.
        to create an SQS queue and a bucket notification); the environment it returns is added to
        every Airflow process, so DAG files can read what it created.
    """

    def __init__(
        self,
        name: str,
        *,
        emulator_args: Sequence[str] = (),
        airflow_env: dict[str, str] | None = None,
        local_settings: str | None = None,
        before_airflow: Callable[[LocalStack], dict[str, str]] | None = None,
        run_root: Path = RUN_ROOT,
        log: Any = print,
    ) -> None:
        self.name = name
        self.run_dir = run_root / name
        self.log_dir = self.run_dir / "logs"
        self._log = log
        self._before_airflow = before_airflow
        self.emulator = EmulatorService(self.log_dir, extra_args=emulator_args)
        self.moto = MotoService(self.log_dir)
        self.airflow = AirflowDeployment(
            home=self.run_dir / "airflow",
            log_dir=self.log_dir,
            extra_env=dict(airflow_env or {}),
            local_settings=local_settings,
        )
        self.timings: dict[str, float] = {}

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start everything; the emulator and moto come up while the Airflow DB is migrated."""
        t0 = time.monotonic()
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.log_dir.mkdir(parents=True)
        self._log(f"[devstack] starting stack {self.name!r} in {self.run_dir}")
        self.emulator.start()
        self.moto.start()
        self.airflow.migrate()
        self.timings["migrate_s"] = time.monotonic() - t0
        self.emulator.wait_ready()
        self.moto.wait_ready()
        self._log(f"[devstack] emulator {self.emulator.base_url}, S3 {self.moto.endpoint_url}")
        self.airflow.connections = {
            "AIRFLOW_CONN_RUNCOMFY_DEFAULT": self.emulator.connection_json(),
            "AIRFLOW_CONN_AWS_DEFAULT": self.moto.connection_json(),
        }
        if self._before_airflow is not None:
            self.airflow.extra_env.update(self._before_airflow(self))
        self.airflow.start()
        self.airflow.wait_healthy()
        self.timings["start_s"] = time.monotonic() - t0
        self._log(
            f"[devstack] Airflow healthy at {self.airflow.api_url} after {self.timings['start_s']:.1f}s"
        )

    def stop(self) -> None:
        """Stop every process this stack started, all at once; safe to call more than once."""
        stop_all(list(self.all_processes()))

    def all_processes(self) -> Iterator[ManagedProcess]:
        yield from self.airflow.processes
        yield from (p for p in (self.emulator.process, self.moto.process) if p is not None)

    def check_alive(self) -> None:
        """Raise with the log tail of the first service that has died."""
        for proc in self.all_processes():
            proc.check_alive()

    def diagnostics(self, lines: int = 60, task_logs: int = 6) -> str:
        """Tails of every service log and of the newest task logs, for failure reports."""
        parts = []
        for proc in self.all_processes():
            parts.append(f"===== {proc.name} ({proc.log_path}) =====\n{tail(proc.log_path, lines)}")
        for path in self.airflow.task_log_files()[-task_logs:]:
            parts.append(f"===== task log {path} =====\n{tail(path, lines)}")
        return "\n".join(parts)


__all__ = [
    "AirflowDeployment",
    "EmulatorService",
    "LocalStack",
    "MotoService",
    "ServiceError",
]
