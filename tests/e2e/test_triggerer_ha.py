"""Two real ``airflow triggerer`` processes, one SIGKILLed mid-run: the survivor finishes the work.

Airflow's HA triggerers share the trigger table: each one's loop claims unassigned rows, and rows
whose triggerer's heartbeat is older than ``[triggerer] triggerer_health_check_threshold``, up to
its capacity. The test runs ``tests/dags/nanobanana_ha.py`` (20 mapped deferred edits and one
4-item batch) against the emulator while it holds every job queued (``--max-running 0``):

1. triggerer A (``[triggerer] capacity`` 8) claims the batch's row and 7 singles, the other 13 rows
   stay unassigned; then triggerer B (``--capacity 1000``) starts and claims those 13;
2. A is SIGKILLed with its runner subprocess (no clean shutdown): 8 orphans, one of them the batch;
3. once A's heartbeat is stale, B claims the orphans and starts them (``<attempt>.log.trigger.<B's
   job id>.log`` beside A's);
4. the emulator is let go; every task instance succeeds on its first try, every job was POSTed
   exactly once (24 POSTs, 24 distinct request ids: 20 singles + 4 batch items), nothing was
   cancelled, and the orphans' events still waited for their ``min_deferral`` hold.

Why A fills up before B starts: on SQLite (no ``SKIP LOCKED``) two triggerers that look for new
rows at the same moment can both claim one, and Airflow (up to 3.3.2) then cancels it in the one
that lost as if a user had acted on the task, calling ``on_kill``: the provider cancels the queued
job and the task fails (seen in this test's first version; see docs/trigger.md "Several
triggerers"). Claiming one after the other keeps that race out, so the test proves the hand-over.

The options are set low so the test is short: heartbeat every second, a triggerer counted dead
after 10 s. Every wait is a poll with a generous timeout; no duration is asserted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from devstack.airflow_api import TERMINAL_RUN_STATES, AirflowClient
from devstack.processes import wait_until
from devstack.seed import seed_inputs
from devstack.services import LocalStack
from devstack.tries import count_task_tries, deferral_timings
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

DAG_ID = "nanobanana_ha"
EDIT, BATCH = "edit", "batch"
N_SINGLE, N_BATCH = 20, 4
N_TRIGGERS = N_SINGLE + 1
CAPACITY_A = 8
BUCKET = "nanobanana-ha"
#: Longer than a deferral -> hand-over -> job done on the survivor, so the survivor must hold verdicts.
MIN_DEFERRAL_S = 150.0
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"
#: Nothing starts until the test says so: every trigger is still waiting when a triggerer dies.
EMULATOR_ARGS = ["--max-running", "0", "--queue-s", "0", "--run-s", "1", "--run-s-max", "4"]
AIRFLOW_ENV = {
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__TRIGGERER__CAPACITY": str(CAPACITY_A),  # the first triggerer; B is given its own
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__NANOBANANA__MIN_DEFERRAL_S": str(MIN_DEFERRAL_S),
}
_TRIGGER_LOG = re.compile(r"\.log\.trigger\.(\d+)\.log$")
TiKey = tuple[str, int]


class HAClient(AirflowClient):
    """The REST call this test needs beyond the shared client: who holds which trigger."""

    def trigger_holders(self, dag_id: str, run_id: str) -> dict[TiKey, int | None]:
        """``(task_id, map_index) -> triggerer job id`` (``None``: unclaimed) of every deferred task."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        body = self._call("GET", path, params={"limit": 1000})
        return {
            (ti["task_id"], int(ti["map_index"])): ti["trigger"]["triggerer_id"]
            for ti in body["task_instances"]
            if ti.get("state") == "deferred" and ti.get("trigger")
        }


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(
        request, f"e2e-ha-{os.getpid()}", emulator_args=EMULATOR_ARGS, airflow_env=AIRFLOW_ENV
    )


def trigger_logs(stack: LocalStack, run_id: str, key: TiKey) -> dict[int, str]:
    """Triggerer job id -> text of that triggerer's log for the task instance's first try."""
    task_id, map_index = key
    base = stack.airflow.task_log_root / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    if map_index >= 0:
        base = base / f"map_index={map_index}"
    logs = {}
    for path in base.glob("attempt=1.log.trigger.*.log"):
        if match := _TRIGGER_LOG.search(path.name):
            logs[int(match.group(1))] = path.read_text(errors="replace")
    return logs


def started_by(stack: LocalStack, run_id: str, key: TiKey, job: int) -> Callable[[], bool | None]:
    """A probe: has triggerer ``job`` logged that it started this task instance's trigger?"""
    return lambda: True if "starting" in trigger_logs(stack, run_id, key).get(job, "") else None


def poll(probe: Callable[[], Any], what: str, stack: LocalStack, timeout_s: float) -> Any:
    """Until ``probe`` returns something; an API call timing out (2 cores, a busy CI) is a "not yet"."""

    def patient() -> Any:
        try:
            return probe()
        except httpx.TransportError:
            return None

    return wait_until(patient, timeout_s=timeout_s, what=what, interval_s=1.0, alive=stack.check_alive)


