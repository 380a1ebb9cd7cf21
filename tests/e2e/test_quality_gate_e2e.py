"""Real Airflow: a blank output fails the task under the default policy and is flagged under ``keep``.

``tests/dags/nanobanana_quality.py`` runs two independent edit tasks over the same input, whose
prompt makes the emulator return a uniform black image (``[bad_output:blank]``). The run is
scheduled, deferred and finished by real Airflow processes (API server, scheduler, dag-processor,
triggerer) against the emulator and moto: ``strict`` (default ``on_bad_output="fail"``) must end
``failed`` with nothing archived, ``lenient`` (``keep``) ``success`` with the image archived and
``quality: {"0": "a uniform blank ..."}`` in its manifest. Each paid exactly one request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.airflow_api import AirflowClient
from devstack.seed import list_objects, seed_inputs
from devstack.services import LocalStack
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DAG_ID = "nanobanana_quality"
BUCKET = "nanobanana-quality"
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"
EMULATOR_ARGS = ["--queue-s", "0.5", "--run-s", "1"]
AIRFLOW_ENV = {"AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER)}


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(
        request, f"e2e-quality-{os.getpid()}", emulator_args=EMULATOR_ARGS, airflow_env=AIRFLOW_ENV
    )


def test_a_blank_output_fails_by_default_and_is_flagged_under_keep(stack: LocalStack) -> None:
    s3 = stack.moto.client()
    seed_inputs(s3, BUCKET, "in/", 1)
    client = AirflowClient.login(stack.airflow.api_url, password_file=stack.airflow.password_file)
    client.wait_for_dag(DAG_ID, timeout_s=180, alive=stack.check_alive)
    run_id = client.trigger(DAG_ID, conf={"bucket": BUCKET})
    state = client.wait_for_run(DAG_ID, run_id, timeout_s=420, interval_s=1.0)
    tis = {ti.task_id: ti.state for ti in client.task_instances(DAG_ID, run_id)}
    if tis != {"strict": "failed", "lenient": "success"}:
        print(stack.diagnostics(lines=60, task_logs=4))
    assert state == "failed"
    assert tis == {"strict": "failed", "lenient": "success"}

    # The default policy: nothing archived, and the task log says which output and why.
    assert list_objects(s3, BUCKET, "out/strict/") == []
    strict_logs = "".join(
        path.read_text(errors="replace")
        for path in (stack.airflow.task_log_root / f"dag_id={DAG_ID}" / f"run_id={run_id}").glob(
            "task_id=strict/**/*"
        )
        if path.is_file()
    )
    assert "output 0: a uniform blank" in strict_logs

    # keep: archived, and flagged in the manifest and the XCom.
    result = client.xcom(DAG_ID, run_id, "lenient")
    assert len(result["archived"]) == 1, result
    assert result["quality"]["0"].startswith("a uniform blank"), result
    manifest_key = result["manifest"].split("/", 3)[3]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert manifest["quality"] == result["quality"]
    assert manifest["paid_requests"] == 1

    counters = stack.emulator.counters()
    assert counters["submits"] == 2, counters  # one paid request per task, no resubmit
    assert counters["faults_injected"].get("bad_output_blank") == 2, counters
