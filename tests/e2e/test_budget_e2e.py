"""Real Airflow: a batch of 50 with ``max_paid_requests=20`` pays for exactly 20, across a triggerer
SIGKILL + restart and a task retry.

``tests/dags/nanobanana_budget.py`` runs one ``NanoBananaBatchEditOperator`` (4 in flight) whose first
try has a short batch timeout. The emulator starts with nothing running (``--max-running 0``), so:

1. try 1 defers; its trigger claims, reserves and POSTs 4 items, which stay queued;
2. the triggerer is SIGKILLed (no clean stop) and a new one started; it picks the trigger up once the
   old one's heartbeat is stale and resumes from the S3 checkpoint, claims and ledger;
3. try 1's deadline passes: the task fails and Airflow retries it. Try 2 resumes the same checkpoint
   under a new generation and spends from the same ledger (``.../_batch/budget.json``);
4. the emulator is let go. Exactly 20 POSTs reach it (its counter, not a log line); items 21..50 end
   ``skipped_budget`` (unpaid, not failed) and the run succeeds on try 2.

Every wait is a poll with a generous timeout; no duration is asserted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.airflow_api import AirflowClient
from devstack.processes import wait_until
from devstack.seed import seed_inputs
from devstack.services import LocalStack
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

DAG_ID, TASK_ID = "nanobanana_budget", "batch"
BUCKET = "nanobanana-budget"
N_ITEMS, BUDGET, IN_FLIGHT = 50, 20, 4
#: Long enough for the kill, the restart and the hand-over; try 1 then times out on the new triggerer
#: (or, if the hand-over is slower, as soon as the new triggerer runs it): either way a retry.
FIRST_TRY_TIMEOUT_S = 120
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"
EMULATOR_ARGS = ["--max-running", "0", "--queue-s", "0", "--run-s", "0.5"]
AIRFLOW_ENV = {
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__NANOBANANA__MIN_DEFERRAL_S": "0",
    "AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S": "0",
}
_TRIGGER_LOG = re.compile(r"\.log\.trigger\.(\d+)\.log$")


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(
        request, f"e2e-budget-{os.getpid()}", emulator_args=EMULATOR_ARGS, airflow_env=AIRFLOW_ENV
    )


def try_number(client: AirflowClient, run_id: str) -> tuple[int, str | None]:
    (ti,) = [t for t in client.task_instances(DAG_ID, run_id) if t.task_id == TASK_ID]
    return ti.try_number, ti.state


def trigger_jobs(stack: LocalStack, run_id: str, attempt: int) -> set[int]:
    """Triggerer job ids that wrote a log for this try's trigger."""
    base = stack.airflow.task_log_root / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={TASK_ID}"
    return {
        int(m.group(1))
        for path in base.glob(f"attempt={attempt}.log.trigger.*.log")
        if (m := _TRIGGER_LOG.search(path.name))
    }


def active_items(s3) -> int:  # type: ignore[no-untyped-def]
    """Items the batch checkpoint records as submitted (active, with a request id)."""
    keys = [
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/").get("Contents", [])
        if obj["Key"].endswith("/_batch/state.json")
    ]
    if not keys:
        return 0
    state = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    return sum(1 for item in state["items"] if item["state"] == "active" and item["request_id"])


def test_a_batch_of_50_with_a_budget_of_20_pays_for_20_across_a_triggerer_restart_and_a_retry(
    stack: LocalStack,
) -> None:
    s3 = stack.moto.client()
    seed_inputs(s3, BUCKET, "in/", N_ITEMS)
    client = AirflowClient.login(stack.airflow.api_url, password_file=stack.airflow.password_file)
    client.wait_for_dag(DAG_ID, timeout_s=180, alive=stack.check_alive)
    run_id = client.trigger(DAG_ID, conf={"bucket": BUCKET, "first_try_timeout_s": FIRST_TRY_TIMEOUT_S})

    def poll(probe, what: str, timeout_s: float):  # type: ignore[no-untyped-def]
        return wait_until(probe, timeout_s=timeout_s, what=what, interval_s=1.0, alive=stack.check_alive)

    # 1. try 1's trigger has sent what may be in flight (all queued: nothing runs yet).
    poll(
        lambda: True if stack.emulator.counters()["submits"] >= IN_FLIGHT else None,
        f"try 1 to submit {IN_FLIGHT} items",
        timeout_s=420,
    )
    first_try, _ = try_number(client, run_id)  # 1, unless Airflow lost a try before it started
    # ... and recorded them (so the kill lands between POSTs, not inside one: a POST cut off there
    # would rightly end "submit_unknown", never resent, and this test is about the budget).
    poll(lambda: True if active_items(s3) >= IN_FLIGHT else None, "the checkpoint to record them", 120)
    first_jobs = trigger_jobs(stack, run_id, first_try)

    # 2. SIGKILL the triggerer (children included) and start a new one.
    stack.airflow.kill("triggerer")
    stack.airflow.start_triggerer("triggerer-2")
    poll(
        lambda: True if trigger_jobs(stack, run_id, first_try) - first_jobs else None,
        "the new triggerer to pick up try 1's batch trigger",
        timeout_s=300,
    )
    assert stack.emulator.counters()["submits"] == IN_FLIGHT  # the restart re-read the claims

    # 3. try 1 times out and fails; Airflow runs try 2, which defers again.
    def retried_and_deferred() -> bool | None:
        number, state = try_number(client, run_id)
        return True if number > first_try and state == "deferred" else None

    poll(retried_and_deferred, "a retry to resume the batch and defer", timeout_s=420)

    # 4. let the jobs run.
    httpx.put(f"{stack.emulator.base_url}/_emulator/config", json={"max_running": 8}, timeout=10)
    state = client.wait_for_run(DAG_ID, run_id, timeout_s=900, interval_s=2.0)
    counters = stack.emulator.counters()
    summary = client.xcom(DAG_ID, run_id, TASK_ID)
    print(f"batch: {summary}; emulator: {counters}")
    assert state == "success", try_number(client, run_id)
    assert try_number(client, run_id)[0] > first_try
    assert counters["submits"] == counters["jobs_created"] == BUDGET, counters
    assert summary["counts"] == {"archived": BUDGET, "skipped_budget": N_ITEMS - BUDGET}, summary

    manifest_key = summary["manifest"].split("/", 3)[3]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    skipped = [item for item in manifest["items"] if item["state"] == "skipped_budget"]
    assert len(skipped) == N_ITEMS - BUDGET
    assert all(item["request_id"] is None for item in skipped)
    ledger_key = summary["checkpoint"].split("/", 3)[3].replace("state.json", "budget.json")
    ledger = json.loads(s3.get_object(Bucket=BUCKET, Key=ledger_key)["Body"].read())
    held = [r for r in ledger["reservations"].values() if not r["released"]]
    assert len(held) == BUDGET, ledger
