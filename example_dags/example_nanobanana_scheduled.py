"""A daily edit whose prompt and inputs come from params and the run's date (Jinja templates).

``prompt``, ``image_urls`` and ``output_s3_uri`` are template fields of
:class:`NanoBananaEditOperator`, so ``{{ params.* }}`` and ``{{ ds }}`` work in them. With
``render_template_as_native_obj=True`` the ``image_urls`` template renders to a real list, so the list
of inputs can be changed per run from the trigger form without touching the DAG.

Outputs land under ``s3://<bucket>/daily/<ds>/...`` with one manifest per request.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(
    dag_id="nanobanana_scheduled",
    description="Daily Nano Banana 2 edit with a templated, date-aware prompt",
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Every run pays for an edit: start paused, so deploying the file does not spend money by itself.
    is_paused_upon_creation=True,
    render_template_as_native_obj=True,
    tags=["nanobanana", "runcomfy", "s3", "example"],
    params={
        "style": Param("a vintage postcard", type="string", description="Look to apply"),
        "bucket": Param("nanobanana-demo", type="string"),
        "image_urls": Param(
            ["s3://nanobanana-demo/inputs/input-01.png"],
            type="array",
            items={"type": "string"},
            minItems=1,
            maxItems=20,
            description="https:// URLs or s3:// URIs edited together in one request",
        ),
    },
):
    NanoBananaEditOperator(
        task_id="daily_edit",
        prompt="Restyle this image as {{ params.style }}; print the date {{ ds }} in the bottom corner",
        image_urls="{{ params.image_urls }}",
        output_s3_uri="s3://{{ params.bucket }}/daily/{{ ds }}/",
        num_images=1,
        output_format="png",
        poll_interval=5.0,
        timeout=60 * 60,
    )
