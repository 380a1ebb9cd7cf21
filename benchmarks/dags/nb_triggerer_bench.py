"""The DAG the real-triggerer benchmark defers: one mapped ``NanoBananaEditOperator`` over a list of
prompts. The benchmark writes its task instances straight into the metadata DB (state ``deferred``,
one trigger row each); no scheduler or worker ever runs it."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, task

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(
    "nb_triggerer_bench",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    tags=["benchmark"],
):

    @task
    def prompts() -> list[str]:
        return [f"benchmark edit {i}" for i in range(10)]

    NanoBananaEditOperator.partial(
        task_id="edit",
        image_urls=["http://127.0.0.1:9/input.png"],
        output_s3_uri="s3://nb-bench/edited/",
    ).expand(prompt=prompts())
