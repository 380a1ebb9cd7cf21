"""The retry policy's decisions on real failures from the emulator (real HTTP)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from airflow_provider_nanobanana._compat import HAS_RETRY_POLICY
from airflow_provider_nanobanana.exceptions import RunComfyRateLimitedError
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.retry_policy import Choice, RunComfyRetryPolicy
from tests.fakes import new_context

pytestmark = pytest.mark.usefixtures("airflow_connections")


def test_a_429_with_retry_after_becomes_a_retry_after_that_long(emulator):
    """The hook spends its own short budget, then the task-level retry waits what the server asked."""
    emulator.set_faults(rate_429=1.0, retry_after_s=90, endpoints="submit")
    task = NanoBananaEditOperator(
        task_id="edit", prompt="p", image_urls=["https://images.example.com/a.png"], aws_conn_id=None
    )
    with pytest.raises(RunComfyRateLimitedError) as caught:
        task.execute(new_context())

    assert caught.value.retry_after_s == 90.0  # read from the server's header
    choice = RunComfyRetryPolicy().choose(caught.value)
    assert (choice.action, choice.delay_s) == (Choice.RETRY, 90.0)
    if HAS_RETRY_POLICY:
        decision = task.retry_policy.evaluate(caught.value, try_number=1, max_tries=3)
        assert decision.retry_delay == timedelta(seconds=90)
    counters = emulator.counters()
    assert counters["jobs_created"] == 0  # a 429 provably created nothing


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.resetdb()


def test_a_wrong_token_fails_at_once_on_3_3_and_retries_as_before_on_older(airflow_db, emulator, monkeypatch):
    """Airflow's own task runner (dag.test) applies the decision: one 401, not three."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.2
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 3.1

    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_WRONG_TOKEN",
        json.dumps({"conn_type": "runcomfy", "host": emulator.base_url, "password": "not-the-token"}),
    )
    dag = DagBag().get_dag("nanobanana_retry_policy")
    dagrun = dag.test()

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id="nanobanana_retry_policy", run_id=dagrun.run_id)
            .one()
        )
        state, tries = ti.state, ti.try_number
    assert state == "failed"
    expected_tries = 1 if HAS_RETRY_POLICY else 3  # retries=2: before 3.3 Airflow uses them all
    assert tries == expected_tries
    assert emulator.counters()["auth_failures"] == expected_tries
    assert emulator.counters()["jobs_created"] == 0
