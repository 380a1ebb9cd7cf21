"""DAG for tests/e2e/test_quality_gate_e2e.py: the same blank output under two ``on_bad_output`` policies.

The prompt carries the emulator's ``[bad_output:blank]`` marker, so each task's one request returns
a uniform black image. ``strict`` keeps the default policy (the task fails, nothing archived);
``lenient`` uses ``keep`` (archived, flagged in the manifest). The two are independent.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(
    dag_id="nanobanana_quality",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    params={"bucket": Param("nanobanana-quality", type="string")},
    tags=["test"],
):
    for task_id, policy in (("strict", "fail"), ("lenient", "keep")):
        NanoBananaEditOperator(
            task_id=task_id,
            prompt="Make it look like a pencil sketch [bad_output:blank]",
            image_urls=["s3://{{ params.bucket }}/in/input-01.png"],
            output_s3_uri=f"s3://{{{{ params.bucket }}}}/out/{task_id}/",
            on_bad_output=policy,
            poll_interval=0.5,
            poll_max_interval=1.0,
            timeout=300,
            retries=0,
        )
