"""The smallest useful DAG: edit one public image with ``google/nano-banana-2/edit``.

The task submits one request, then waits in the triggerer (``deferrable=True`` is the default) and
returns ``{"request_id", "status", "images", ...}`` as XCom. The output URLs expire, so archive them
(``output_s3_uri=...``, see ``example_nanobanana_s3_enrichment``) if you need to keep them.

Needs the ``runcomfy_default`` connection (password = RunComfy API token) and outbound internet.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(
    dag_id="nanobanana_single_edit",
    description="Edit one public image with Nano Banana 2 on RunComfy",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["nanobanana", "runcomfy", "example"],
):
    NanoBananaEditOperator(
        task_id="edit_image",
        prompt="Make it look like a sunny summer afternoon, keep the composition",
        image_urls=[
            "https://upload.wikimedia.org/wikipedia/commons/3/3f/Fronalpstock_big.jpg",
        ],
        num_images=1,
        aspect_ratio="auto",
        resolution="1K",
        output_format="png",
        runcomfy_conn_id="runcomfy_default",
        poll_interval=2.0,
        timeout=15 * 60,
    )
