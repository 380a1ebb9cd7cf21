"""DAG for tests/e2e/test_triggerer_ha.py: deferred edits spread over two triggerers, one of them killed.

Twenty mapped single edits (one ``RunComfyJobTrigger`` each) and one small batch (one
``RunComfyBatchTrigger`` submitting its items with S3 claims) wait at the same time, so Airflow's HA
triggerers split their trigger rows and the killed one leaves orphans for the survivor. Nothing
retries (``retries=0``): a lost trigger or a second submit must fail the run, not hide in a retry.
The tasks defer at once (``wait_before_defer=0``) so every job is watched by a triggerer.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(
    dag_id="nanobanana_ha",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "bucket": Param("nanobanana-ha", type="string"),
        "inputs": Param([], type="array", description="s3:// URI of each single edit's input"),
    },
    tags=["test"],
):

    @task
    def inputs(params: dict[str, Any] | None = None) -> list[list[str]]:
        """One ``image_urls`` list per single edit, from the run's conf (seeded by the test)."""
        return [[uri] for uri in (params or {})["inputs"]]

    NanoBananaEditOperator.partial(
        task_id="edit",
        prompt="Make it look like a pencil sketch",
        output_s3_uri="s3://{{ params.bucket }}/out/",
        poll_interval=1.0,
        poll_max_interval=3.0,
        wait_before_defer=0,
        timeout=20 * 60,
        retries=0,
    ).expand(image_urls=inputs())

    NanoBananaBatchEditOperator(
        task_id="batch",
        prompt="Give {name} a warm look",
        input_s3_prefix="s3://{{ params.bucket }}/batch-in/",
        output_s3_uri="s3://{{ params.bucket }}/batch-out/",
        max_in_flight=2,  # half the items are still unsubmitted when a triggerer dies
        priority_weight=10,  # its trigger row is claimed first, by the triggerer the test kills
        item_retries=0,
        poll_interval=1.0,
        poll_max_interval=3.0,
        timeout=20 * 60,
        retries=0,
    )
