"""Edit every image uploaded under ``incoming/`` as soon as it lands: no schedule, no manual trigger.

S3 sends an event notification for each new object to an SQS queue; an Asset watcher
(:class:`~airflow_provider_nanobanana.triggers.s3_events.S3NewObjectsTrigger`, running in the
triggerer while this DAG is unpaused) long-polls that queue, and each batch of new objects becomes an
asset event that starts a run. A run edits each new image once (one mapped
:class:`NanoBananaEditOperator` per image) and archives the output and its manifest under
``edited/<input name>/`` in the same bucket.

Never paying twice for one upload: SQS delivers at least once, so the same notification can start
two runs. Before anything is paid, ``claim_new_images`` writes a claim per object and content
(``edited/_claims/<hash of key>-<ETag>.json``) with S3's conditional create (``If-None-Match: *``):
only the first run to create it edits that image. A retry of the same run keeps its own claims, and
each edit task's retry re-attaches to the request it already submitted. An overwrite with new bytes
has a new ETag, so it is edited again. Deleting a claim lets its image through again, and
``reuse_outputs=True`` then copies an edit already archived for the same bytes and prompt instead
of paying for it.

Requires the Amazon provider (``pip install 'airflow-provider-nanobanana[amazon]'``) for the
``aws_default`` connection, and Airflow 3 event-driven scheduling (every Airflow this provider
supports, 3.1.8 and later). Setup of the bucket notification and queue: docs/event-driven.md.

Configuration (read when the file is parsed, because the watcher is part of the DAG's definition):
``NANOBANANA_EVENTS_QUEUE_URL`` (the queue S3 notifies) and optionally
``NANOBANANA_EVENTS_INPUT_PREFIX`` / ``NANOBANANA_EVENTS_OUTPUT_PREFIX``.
Connections: ``runcomfy_default`` (API token as password) and ``aws_default`` (reads the queue,
reads inputs, writes claims and outputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetWatcher, dag, get_current_context, task

from airflow_provider_nanobanana.events.notifications import (
    NewObject,
    objects_from_payload,
    unique_new_objects,
)
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.triggers.s3_events import S3NewObjectsTrigger

log = logging.getLogger(__name__)

QUEUE_URL = os.environ.get(
    "NANOBANANA_EVENTS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/nanobanana-new-images"
)
INPUT_PREFIX = os.environ.get("NANOBANANA_EVENTS_INPUT_PREFIX", "incoming/")
OUTPUT_PREFIX = os.environ.get("NANOBANANA_EVENTS_OUTPUT_PREFIX", "edited/")
CLAIMS = "_claims/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AWS_CONN_ID = "aws_default"
#: Safety cap on paid requests per run: a burst larger than this fails the run before paying anything.
MAX_IMAGES_PER_RUN = 200

new_images = Asset(
    name="nanobanana_new_images",
    watchers=[
        AssetWatcher(
            name="nanobanana_new_images_queue",
            trigger=S3NewObjectsTrigger(queue_url=QUEUE_URL, aws_conn_id=AWS_CONN_ID, wait_time_s=20),
        )
    ],
)


def objects_of_events(events: Any) -> list[NewObject]:
    """Every object named by this run's asset events (a run may gather several events)."""
    found: list[NewObject] = []
    for asset in events:
        for event in events[asset]:
            payload = (event.extra or {}).get("payload")
            if isinstance(payload, dict):
                found += objects_from_payload(payload)
    return found


def claim_key(obj: NewObject) -> str:
    """Where the claim on one object's content lives (a hash: keys may be long or odd)."""
    digest = hashlib.sha256(f"{obj.bucket}/{obj.key}".encode()).hexdigest()[:32]
    return f"{OUTPUT_PREFIX}{CLAIMS}{digest}-{obj.etag or 'no-etag'}.json"


def claim(s3: Any, obj: NewObject, run_id: str) -> bool:
    """Create the object's claim unless it exists; ``True`` if this run owns it (also on a retry)."""
    key = claim_key(obj)
    body = json.dumps({"run_id": run_id, "uri": obj.uri, "etag": obj.etag}).encode()
    try:
        s3.put_object(Bucket=obj.bucket, Key=key, Body=body, IfNoneMatch="*")
        return True
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
        ):
            raise
    owner = json.loads(s3.get_object(Bucket=obj.bucket, Key=key)["Body"].read()).get("run_id")
    if owner == run_id:
        return True
    log.info("Skipping %s (ETag %s): already claimed by run %s", obj.uri, obj.etag, owner)
    return False


def edit_kwargs(objects: Iterable[NewObject]) -> list[dict[str, Any]]:
    """One edit per object: its input, and an output prefix named after it."""
    return [
        {
            "image_urls": [obj.uri],
            "output_s3_uri": f"s3://{obj.bucket}/{OUTPUT_PREFIX}{obj.key[len(INPUT_PREFIX) :]}/",
        }
        for obj in objects
    ]


@dag(
    dag_id="nanobanana_event_driven",
    description="Edit each image uploaded to S3 once, started by S3 event notifications on SQS",
    schedule=[new_images],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=True,  # paid work: nothing is watched until someone unpauses the DAG
    tags=["nanobanana", "runcomfy", "s3", "sqs", "event-driven", "example"],
    doc_md=__doc__,
)
def nanobanana_event_driven() -> None:
    @task
    def claim_new_images() -> list[dict[str, Any]]:
        """The images of this run's events that no other run has claimed, as edit-task kwargs."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        context = get_current_context()
        objects = unique_new_objects(
            objects_of_events(context["triggering_asset_events"]),
            include_prefix=INPUT_PREFIX,
            exclude_prefixes=[OUTPUT_PREFIX],  # never edit our own outputs, whatever the bucket notifies
            suffixes=IMAGE_SUFFIXES,
        )
        if len(objects) > MAX_IMAGES_PER_RUN:
            raise ValueError(f"{len(objects)} new images exceed MAX_IMAGES_PER_RUN={MAX_IMAGES_PER_RUN}")
        s3 = S3Hook(aws_conn_id=AWS_CONN_ID).get_conn()
        run_id = context["run_id"]
        mine = [obj for obj in objects if claim(s3, obj, run_id)]
        log.info("%d new image(s) in this run's events, %d to edit", len(objects), len(mine))
        return edit_kwargs(mine)

    NanoBananaEditOperator.partial(
        task_id="edit_image",
        prompt="Turn this picture into a watercolour painting; keep the label readable",
        num_images=1,
        output_format="png",
        poll_interval=1.0,
        poll_max_interval=5.0,
        timeout=30 * 60,
        retries=1,  # a retry re-attaches to the request already submitted, it does not pay twice
        retry_delay=timedelta(seconds=30),
        # Behind the claims: if a claim is deleted (to redo a failed edit, or by a lifecycle rule), an
        # edit already archived with the same prompt, parameters and input bytes is copied, not paid.
        reuse_outputs=True,
        map_index_template="{{ task.image_urls[0] }}",
    ).expand_kwargs(claim_new_images())


nanobanana_event_driven()
