"""Child processes that can always be stopped: own process group, log file, TERM then KILL.

Airflow's commands fork workers (the scheduler's LocalExecutor, the API server's uvicorn, the
dag-processor's parsers). Signalling only the PID we started would orphan those, so every service
starts in a new session (``start_new_session=True``) and is stopped with :func:`os.killpg`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Seconds a service gets to exit after SIGTERM before its whole group is sent SIGKILL.
DEFAULT_GRACE_S = 10.0


class ServiceError(RuntimeError):
    """A service failed to start or become ready; the message names it and points at its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).

    There is a small window in which another process could take it; the services that need a port
    chosen up front (moto, the Airflow API) fail loudly on a clash and the caller can retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    alive: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than ``None``; raise after ``timeout_s``.

    ``alive`` is called between probes and should raise when the process being waited on has died,
    so a crashed service fails the wait at once instead of after the full timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None:
            return result
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            raise ServiceError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One service process: started in its own session, output to a log file, stopped as a group."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    cwd: Path | None = None
    grace_s: float = DEFAULT_GRACE_S
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    #: Set once the group is gone: its id may be reused by an unrelated process, never signal it again.
    _stopped: bool = field(default=False, init=False, repr=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> None:
        """Reap the leader if it has exited (a zombie leader keeps its group alive for ``killpg``)."""
        if self._proc is not None:
            self._proc.poll()

    def check_alive(self) -> None:
        """Raise :class:`ServiceError` with the log tail if the process has exited (unless stopped here)."""
        if self._proc is not None and not self._stopped and self._proc.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with code {self._proc.returncode}; last log lines "
                f"({self.log_path}):\n{tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGTERM the process group, wait ``grace_s``, then SIGKILL whatever is left of it."""
        stop_all([self])

    def terminate(self) -> int | None:
        """Send SIGTERM to the whole group; returns the group id, or ``None`` if never started.

        The group is signalled even when the leader has already exited, because its children
        (task runners, uvicorn workers) may still be alive.
        """
        if self._proc is None or self._stopped:
            return None
        pgid = self._proc.pid  # leader of its own session, so its pid is the group id
        self._signal_group(pgid, signal.SIGTERM)
        return pgid

    def kill(self) -> None:
        """SIGKILL the whole group at once, no grace: a crash or a lost machine, for failover tests."""
        if self._proc is None or self._stopped:
            return
        self._signal_group(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._stopped = True

    def kill_leftovers(self) -> None:
        """SIGKILL the group if anything in it survived SIGTERM, and reap the leader."""
        if self._proc is None or self._stopped:
            return
        if _group_exists(self._proc.pid):
            self._signal_group(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        self._stopped = True

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def stop_all(processes: Sequence[ManagedProcess]) -> None:
    """Stop several services at once: TERM every group, wait up to the longest grace, KILL the rest.

    In parallel because Airflow components take seconds each to shut down (the triggerer ~10 s).
    """
    groups = {pgid: p for p in processes if (pgid := p.terminate()) is not None}
    deadline = time.monotonic() + max((p.grace_s for p in processes), default=0.0)
    while any(_group_exists(g) for g in groups) and time.monotonic() < deadline:
        for proc in groups.values():
            proc.poll()
        time.sleep(0.2)
    for proc in groups.values():
        proc.kill_leftovers()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_checked(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, timeout_s: float
) -> None:
    """Run a one-shot command (e.g. ``airflow db migrate``) to completion, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            result = subprocess.run(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"{name} did not finish within {timeout_s:.0f}s; see {log_path}") from exc
    if result.returncode != 0:
        raise ServiceError(f"{name} failed with code {result.returncode}; last log lines:\n{tail(log_path)}")
