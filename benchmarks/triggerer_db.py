"""``python -m benchmarks.triggerer_db ARGS_JSON``: N deferred task instances in a fresh metadata DB.

Run as a child whose environment already holds the benchmark's ``AIRFLOW_HOME`` and
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` (a database just made by ``airflow db migrate``). It does what
the dag-processor and a worker's ``defer()`` would have done, through Airflow's own ORM models, the
way Airflow's tests do it (``airflow-core/tests/unit/jobs/test_triggerer_job.py``,
``create_trigger_in_db``):

* parses ``benchmarks/dags/nb_triggerer_bench.py`` with ``DagBag`` and syncs it (``sync_bag_to_db``:
  DAG model, serialized DAG, DAG version) into the ``dags-folder`` bundle;
* one manual, running DAG run; its ``prompts`` task instance ``success``;
* N task instances of the mapped ``edit`` task (map index 0..N-1), each ``deferred`` like
  ``TIDeferredStatePayload`` leaves them (try 1, ``next_method="execute_complete"``, a
  ``trigger_timeout``) and pointing at its own ``trigger`` row, made with ``Trigger.from_object``
  (the trigger's own ``serialize()``, encrypted with the Fernet key).

Prints one ``RESULT {json}`` line: ids, timings, and the map index -> request id table.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

DAG_ID = "nb_triggerer_bench"
TASK_ID = "edit"
RUN_ID = "nb_triggerer_bench__manual"
BUNDLE = "dags-folder"
DEADLINE_S = 4 * 3600.0


def make_trigger(variant: str, request_id: str | None, deadline: float) -> Any:
    if variant == "ours":
        from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

        # What the operator defers with (its poll defaults); no release hold: the jobs are old.
        assert request_id is not None
        return RunComfyJobTrigger(
            request_id=request_id,
            deadline_epoch_s=deadline,
            poll_interval_s=2.0,
            poll_max_s=30.0,
            release_not_before_epoch_s=None,
        )
    if variant == "peer":
        from benchmarks.peer_trigger import PeerStyleTrigger

        assert request_id is not None
        return PeerStyleTrigger(request_id=request_id, deadline_epoch_s=deadline, poll_interval_s=5.0)
    if variant == "timedelta":
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        return TimeDeltaTrigger(dt.timedelta(days=1))
    raise ValueError(f"unknown variant {variant!r}")


def populate(args: dict[str, Any]) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag_version import DagVersion
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunType

    t0 = time.monotonic()
    variant, n = str(args["variant"]), int(args["n"])
    request_ids: list[str | None] = list(args.get("request_ids") or [None] * n)
    assert len(request_ids) == n, "one request id per task instance"

    bag = DagBag(dag_folder=str(args["dags_folder"]))
    if DAG_ID not in bag.dags:
        raise RuntimeError(f"{DAG_ID} did not parse: {bag.import_errors}")
    with create_session() as session:
        session.merge(DagBundleModel(name=BUNDLE))
    sync_bag_to_db(bag, BUNDLE, None)
    t_dag = time.monotonic()

    now = dt.datetime.now(dt.timezone.utc)
    deadline = time.time() + DEADLINE_S
    with create_session() as session:
        serialized = SerializedDagModel.get(DAG_ID, session=session)
        assert serialized is not None
        sdag = serialized.dag
        version = DagVersion.get_latest_version(DAG_ID, session=session)
        assert version is not None
        run = DagRun(
            dag_id=DAG_ID,
            run_id=RUN_ID,
            logical_date=now,
            data_interval=(now, now),
            run_after=now,
            start_date=now,
            run_type=DagRunType.MANUAL,
            state=DagRunState.RUNNING,
        )
        if hasattr(run, "created_dag_version_id"):
            run.created_dag_version_id = version.id
        session.add(run)

        upstream = TaskInstance(
            sdag.get_task("prompts"),
            dag_version_id=version.id,
            run_id=RUN_ID,
            state=TaskInstanceState.SUCCESS,
        )
        upstream.try_number = 1
        upstream.start_date = upstream.end_date = now
        session.add(upstream)

        triggers = [Trigger.from_object(make_trigger(variant, rid, deadline)) for rid in request_ids]
        session.add_all(triggers)
        session.flush()
        t_triggers = time.monotonic()

        edit = sdag.get_task(TASK_ID)
        timeout = now + dt.timedelta(seconds=DEADLINE_S)
        for index, trigger in enumerate(triggers):
            ti = TaskInstance(
                edit,
                dag_version_id=version.id,
                run_id=RUN_ID,
                map_index=index,
                state=TaskInstanceState.DEFERRED,
            )
            ti.try_number = 1
            ti.start_date = ti.queued_dttm = now
            ti.trigger_id = trigger.id
            ti.next_method = "execute_complete"
            ti.next_kwargs = None
            ti.trigger_timeout = timeout
            session.add(ti)
        session.commit()
    classpath = triggers[0].classpath if triggers else ""
    return {
        "variant": variant,
        "n": n,
        "classpath": classpath,
        "dag_sync_s": round(t_dag - t0, 2),
        "trigger_rows_s": round(t_triggers - t_dag, 2),
        "total_s": round(time.monotonic() - t0, 2),
        "request_id_by_map_index": request_ids,
    }


def main(argv: list[str]) -> int:
    args = json.loads(Path(argv[0]).read_text()) if argv[0].endswith(".json") else json.loads(argv[0])
    from benchmarks.child import write_result

    write_result(populate(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
