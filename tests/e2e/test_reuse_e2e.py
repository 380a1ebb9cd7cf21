"""Real Airflow: the same DAG run twice over the same images with ``reuse_outputs=True`` pays once.

``tests/dags/nanobanana_reuse.py`` edits two images with a mapped ``NanoBananaEditOperator`` and with
one ``NanoBananaBatchEditOperator``. Run 1 is scheduled, deferred and archived by real Airflow
processes (API server, scheduler, dag-processor, triggerer) against the emulator and moto: 4 paid
requests (2 single, 2 batch), counted as POSTs at the emulator. Run 2 (a new DAG run, so new keys)
must send no POST at all, say ``reused: true`` (single) / ``reused: 2`` (batch) in its XCom, and
archive byte-identical outputs under its own run folder. One stack for the whole test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.airflow_api import AirflowClient
from devstack.seed import seed_inputs
from devstack.services import LocalStack
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DAG_ID = "nanobanana_reuse"
BUCKET = "nanobanana-reuse"
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"
EMULATOR_ARGS = ["--queue-s", "0.5", "--run-s", "1"]
#: Every single edit defers (no wait on the worker), so its archive runs in a new worker process and
#: must find the fingerprint ``execute`` computed through XCom, as in a deployment with slow jobs.
AIRFLOW_ENV = {
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S": "0",
}


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(
        request, f"e2e-reuse-{os.getpid()}", emulator_args=EMULATOR_ARGS, airflow_env=AIRFLOW_ENV
    )


def run_once(stack: LocalStack, client: AirflowClient, run_id: str) -> None:
    client.trigger(DAG_ID, run_id=run_id)
    state = client.wait_for_run(DAG_ID, run_id, timeout_s=240, interval_s=1.0)
    if state != "success":
        print(stack.diagnostics(lines=60, task_logs=4))
    assert state == "success", run_id


def read(s3: Any, uri: str) -> bytes:
    data: bytes = s3.get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["Body"].read()
    return data


def test_a_second_run_over_the_same_images_pays_nothing_and_archives_the_same_outputs(
    stack: LocalStack,
) -> None:
    s3 = stack.moto.client()
    seed_inputs(s3, BUCKET, "in/", 2)
    client = AirflowClient.login(stack.airflow.api_url, password_file=stack.airflow.password_file)
    client.wait_for_dag(DAG_ID, timeout_s=180, alive=stack.check_alive)

    run_once(stack, client, "first")
    assert stack.emulator.counters()["submits"] == 4  # 2 mapped single edits + a batch of 2
    run_once(stack, client, "second")
    counters = stack.emulator.counters()
    assert counters["submits"] == 4, counters  # the second run sent no POST

    for map_index in (0, 1):
        first = client.xcom(DAG_ID, "first", "edit", map_index=map_index)
        second = client.xcom(DAG_ID, "second", "edit", map_index=map_index)
        assert first["reused"] is False
        assert second["reused"] is True, second
        assert second["reused_from"]["request_id"] == first["request_id"]
        assert all("/second/" in uri for uri in second["archived"])
        assert [read(s3, u) for u in second["archived"]] == [read(s3, u) for u in first["archived"]]
        manifest = json.loads(read(s3, second["manifest"]))
        assert manifest["reused_from"]["request_id"] == first["request_id"]

    first_batch = client.xcom(DAG_ID, "first", "batch")
    second_batch = client.xcom(DAG_ID, "second", "batch")
    assert first_batch["reused"] == 0
    assert second_batch["reused"] == second_batch["succeeded"] == 2, second_batch
    items = {i["id"]: i for i in json.loads(read(s3, first_batch["manifest"]))["items"]}
    for item in json.loads(read(s3, second_batch["manifest"]))["items"]:
        assert item["reused_from"] == items[item["id"]]["request_id"]
        assert read(s3, item["archived"][0]) == read(s3, items[item["id"]]["archived"][0])
