"""A mapped, templated DAG through Airflow's own dag.test(): the deferral really happens."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

pytestmark = pytest.mark.usefixtures("airflow_connections")


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.resetdb()


def test_mapped_deferrable_edits_through_dag_test(airflow_db, emulator, moto_s3, s3_bucket, monkeypatch):
    from airflow.models import TaskInstance
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tests.conftest import png_bytes

    emulator.configure(queue_s=1.0, run_s=0.5, max_running=2)
    s3 = moto_s3.client()
    inputs = []
    for i, colour in enumerate([(255, 0, 0), (0, 160, 0), (0, 0, 255)]):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{i}.png", Body=png_bytes(colour), ContentType="image/png")
        inputs.append(f"s3://{s3_bucket}/in/{i}.png")

    triggered: list[str] = []
    real_run = RunComfyJobTrigger.run

    def counting_run(self):
        triggered.append(self.request_id)
        return real_run(self)

    monkeypatch.setattr(RunComfyJobTrigger, "run", counting_run)

    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.2
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 3.1

    dag = DagBag().get_dag("nanobanana_dagtest")
    dagrun = dag.test(run_conf={"inputs": inputs, "output": f"s3://{s3_bucket}/out/"})
    assert dagrun.state == "success"

    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter_by(dag_id="nanobanana_dagtest", run_id=dagrun.run_id, task_id="edit")
            .all()
        )
        assert sorted(ti.map_index for ti in tis) == [0, 1, 2]
        assert {ti.state for ti in tis} == {"success"}
        values = [
            XComModel.deserialize_value(x)
            for x in session.query(XComModel).filter_by(
                dag_id="nanobanana_dagtest", run_id=dagrun.run_id, task_id="edit", key="return_value"
            )
        ]
        # Through the model's own reader: Airflow 3.4 keeps one row per attempt, keyed by the task
        # instance attempt, instead of dag_id/task_id/run_id/map_index columns.
        rendered = {
            ti.map_index: RenderedTaskInstanceFields.get_templated_fields(ti, session=session)["prompt"]
            for ti in tis
        }

    assert len(values) == 3
    assert all(v["status"] == "completed" and len(v["archived"]) == 1 for v in values)
    assert rendered[2] == "Repaint image 2 as a watercolour"
    assert len(triggered) == 3  # each mapped task really deferred to the trigger
    assert sorted(triggered) == sorted(v["request_id"] for v in values)
    assert emulator.counters()["jobs_created"] == 3


def test_a_retry_after_a_crash_reattaches_through_airflows_own_storage(
    airflow_db, emulator, moto_s3, s3_bucket
):
    """Real cross-try storage: the task state store on Airflow 3.3+, a Variable on older 3.x."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    from tests.conftest import png_bytes

    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.2
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 3.1

    emulator.configure(queue_s=1.0, run_s=0.5)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="in/r.png", Body=png_bytes(), ContentType="image/png")
    dag = DagBag().get_dag("nanobanana_retry")
    dagrun = dag.test(run_conf={"input": f"s3://{s3_bucket}/in/r.png", "output": f"s3://{s3_bucket}/out/"})

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id="nanobanana_retry", run_id=dagrun.run_id).one()
        assert ti.try_number == 2  # the first try really failed after submitting
        assert ti.state == "success"
    assert dagrun.state == "success"
    assert emulator.counters()["jobs_created"] == 1  # the retry re-attached: one paid job
