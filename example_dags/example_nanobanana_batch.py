"""Enrich a whole S3 prefix from ONE task: the pattern for thousands of images.

Mapping one task per image (``example_nanobanana_s3_enrichment``) is right for dozens; for
thousands it loads the scheduler and the metadata DB and nothing bounds how many paid jobs hit
RunComfy at once. :class:`NanoBananaBatchEditOperator` runs one trigger for the whole batch with at
most ``max_in_flight`` jobs at RunComfy, checkpoints every request id to S3 (a triggerer restart
or a task retry resumes without paying twice) and returns a compact summary; the per-image detail
is in the batch manifest under the output prefix.

Connections: ``runcomfy_default`` (API token as password) and ``aws_default``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator


@dag(
    dag_id="nanobanana_batch_enrichment",
    description="Edit every image under an S3 prefix in one batched, resumable task",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nanobanana", "runcomfy", "s3", "batch", "example"],
    params={
        "bucket": Param("nanobanana-demo", type="string"),
        "input_prefix": Param("inputs/", type="string"),
        "output_prefix": Param("batch-outputs/", type="string"),
        "prompt": Param("Give {name} a warm, golden-hour look", type="string", minLength=1),
    },
    doc_md=__doc__,
)
def nanobanana_batch_enrichment() -> None:
    NanoBananaBatchEditOperator(
        task_id="edit_prefix",
        prompt="{{ params.prompt }}",  # {name} / {key} are filled in per image
        input_s3_prefix="s3://{{ params.bucket }}/{{ params.input_prefix }}",
        output_s3_uri="s3://{{ params.bucket }}/{{ params.output_prefix }}",
        max_in_flight=3,  # at most 3 paid jobs queued or running at RunComfy at once
        rate_per_s=20,
        item_retries=1,  # a job that *failed* is resubmitted once; ambiguous submits never are
        max_failed_fraction=0.0,  # any failed image fails the task (after archiving the rest)
        poll_interval=1.0,
        poll_max_interval=5.0,
        timeout=2 * 3600,
        retries=1,  # a retry resumes from the S3 checkpoint
        retry_delay=timedelta(seconds=30),
    )


nanobanana_batch_enrichment()
