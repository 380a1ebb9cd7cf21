"""DAG for tests/integration/test_dag_test.py: the first try dies right after its paid submit.

The retry must find that request through Airflow's own cross-try storage (the task state store on
3.3+, a Variable before) and re-attach instead of paying a second time.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator


class CrashAfterSubmit(NanoBananaEditOperator):
    """Simulates a worker dying between the submit POST and the deferral, on the first try only."""

    def _publish(self, context, request_id):  # type: ignore[no-untyped-def]
        super()._publish(context, request_id)
        if context["ti"].try_number == 1:
            raise RuntimeError(f"worker lost right after submitting {request_id}")


with DAG(
    dag_id="nanobanana_retry",
    schedule=None,
    params={"input": Param("", type="string"), "output": Param("", type="string")},
    tags=["test"],
):
    CrashAfterSubmit(
        task_id="edit",
        prompt="Add a rainbow",
        image_urls=["{{ params.input }}"],
        output_s3_uri="{{ params.output }}",
        poll_interval=0.2,
        poll_max_interval=1.0,
        timeout=120,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
