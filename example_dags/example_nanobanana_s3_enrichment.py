"""Enrich every image under an S3 prefix with ``google/nano-banana-2/edit``, one task per image.

Shape: list the inputs -> one mapped :class:`NanoBananaEditOperator` per image (each waits in the
triggerer, so a queue of slow jobs holds no worker slot) -> a summary of what was archived where.

Each mapped task submits exactly one request and archives its outputs plus a JSON manifest under
``s3://<bucket>/<output_prefix>``. The defaults match ``python -m devstack.demo``, which seeds
``s3://nanobanana-demo/inputs/`` in a local moto S3 and runs this DAG against the RunComfy emulator.

Connections: ``runcomfy_default`` (API token as password) and ``aws_default``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

log = logging.getLogger(__name__)

#: Object suffixes treated as input images; anything else under the prefix (manifests, notes) is skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _list_keys(bucket: str, prefix: str, aws_conn_id: str) -> list[str]:
    """Keys under ``prefix``: via the Amazon provider when installed (it reads the connection), else boto3."""
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    except ImportError:
        import boto3

        paginator = boto3.client("s3").get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]
    return S3Hook(aws_conn_id=aws_conn_id).list_keys(bucket_name=bucket, prefix=prefix) or []


@dag(
    dag_id="nanobanana_s3_enrichment",
    description="Edit every image under an S3 prefix with Nano Banana 2 and archive the results to S3",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nanobanana", "runcomfy", "s3", "example"],
    params={
        "bucket": Param("nanobanana-demo", type="string", description="Bucket holding inputs and outputs"),
        "input_prefix": Param("inputs/", type="string", description="Prefix of the images to edit"),
        "output_prefix": Param("outputs/", type="string", description="Where edited images are archived"),
        "prompt": Param(
            "Turn this picture into a watercolour painting; keep the label readable",
            type="string",
            minLength=1,
            description="Edit instruction sent with every image",
        ),
        "max_images": Param(
            50, type="integer", minimum=1, maximum=500, description="Safety cap on paid requests"
        ),
    },
    doc_md=__doc__,
)
def nanobanana_s3_enrichment() -> None:
    @task
    def list_input_images(bucket: str, prefix: str, max_images: int | str) -> list[list[str]]:
        """One ``image_urls`` list per edit task: ``[["s3://b/k1"], ["s3://b/k2"], ...]``.

        Sorted, so a re-run maps the same image to the same map index. ``max_images`` arrives as a
        string: templates render to text unless the DAG renders native objects.
        """
        keys = sorted(
            k for k in _list_keys(bucket, prefix, "aws_default") if k.lower().endswith(IMAGE_SUFFIXES)
        )
        if not keys:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under s3://{bucket}/{prefix}")
        if len(keys) > int(max_images):
            raise ValueError(
                f"{len(keys)} images under s3://{bucket}/{prefix} exceed max_images={max_images}"
            )
        log.info("Editing %d image(s) from s3://%s/%s", len(keys), bucket, prefix)
        return [[f"s3://{bucket}/{key}"] for key in keys]

    inputs = list_input_images(
        bucket="{{ params.bucket }}", prefix="{{ params.input_prefix }}", max_images="{{ params.max_images }}"
    )

    edits = NanoBananaEditOperator.partial(
        task_id="edit_image",
        prompt="{{ params.prompt }}",
        output_s3_uri="s3://{{ params.bucket }}/{{ params.output_prefix }}",
        num_images=1,
        output_format="png",
        poll_interval=1.0,  # emulated and real edits take seconds; the trigger backs off on its own
        poll_max_interval=5.0,
        timeout=30 * 60,
        retries=1,  # a retry re-attaches to the request already submitted, it does not pay twice
        retry_delay=timedelta(seconds=30),
        map_index_template="{{ task.image_urls[0] }}",  # the UI lists mapped tasks by input, not by number
    ).expand(image_urls=inputs)

    @task
    def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collect request ids, archived objects and manifests in one XCom for downstream consumers."""
        # ``results`` lazily fetches the mapped tasks' XComs. Index it up to its length: plain
        # iteration probes one past the end and Airflow logs that probe as an "XCom not found" error.
        edits = [results[i] for i in range(len(results))]
        archived = [uri for r in edits for uri in r.get("archived") or []]
        manifests = [r["manifest"] for r in edits if r.get("manifest")]
        log.info("%d request(s), %d image(s) archived, manifests: %s", len(edits), len(archived), manifests)
        return {
            "requests": len(edits),
            "request_ids": [r["request_id"] for r in edits],
            "archived": archived,
            "manifests": manifests,
        }

    summarize(edits.output)  # type: ignore[arg-type]  # an XComArg, resolved to the results at run time


nanobanana_s3_enrichment()
