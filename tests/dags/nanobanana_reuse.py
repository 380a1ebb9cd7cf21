"""DAG for tests/e2e/test_reuse_e2e.py: the same two images edited twice, once per DAG run, with reuse on.

``edit`` is a mapped single-edit fleet (one task instance per image), ``batch`` one batch task over the
same prefix; both set ``reuse_outputs=True`` and keep the same ``output_s3_uri`` across runs, so the
second run finds every edit in the index and pays for none.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

BUCKET = "nanobanana-reuse"
PROMPT = "Make it look like a pencil sketch"
POLLING = {"poll_interval": 0.5, "poll_max_interval": 1.0, "retries": 0}

with DAG(
    dag_id="nanobanana_reuse",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
):
    NanoBananaEditOperator.partial(
        task_id="edit",
        prompt=PROMPT,
        output_s3_uri=f"s3://{BUCKET}/out/single/",
        reuse_outputs=True,
        timeout=300,
        **POLLING,
    ).expand(image_urls=[[f"s3://{BUCKET}/in/input-0{i}.png"] for i in (1, 2)])
    NanoBananaBatchEditOperator(
        task_id="batch",
        prompt=PROMPT,
        input_s3_prefix=f"s3://{BUCKET}/in/",
        output_s3_uri=f"s3://{BUCKET}/out/batch/",
        reuse_outputs=True,
        timeout=300,
        **POLLING,
    )
