"""Did every task succeed on its first try? Counted through the REST API and the scheduler's log.

Issue #14, Airflow's defer-exit race: a deferred task whose trigger fires within seconds can be
queued again before the scheduler has drained the executor's stale "success" event from the
worker's exit after ``defer()``. The scheduler then logs ``Executor ... reported that the task
instance <...> finished with state success, but the task instance's state attribute is queued`` and
fails the try (``up_for_retry`` or ``failed``). A run can still end ``success`` through a retry, so
the run state alone hides it; these helpers make it visible:

- :func:`count_task_tries`: every task instance of a run with its ``try_number`` and ``state``;
  one with ``try_number > 1`` was retried, one ``failed``/``up_for_retry`` failed a try.
- :func:`scan_scheduler_log`: the mismatch lines and every ``up_for_retry`` line of the scheduler.
- :func:`deferral_timings`: per deferred task instance, when the worker deferred, when the trigger
  fired and when the scheduler drained the executor event of that exit, from the task and scheduler
  logs. The race needs the trigger to fire (and the task to be queued again) before the drain.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from devstack.airflow_api import AirflowClient, TaskInstanceState

#: The scheduler's words when an executor event contradicts the task instance's state.
MISMATCH_MARKER = "state attribute is"
UP_FOR_RETRY_MARKERS = ("UP_FOR_RETRY", "up_for_retry")
FAILED_TRY_STATES = frozenset({"failed", "up_for_retry"})

#: Logged by Airflow's task runner (not the provider) when a task defers.
DEFER_EVENT = "Pausing task as DEFERRED."
FIRED_EVENT = "Trigger fired event"
#: The LocalExecutor worker's supervisor (its output lands in the scheduler log) once the task
#: process has exited; only after this can the executor report the exit to the scheduler.
_WORKLOAD_FINISHED = re.compile(
    r"Workload finished .*final_state=deferred .*workload_id=(?P<ti_id>[0-9a-f-]+)"
)

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)")
_EXECUTOR_EVENT = re.compile(
    r"Received executor event with state (?P<state>\w+) for task instance TaskInstanceKey\("
    r"dag_id='(?P<dag_id>[^']+)', task_id='(?P<task_id>[^']+)', run_id='(?P<run_id>[^']+)', "
    r"try_number=(?P<try_number>\d+), map_index=(?P<map_index>-?\d+)\)"
)
#: ``<TaskInstance: dag.task run_id map_index=3 [queued] ti_id=...>`` (no ``map_index=`` when
#: unmapped; ``ti_id=`` only on newer Airflow).
_TI_REPR = re.compile(
    r"<TaskInstance: (?P<dag_id>[^ .]+)\.(?P<task_id>\S+) (?P<run_id>\S+)"
    r"(?: map_index=(?P<map_index>-?\d+))? \[(?P<state>\w+)\][^>]*>"
)

TiKey = tuple[str, int]  # (task_id, map_index)


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _line_time(line: str) -> datetime | None:
    match = _TIMESTAMP.match(line)
    return _parse_time(match.group(1)) if match else None


# -- task tries through the REST API -----------------------------------------------------------------


@dataclass(frozen=True)
class TryTally:
    """The task instances of one run, judged by try number and state."""

    tis: list[TaskInstanceState]

    @property
    def total(self) -> int:
        return len(self.tis)

    @property
    def first_try_successes(self) -> list[TaskInstanceState]:
        return [ti for ti in self.tis if ti.state == "success" and ti.try_number == 1]

    @property
    def retried(self) -> list[TaskInstanceState]:
        return [ti for ti in self.tis if ti.try_number > 1]

    @property
    def failed(self) -> list[TaskInstanceState]:
        return [ti for ti in self.tis if ti.state in FAILED_TRY_STATES]

    @property
    def affected(self) -> list[TaskInstanceState]:
        """Retried or failed, each once, in map order."""
        keys = {ti.key for ti in self.retried + self.failed}
        return sorted((ti for ti in self.tis if ti.key in keys), key=lambda ti: ti.key)

    @property
    def clean(self) -> bool:
        return not self.affected and len(self.first_try_successes) == self.total


def count_task_tries(
    client: AirflowClient, dag_id: str, run_id: str, task_ids: Iterable[str] | None = None
) -> TryTally:
    """``GET /dags/{dag}/dagRuns/{run}/taskInstances``, optionally only some tasks."""
    wanted = set(task_ids) if task_ids is not None else None
    tis = [ti for ti in client.task_instances(dag_id, run_id) if wanted is None or ti.task_id in wanted]
    return TryTally(sorted(tis, key=lambda ti: ti.key))


# -- the scheduler log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerLogScan:
    mismatch_lines: list[str] = field(default_factory=list)
    up_for_retry_lines: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.mismatch_lines and not self.up_for_retry_lines


def scan_scheduler_log(path: Path) -> SchedulerLogScan:
    """Lines with ``state attribute is`` (executor/state mismatch) and with ``up_for_retry``."""
    if not path.exists():
        return SchedulerLogScan()
    mismatches, retries = [], []
    with path.open(errors="replace") as fh:
        for line in fh:
            if MISMATCH_MARKER in line:
                mismatches.append(line.rstrip("\n"))
            if any(marker in line for marker in UP_FOR_RETRY_MARKERS):
                retries.append(line.rstrip("\n"))
    return SchedulerLogScan(mismatches, retries)


def format_tries(tally: TryTally, scan: SchedulerLogScan) -> str:
    """One line a person can read at the end of a run."""
    return (
        f"task tries: {len(tally.first_try_successes)} of {tally.total} succeeded first try; "
        f"{len(tally.retried)} retried, {len(tally.failed)} failed; "
        f"scheduler log: {len(scan.mismatch_lines)} executor/state mismatches, "
        f"{len(scan.up_for_retry_lines)} up_for_retry lines"
    )


def describe_affected(tally: TryTally) -> list[str]:
    """``edit_image[13]: try 2, success`` for every retried or failed task instance."""
    return [
        f"{ti.task_id}[{ti.map_index}]: try {ti.try_number}, {ti.state}"
        if ti.map_index >= 0
        else f"{ti.task_id}: try {ti.try_number}, {ti.state}"
        for ti in tally.affected
    ]


# -- timing of deferral, trigger and executor-event drain ---------------------------------------------


@dataclass
class DeferralTiming:
    """One deferral of one try. Seconds are measured from ``deferred_at`` (the worker's log line)."""

    task_id: str
    map_index: int
    try_number: int
    deferred_at: datetime
    ti_id: str | None = None
    fired_at: datetime | None = None
    #: The worker's supervisor logged ``Workload finished ... final_state=deferred``.
    exited_at: datetime | None = None
    drained_at: datetime | None = None  # the scheduler received the executor event of that exit
    mismatch_at: datetime | None = None

    @property
    def fire_s(self) -> float | None:
        return None if self.fired_at is None else (self.fired_at - self.deferred_at).total_seconds()

    @property
    def exit_s(self) -> float | None:
        return None if self.exited_at is None else (self.exited_at - self.deferred_at).total_seconds()

    @property
    def drain_s(self) -> float | None:
        return None if self.drained_at is None else (self.drained_at - self.deferred_at).total_seconds()

    @property
    def fired_before_drain(self) -> bool:
        return self.fired_at is not None and self.drained_at is not None and self.fired_at < self.drained_at


def _task_log_events(path: Path) -> list[tuple[datetime, str, str | None]]:
    """(timestamp, event, ti_id) of the JSON lines of an Airflow 3 task log; other lines are skipped."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        when = _parse_time(str(record.get("timestamp", "")))
        if when is not None:
            ti_id = record.get("ti_id")
            events.append((when, str(record.get("event", "")), None if ti_id is None else str(ti_id)))
    return events


_ATTEMPT_PATH = re.compile(
    r"task_id=(?P<task_id>[^/]+)/(?:map_index=(?P<map_index>-?\d+)/)?attempt=(?P<n>\d+)"
)


def deferral_timings(
    scheduler_log: Path, task_log_root: Path, dag_id: str, run_id: str
) -> list[DeferralTiming]:
    """Match each deferral in the task logs to the first executor event of that try after it."""
    timings: dict[tuple[str, int, int], DeferralTiming] = {}
    run_dir = task_log_root / f"dag_id={dag_id}" / f"run_id={run_id}"
    for path in sorted(run_dir.glob("**/attempt=*.log")) if run_dir.exists() else []:
        match = _ATTEMPT_PATH.search(path.as_posix())
        if match is None:
            continue
        key = (match["task_id"], int(match["map_index"] or -1), int(match["n"]))
        for when, event, ti_id in _task_log_events(path):
            if event.startswith(DEFER_EVENT.rstrip(".")) and key not in timings:
                timings[key] = DeferralTiming(*key, deferred_at=when, ti_id=ti_id)
            elif event.startswith(FIRED_EVENT) and key in timings and timings[key].fired_at is None:
                timings[key].fired_at = when
    by_ti_id = {t.ti_id: t for t in timings.values() if t.ti_id}
    if scheduler_log.exists():
        for line in scheduler_log.read_text(errors="replace").splitlines():
            logged_at = _line_time(line)
            if logged_at is None:
                continue
            if (finished := _WORKLOAD_FINISHED.search(line)) is not None:
                timing = by_ti_id.get(finished["ti_id"])
                if timing is not None and timing.exited_at is None and logged_at >= timing.deferred_at:
                    timing.exited_at = logged_at
            elif (executor_event := _EXECUTOR_EVENT.search(line)) is not None:
                if executor_event["dag_id"] != dag_id or executor_event["run_id"] != run_id:
                    continue
                try_key = (
                    executor_event["task_id"],
                    int(executor_event["map_index"]),
                    int(executor_event["try_number"]),
                )
                timing = timings.get(try_key)
                if timing is not None and timing.drained_at is None and logged_at >= timing.deferred_at:
                    timing.drained_at = logged_at
            elif MISMATCH_MARKER in line and (ti := _TI_REPR.search(line)) is not None:
                ti_key = (ti["task_id"], int(ti["map_index"] or -1))
                for timing in timings.values():
                    same = (timing.task_id, timing.map_index) == ti_key and ti["run_id"] == run_id
                    if same and timing.mismatch_at is None and logged_at >= timing.deferred_at:
                        timing.mismatch_at = logged_at
    return sorted(timings.values(), key=lambda t: (t.task_id, t.map_index, t.try_number))


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"min {min(values):.2f}s, median {statistics.median(values):.2f}s, max {max(values):.2f}s"


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}s"


def format_timings(timings: Sequence[DeferralTiming]) -> list[str]:
    """A summary line, then one line per try that fired before its exit was drained or mismatched."""
    drains = [t.drain_s for t in timings if t.drain_s is not None]
    exits = [t.exit_s for t in timings if t.exit_s is not None]
    fires = [t.fire_s for t in timings if t.fire_s is not None]
    lines = [
        f"{len(timings)} deferral(s); deferral -> executor event drained: {_spread(drains)}",
        f"deferral -> worker's supervisor saw the task process exit: {_spread(exits)}",
        f"deferral -> trigger fired: {_spread(fires)}; "
        f"{sum(t.fired_before_drain for t in timings)} fired before the drain, "
        f"{sum(t.mismatch_at is not None for t in timings)} met a mismatch",
    ]
    for t in timings:
        if t.fired_before_drain or t.mismatch_at is not None:
            mismatch = (
                f", mismatch +{(t.mismatch_at - t.deferred_at).total_seconds():.2f}s" if t.mismatch_at else ""
            )
            lines.append(
                f"  {t.task_id}[{t.map_index}] try {t.try_number}: deferred {t.deferred_at:%H:%M:%S.%f}, "
                f"fired +{_secs(t.fire_s)}, process exit +{_secs(t.exit_s)}, drained +{_secs(t.drain_s)}"
                f"{mismatch}"
            )
    return lines
