"""End to end: ``nanobanana_review`` on real Airflow: a batch edit, a review contact sheet, a person's
approval through the REST API, then (and only then) the reviewed-edits Asset event.

One stack, two runs: the first is approved (the Asset event is emitted, with the report in its
extra), the second is rejected (``publish`` is skipped and no Asset event exists for that run).
The approval goes through ``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/approve/-1/
hitlDetails``, as the UI's Required actions page sends it. On Airflow 3.3 the waiting task is in
``awaiting_input``; before 3.3 it is ``deferred`` on the HITL trigger: both are accepted.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from devstack.airflow_api import AirflowClient
from devstack.seed import read_object, seed_inputs
from devstack.services import LocalStack
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DAG_ID = "nanobanana_review"
BUCKET = "nanobanana-review-e2e"
N_IMAGES = 3
WAITING_FOR_A_PERSON = {"awaiting_input", "deferred"}
EMULATOR_ARGS = ["--max-running", "3", "--queue-s", "0.5", "--run-s", "1"]
RUN_TIMEOUT_S = 300.0


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(request, f"review-{os.getpid()}", emulator_args=EMULATOR_ARGS)


def wait_for_approval_request(client: AirflowClient, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Until the ``approve`` task waits for a person; fails at once if the run ends first."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        try:
            states = {ti.task_id: ti.state for ti in client.task_instances(DAG_ID, run_id)}
        except httpx.TimeoutException:  # a loaded CI machine: the API server answers late, not wrongly
            continue
        if states.get("approve") in WAITING_FOR_A_PERSON:
            return
        run_state = client.run_state(DAG_ID, run_id)
        assert run_state not in {"success", "failed"}, f"run ended {run_state} before the approval: {states}"
        time.sleep(1.0)
    raise TimeoutError(f"approve never waited for a person: {states}")


def wait_for_worker_exit(stack: LocalStack, run_id: str, timeout_s: float = 60.0) -> None:
    """Until the scheduler has handled the executor's event of the worker that parked ``approve``.

    An answer given before that hits Airflow's defer-exit race for ``awaiting_input`` (seen on
    3.3.2): the resumed task is queued again while the stale "success" event of the parked try is
    still pending, and the scheduler fails the try. A person never answers within those seconds;
    a script must wait for this (docs/report.md).
    """
    needle = f"task_id='approve', run_id='{run_id}'"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = stack.airflow.scheduler_log
        text = log.read_text(errors="replace") if log.exists() else ""
        if any("Received executor event" in line and needle in line for line in text.splitlines()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the scheduler never handled the parked approve try of {run_id}")


def start_run(stack: LocalStack, client: AirflowClient, output_prefix: str) -> str:
    conf = {"bucket": BUCKET, "input_prefix": "in/", "output_prefix": output_prefix, "sample_size": 2}
    run_id = client.trigger(DAG_ID, conf=conf)
    wait_for_approval_request(client, run_id)
    wait_for_worker_exit(stack, run_id)
    return run_id


def assert_is_png(s3: Any, uri: str) -> None:
    with Image.open(io.BytesIO(read_object(s3, uri))) as image:
        assert image.format == "PNG", uri


def test_an_approved_review_publishes_and_a_rejected_one_does_not(stack: LocalStack) -> None:
    s3 = stack.moto.client()
    seed_inputs(s3, BUCKET, "in/", N_IMAGES)
    client = stack.airflow.client()
    client.wait_for_dag(DAG_ID, timeout_s=120, alive=stack.check_alive)
    client.unpause(DAG_ID)

    # -- run 1: approved --------------------------------------------------------------------------
    approved = start_run(stack, client, "out/")
    batch = client.xcom(DAG_ID, approved, "edit_batch")
    review = client.xcom(DAG_ID, approved, "sample_for_review")
    assert (batch["total"], batch["succeeded"]) == (N_IMAGES, N_IMAGES)
    folder = batch["manifest"].rsplit("/", 1)[0]
    assert batch["report"]["html"] == f"{folder}/contact_sheet.html"
    assert review["html"] == f"{folder}/review/contact_sheet.html"
    assert review["shown"] == 2, "two of three successes sampled"
    for report in (batch["report"], review):
        html = read_object(s3, report["html"]).decode()
        assert "Signature" not in html
        assert_is_png(s3, report["png"])
    detail = client.hitl_detail(DAG_ID, approved, "approve")
    assert detail["options"] == ["Approve", "Reject"]
    assert review["url"] in detail["body"], "the reviewer is sent to the contact sheet"
    assert client.asset_events(source_dag_id=DAG_ID, source_run_id=approved) == [], "nothing before approval"

    client.respond_hitl(DAG_ID, approved, "approve", ["Approve"])
    assert client.wait_for_run(DAG_ID, approved, timeout_s=RUN_TIMEOUT_S) == "success"
    (event,) = client.asset_events(source_dag_id=DAG_ID, source_run_id=approved)
    assert event["uri"].startswith("s3://nanobanana-demo/reviewed")
    assert event["source_task_id"] == "publish"
    assert event["extra"]["report"] == review["html"]
    assert event["extra"]["manifest"] == batch["manifest"]
    assert event["extra"]["approved_by"] == "admin"

    # -- run 2: rejected ----------------------------------------------------------------------------
    rejected = start_run(stack, client, "out2/")
    client.respond_hitl(DAG_ID, rejected, "approve", ["Reject"])
    assert client.wait_for_run(DAG_ID, rejected, timeout_s=RUN_TIMEOUT_S) == "success"
    states = {ti.task_id: ti.state for ti in client.task_instances(DAG_ID, rejected)}
    assert states["publish"] == "skipped", states
    assert client.asset_events(source_dag_id=DAG_ID, source_run_id=rejected) == []

    assert stack.emulator.counters()["jobs_created"] == 2 * N_IMAGES, "one paid job per image and run"
