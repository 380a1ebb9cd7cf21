"""Stress through real Airflow: 40 deferred edits whose jobs finish 0-5 s after submit (issue #14).

Airflow's defer-exit race: when a deferred task's trigger fires within seconds, the scheduler may
queue the task instance again before it has drained the stale "success" executor event of the
worker's exit after ``defer()``. It then logs ``Executor ... reported that the task instance <...>
finished with state success, but the task instance's state attribute is queued`` and fails the try.
The provider must keep that from happening: the trigger does not fire before ``min_deferral_s``
has passed since the deferral (``[nanobanana] min_deferral_s``).

Measured here (Airflow 3.3.2, 2 cores): the scheduler usually drains that event within about 1 s,
but now and then the worker's supervisor notices the task process has exited only at its next
``[workers] min_heartbeat_interval`` wake-up (5 s), and the scheduler handled the stale event up to
8.1 s after the deferral. Triggers of jobs this fast fire 1-6 s after the deferral.

The stack is the production shape minus the network: LocalExecutor, API server, scheduler,
dag-processor and triggerer as separate processes. To test the trigger-side guard, the operator's
wait on the worker is switched off (``AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S=0``), so every task
defers and fast jobs fire their triggers within seconds. ``retries`` of the edit task is forced to
0 by a cluster policy (the example DAG sets 1), so a lost try fails the run instead of hiding in a
retry; the test also requires ``try_number == 1`` everywhere, which would catch a retry anyway.

For experiments, ``NANOBANANA_E2E_AIRFLOW_ENV`` adds Airflow settings to the stack, e.g.
``NANOBANANA_E2E_AIRFLOW_ENV='{"AIRFLOW__NANOBANANA__MIN_DEFERRAL_S": "0"}'`` reproduces the race.
Run with ``-s`` to see the try count and the deferral -> executor event timings on success too.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.airflow_api import AirflowClient, TaskInstanceState
from devstack.enrichment import DAG_ID, EDIT_TASK_ID, format_states, trigger_enrichment
from devstack.seed import list_objects, seed_inputs
from devstack.services import LocalStack
from devstack.tries import (
    count_task_tries,
    deferral_timings,
    describe_affected,
    format_timings,
    format_tries,
    scan_scheduler_log,
)
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(720)]

N_IMAGES = 40
BUCKET = "nanobanana-race"
CONF = {
    "bucket": BUCKET,
    "input_prefix": "in/",
    "output_prefix": "out/",
    "prompt": "Make it look like a pencil sketch",
    "max_images": N_IMAGES,
}
#: Every job starts at once and completes 0-5 s after its submit (seeded, uniform).
EMULATOR_ARGS = ["--max-running", str(N_IMAGES), "--queue-s", "0", "--run-s", "0", "--run-s-max", "5"]
#: Defer at once: the race is about triggers that fire seconds after the deferral. The stack keeps
#: devstack's AIRFLOW__CORE__PARALLELISM=4: measured on 2 cores it loses 6 of 40 tries to the race
#: on unguarded code, against 1 of 40 with 8 slots, and the whole test takes about 2.5 minutes.
AIRFLOW_ENV = {"AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S": "0"}
#: A cluster policy, so the example DAG's ``retries=1`` on the edit task becomes 0 in this stack only.
LOCAL_SETTINGS = f'''
def task_policy(task):
    if task.dag_id == "{DAG_ID}" and task.task_id == "{EDIT_TASK_ID}":
        task.retries = 0
'''
RUN_TIMEOUT_S = 540.0


def stack_airflow_env() -> dict[str, str]:
    extra = json.loads(os.environ.get("NANOBANANA_E2E_AIRFLOW_ENV") or "{}")
    return {**AIRFLOW_ENV, **{str(k): str(v) for k, v in extra.items()}}


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(
        request,
        f"e2e-race-{os.getpid()}",
        emulator_args=EMULATOR_ARGS,
        airflow_env=stack_airflow_env(),
        local_settings=LOCAL_SETTINGS,
    )


@contextlib.contextmanager
def race_report(stack: LocalStack, client: AirflowClient, run: dict[str, str]) -> Iterator[None]:
    """Always print tries and timings; on failure also the mismatch lines and the service log tails."""
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if run.get("run_id"):
            run_id = run["run_id"]
            with contextlib.suppress(Exception):  # the report must never mask the real failure
                tally = count_task_tries(client, DAG_ID, run_id, [EDIT_TASK_ID])
                scan = scan_scheduler_log(stack.airflow.scheduler_log)
                print(f"\n{EDIT_TASK_ID} {format_tries(tally, scan)}")
                print("\n".join(describe_affected(tally)))
                timings = deferral_timings(
                    stack.airflow.scheduler_log, stack.airflow.task_log_root, DAG_ID, run_id
                )
                print("\n".join(format_timings(timings)))
                print("\n".join(line[:400] for line in scan.mismatch_lines[:10]))
        if failed:
            print(f"\n===== logs of the failed run (all files under {stack.run_dir}) =====")
            print(stack.diagnostics(lines=60, task_logs=8))


def test_fast_triggers_never_lose_a_try_to_the_defer_exit_race(stack: LocalStack) -> None:
    s3 = stack.moto.client()
    seeded = seed_inputs(s3, BUCKET, CONF["input_prefix"], N_IMAGES)
    client = stack.airflow.client()
    run: dict[str, str] = {}
    with race_report(stack, client, run):
        client.wait_for_dag(DAG_ID, timeout_s=120, alive=stack.check_alive)
        assert client.task(DAG_ID, EDIT_TASK_ID)["retries"] == 0, "the cluster policy did not apply"
        run["run_id"] = run_id = trigger_enrichment(client, CONF, alive=stack.check_alive)

        history: list[str] = []
        deferred_seen: set[int] = set()

        def on_poll(run_state: str, tis: list[TaskInstanceState]) -> None:
            stack.check_alive()
            history.append(f"{run_state} | {format_states(tis)}")
            deferred_seen.update(ti.map_index for ti in tis if ti.state == "deferred")

        state = client.wait_for_run(DAG_ID, run_id, timeout_s=RUN_TIMEOUT_S, on_poll=on_poll, interval_s=1.0)

        # 1. No try was lost: every edit succeeded on its first try, and the scheduler saw no mismatch.
        tally = count_task_tries(client, DAG_ID, run_id, [EDIT_TASK_ID])
        scan = scan_scheduler_log(stack.airflow.scheduler_log)
        assert tally.total == N_IMAGES, history[-5:]
        assert not tally.affected, describe_affected(tally)
        assert [ti.try_number for ti in tally.tis] == [1] * N_IMAGES
        assert {ti.state for ti in tally.tis} == {"success"}
        assert not scan.mismatch_lines, scan.mismatch_lines[:5]
        assert not scan.up_for_retry_lines, scan.up_for_retry_lines[:5]
        assert state == "success", "\n".join(history[-10:])

        # 2. The test exercised the race: the edits really deferred and their triggers resumed them.
        timings = deferral_timings(stack.airflow.scheduler_log, stack.airflow.task_log_root, DAG_ID, run_id)
        assert len(timings) >= N_IMAGES // 2, (len(timings), sorted(deferred_seen))

        # 3. One paid request per image, and every output archived with its manifest.
        counters = stack.emulator.counters()
        assert counters["submits"] == N_IMAGES, counters
        assert counters["jobs_created"] == N_IMAGES, counters
        assert counters["jobs_by_state"]["completed"] == N_IMAGES, counters
        results: list[dict[str, Any]] = [
            client.xcom(DAG_ID, run_id, EDIT_TASK_ID, map_index=i) for i in range(N_IMAGES)
        ]
        assert len({r["request_id"] for r in results}) == N_IMAGES
        keys = list_objects(s3, BUCKET, CONF["output_prefix"])
        manifests = sorted(f"s3://{BUCKET}/{k}" for k in keys if k.endswith(".manifest.json"))
        images = sorted(f"s3://{BUCKET}/{k}" for k in keys if not k.endswith(".manifest.json"))
        assert sorted(uri for r in results for uri in r["archived"]) == images
        assert sorted(r["manifest"] for r in results) == manifests
        assert len(images) == N_IMAGES
        summary = client.xcom(DAG_ID, run_id, "summarize")
        assert summary["requests"] == N_IMAGES
        assert len(seeded) == N_IMAGES
