"""A real deferral (emulator) through Airflow's own task runner and trigger table: the trigger row
carries ``triggerer_queue``, and only a triggerer started with ``--queues`` that name picks it up.

A triggerer started with ``airflow triggerer --queues q`` runs the rows ``Trigger.ids_for_triggerer(id,
queues={q})`` returns (and assigns itself rows through the same ``queue`` filter); a plain triggerer
passes ``queues=None``. Both are asked here, on the real metadata database, about the row the
execution API creates from the worker's ``DeferTask`` message.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_nanobanana._compat import TaskDeferred
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from tests.fakes import new_context

pytestmark = pytest.mark.usefixtures("airflow_connections")

try:  # Airflow >= 3.2
    from airflow.models.trigger import Trigger

    HAS_TRIGGER_QUEUES = "queue" in Trigger.__table__.columns
except ImportError:  # pragma: no cover
    HAS_TRIGGER_QUEUES = False


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.resetdb()


def _deferral(emulator, monkeypatch):
    """Submit for real, then let Airflow's task runner turn the deferral into its DeferTask."""
    import structlog
    from airflow.sdk.execution_time.task_runner import _defer_task

    monkeypatch.setenv("AIRFLOW__TRIGGERER__QUEUES_ENABLED", "True")
    emulator.configure(queue_s=30, run_s=1)  # still queued when the task defers
    task = NanoBananaEditOperator(
        task_id="edit",
        prompt="p",
        image_urls=["https://images.example.com/a.png"],
        aws_conn_id=None,
        triggerer_queue="nanobanana",
        timeout=60,
    )
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(new_context())
    ti = SimpleNamespace(task=task, dag_id="d", task_id="edit", run_id="r")
    msg, state = _defer_task(deferred.value, ti, structlog.get_logger())
    assert state == "deferred"
    return task, msg


def test_the_trigger_row_carries_the_queue_and_only_that_triggerer_takes_it(
    airflow_db, emulator, monkeypatch
):
    from airflow.utils.session import create_session

    task, msg = _deferral(emulator, monkeypatch)
    assert task.queue == "nanobanana" or not HAS_TRIGGER_QUEUES
    if not HAS_TRIGGER_QUEUES:  # Airflow 3.1: no trigger queues; the deferral is Airflow's usual one
        assert getattr(msg, "queue", None) is None
        return
    assert msg.queue == "nanobanana"
    assert msg.classpath.endswith("RunComfyJobTrigger")
    assert emulator.counters()["jobs_created"] == 1

    with create_session() as session:
        row = Trigger(classpath=msg.classpath, kwargs={}, queue=msg.queue)  # as the execution API does
        session.add(row)
        session.flush()
        row.triggerer_id = 202  # assigned to a triggerer: which ones will run it?
        session.flush()
        assert Trigger.ids_for_triggerer(202, queues={"nanobanana"}, session=session) == [row.id]
        assert Trigger.ids_for_triggerer(202, queues=None, session=session) == []  # a plain triggerer
        assert Trigger.ids_for_triggerer(202, queues={"default"}, session=session) == []
        session.rollback()