def test_a_killed_triggerers_triggers_finish_on_the_survivor_without_a_second_submit(
    stack: LocalStack,
) -> None:
    s3 = stack.moto.client()
    singles = seed_inputs(s3, BUCKET, "in/", N_SINGLE)
    seed_inputs(s3, BUCKET, "batch-in/", N_BATCH)
    client = cast(
        "HAClient", HAClient.login(stack.airflow.api_url, password_file=stack.airflow.password_file)
    )
    client.wait_for_dag(DAG_ID, timeout_s=120, alive=stack.check_alive)
    run_id = client.trigger(DAG_ID, conf={"bucket": BUCKET, "inputs": [img.uri for img in singles]})

    def holders() -> dict[TiKey, int | None]:
        """Who holds which trigger; a run that has ended already fails the test at once."""
        if client.run_state(DAG_ID, run_id) in TERMINAL_RUN_STATES:
            tis = count_task_tries(client, DAG_ID, run_id).tis
            raise AssertionError(f"the run ended early: {[(t.task_id, t.map_index, t.state) for t in tis]}")
        return client.trigger_holders(DAG_ID, run_id)

    # 1. A fills up (the batch first, its priority is highest); the rest wait unclaimed for B.
    def a_full() -> dict[TiKey, int | None] | None:
        current = holders()
        claimed = [job for job in current.values() if job is not None]
        full = len(current) == N_TRIGGERS and len(claimed) == CAPACITY_A
        return current if full and stack.emulator.counters()["submits"] >= N_SINGLE + 2 else None

    first = poll(a_full, f"triggerer A to hold {CAPACITY_A} of {N_TRIGGERS} triggers", stack, timeout_s=420)
    job_a = first[(BATCH, -1)]
    assert job_a is not None, f"the batch's row must be among A's: {first}"
    orphans = {key for key, job in first.items() if job == job_a}
    assert len(orphans) == CAPACITY_A, first
    assert any(key[0] == EDIT for key in orphans), first

    stack.airflow.start_triggerer("triggerer-2", "--capacity", "1000")

    def all_held() -> dict[TiKey, int] | None:
        current = holders()
        if len(current) < N_TRIGGERS or None in current.values():
            return None
        return {key: int(job) for key, job in current.items() if job is not None}

    before = poll(all_held, "triggerer B to claim the rest", stack, timeout_s=300)
    job_b = next(job for job in before.values() if job != job_a)
    assert {key for key, job in before.items() if job == job_a} == orphans, before
    assert set(before.values()) == {job_a, job_b}, before
    for key in orphans:  # A really runs them: each one's log under A's job id says it started
        poll(started_by(stack, run_id, key, job_a), f"A to start {key}", stack, timeout_s=120)
    submits_before_kill = stack.emulator.counters()["submits"]
    print(f"A (job {job_a}) holds {len(orphans)}, B (job {job_b}) {N_TRIGGERS - len(orphans)}")

    # 2. SIGKILL A, with its runner subprocess.
    stack.airflow.kill("triggerer")

    # 3. B claims every orphan once A's heartbeat is stale, and starts it.
    def handed_over() -> bool | None:
        current = holders()
        return True if all(current.get(key) == job_b for key in orphans) else None

    poll(handed_over, "B to claim every orphaned trigger", stack, timeout_s=240)
    for key in orphans:
        poll(started_by(stack, run_id, key, job_b), f"B to start {key}", stack, timeout_s=120)
    # Restarting a single trigger sends nothing; the batch's restart re-reads its S3 claims.
    assert stack.emulator.counters()["submits"] == submits_before_kill

    # 4. Let the jobs run; B releases every task instance.
    httpx.put(f"{stack.emulator.base_url}/_emulator/config", json={"max_running": 8}, timeout=10)

    def run_ended() -> str | None:
        state = client.run_state(DAG_ID, run_id)
        return state if state in TERMINAL_RUN_STATES else None

    state = poll(run_ended, "the run to end", stack, timeout_s=600)
    tally = count_task_tries(client, DAG_ID, run_id, [EDIT, BATCH])
    assert state == "success", [(t.task_id, t.map_index, t.state, t.try_number) for t in tally.tis]
    assert tally.total == N_TRIGGERS
    assert {t.state for t in tally.tis} == {"success"}
    assert [t.try_number for t in tally.tis] == [1] * tally.total, "a task instance was run again"

    # Every work item was POSTed exactly once: as many POSTs as items, each for a distinct request.
    counters = stack.emulator.counters()
    request_ids = [
        client.xcom(DAG_ID, run_id, EDIT, key="runcomfy_request_id", map_index=i) for i in range(N_SINGLE)
    ]
    summary = client.xcom(DAG_ID, run_id, BATCH)
    print(f"batch: {summary['counts']}; emulator: {counters}")
    assert summary["succeeded"] == N_BATCH, summary
    assert counters["submits"] == counters["jobs_created"] == N_SINGLE + N_BATCH, counters
    assert len(set(request_ids)) == N_SINGLE
    assert counters["jobs_by_state"]["completed"] == N_SINGLE + N_BATCH, counters
    assert counters["cancels"] == 0, counters

    # The orphans' events came from B, and not before their min_deferral hold ended: the hold is a
    # wall-clock epoch in the kwargs, so a restart on another triggerer does not shorten it.
    timings = {
        (t.task_id, t.map_index): t
        for t in deferral_timings(stack.airflow.scheduler_log, stack.airflow.task_log_root, DAG_ID, run_id)
    }
    for key in orphans:
        logs = trigger_logs(stack, run_id, key)
        assert "Trigger fired event" in logs[job_b], key
        assert "Trigger fired event" not in logs[job_a], key
        timing = timings[key]
        assert timing.fired_at is not None, key
        # One second of slack: the worker logs the deferral just after it computed the hold.
        assert timing.fired_at >= timing.deferred_at + timedelta(seconds=MIN_DEFERRAL_S - 1), timing
    print("orphans: seconds from deferral to event:", sorted(round(timings[k].fire_s or 0) for k in orphans))
