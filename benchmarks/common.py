"""Process plumbing shared by every benchmark: child servers, Airflow env, resource samplers.

Kept free of Airflow imports at module level: the Airflow environment (``AIRFLOW_HOME``, connections)
must be in ``os.environ`` before ``airflow`` is first imported, so children call
:func:`configure_airflow_env` first and import the provider afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

EMULATOR_TOKEN = "emulator-token"
STARTUP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ChildServer:
    """A server subprocess in its own process group, stopped with SIGTERM then SIGKILL."""

    proc: subprocess.Popen[str]
    url: str

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _start(
    cmd: Sequence[str],
    *,
    ready: re.Pattern[str] | None,
    url: str | None,
    env: dict[str, str],
    probe: str | None = None,
) -> ChildServer:
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    if ready is not None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = ready.search(line)
        if match is None:
            proc.kill()
            raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
        return ChildServer(proc, match.group(1))
    assert url is not None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(probe or url, timeout=1).close()
            return ChildServer(proc, url)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not answer at {url}")


def start_emulator(**settings: float | int | str) -> ChildServer:
    """``python -m airflow_provider_nanobanana.emulator`` with ``--queue-s`` etc. from ``settings``."""
    cmd = [sys.executable, "-m", "airflow_provider_nanobanana.emulator", "--port", "0"]
    for name, value in settings.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return _start(cmd, ready=_LISTENING, url=None, env=dict(os.environ))


def start_tracked_emulator(**settings: float | int | str) -> ChildServer:
    """:func:`start_emulator` behind :mod:`benchmarks.tracked_emulator` (per-job first-poll times)."""
    cmd = [sys.executable, "-m", "benchmarks.tracked_emulator", "--port", "0"]
    for name, value in settings.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    return _start(cmd, ready=_LISTENING, url=None, env=dict(os.environ))


def start_png_server() -> ChildServer:
    """The input image the emulator fetches for every job, served from its own process."""
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.pngserver", str(port)]
    url = f"http://127.0.0.1:{port}/input.png"
    return _start(cmd, ready=None, url=url, env=dict(os.environ))


def start_moto() -> ChildServer:
    """moto buffers every upload in memory, so it must live outside the measured process."""
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    url = f"http://127.0.0.1:{port}"
    return _start(cmd, ready=None, url=url, env=env, probe=f"{url}/moto-api/")


def emulator_counters(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/_emulator/counters", timeout=30) as resp:
        return dict(json.loads(resp.read()))


def emulator_put_config(base_url: str, changes: dict[str, Any]) -> None:
    data = json.dumps(changes).encode()
    req = urllib.request.Request(f"{base_url}/_emulator/config", data=data, method="PUT")
    req.add_header("Content-Type", "application/json")
    urllib.request.urlopen(req, timeout=30).close()


def emulator_reset(base_url: str) -> None:
    req = urllib.request.Request(f"{base_url}/_emulator/reset", data=b"", method="POST")
    urllib.request.urlopen(req, timeout=30).close()


def configure_airflow_env(emulator_url: str, moto_url: str | None = None) -> None:
    """Env for Airflow and the provider; must run before anything imports ``airflow``."""
    home = tempfile.mkdtemp(prefix="nb-bench-airflow-")
    os.environ.setdefault("AIRFLOW_HOME", home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    conn = {
        "conn_type": "runcomfy",
        "host": emulator_url,
        "password": EMULATOR_TOKEN,
        "extra": {"allow_insecure_inputs": True},
    }
    os.environ["AIRFLOW_CONN_RUNCOMFY_DEFAULT"] = json.dumps(conn)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if moto_url is not None:
        aws = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": moto_url, "region_name": "us-east-1"},
        }
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(aws)
        os.environ["AWS_ENDPOINT_URL"] = moto_url  # belt and braces: nothing may reach real AWS


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mb() -> float:
    """Lifetime peak RSS of this process (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LoopLagSampler:
    """Measures event-loop lag as the overshoot of a short ``asyncio.sleep``: the delay any
    coroutine on this loop (a trigger, the triggerer's heartbeat) would suffer at that moment."""

    interval_s: float = 0.05
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, lag seconds)
    rss_peak_mb: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self.samples.append((now, max(0.0, now - before - self.interval_s)))
            if len(self.samples) % 10 == 0:
                self.rss_peak_mb = max(self.rss_peak_mb, rss_mb())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def lags_after(self, start: float) -> list[float]:
        return [lag for at, lag in self.samples if at >= start]


@contextlib.contextmanager
def servers(*started: ChildServer) -> Iterator[tuple[ChildServer, ...]]:
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def code_version() -> str:
    """The commit a section measured (``+changes`` when the package or benchmarks differed from it),
    so a reused section says which code it describes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "airflow_provider_nanobanana", "benchmarks")
    return f"{commit}+changes" if dirty else commit


def machine_info() -> dict[str, str]:
    import platform

    try:
        from importlib.metadata import version

        airflow_version = version("apache-airflow")
    except Exception:  # noqa: BLE001 - informational only
        airflow_version = "?"
    return {
        "nproc": str(os.cpu_count()),
        "ram_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "python": platform.python_version(),
        "airflow": airflow_version,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
