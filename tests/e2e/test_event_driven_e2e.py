"""End to end: uploads to S3 start ``nanobanana_event_driven`` by themselves, through SQS and an Asset watcher.

The stack is the real thing minus the network: moto serves S3 and SQS and delivers the bucket's
event notifications to the queue; Airflow's triggerer runs the DAG's watcher
(:class:`~airflow_provider_nanobanana.triggers.s3_events.S3NewObjectsTrigger`); the scheduler turns
its asset events into runs. Nothing here triggers a run: the test only unpauses the DAG and uploads.

Checked: every upload is edited once and archived under ``edited/<name>/`` (one image, one manifest
naming its input), every run is ``asset_triggered`` and succeeds, and the emulator saw exactly one
paid POST per image: 3 for the first three uploads, exactly 1 more for a fourth, and none for a
redelivered duplicate of an already edited image's notification (SQS is at least once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

import pytest

from devstack.airflow_api import AirflowAPIError, AirflowClient
from devstack.processes import wait_until
from devstack.seed import list_objects, make_input_image, read_object
from devstack.services import LocalStack
from devstack.sqs import INPUT_PREFIX, OUTPUT_PREFIX, aws_client, event_setup
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DAG_ID = "nanobanana_event_driven"
ASSET_NAME = "nanobanana_new_images"
BUCKET = "nanobanana-events"
#: Short jobs: the subject is how runs start and how often they pay, not how long edits wait.
EMULATOR_ARGS = ["--run-s", "2"]
#: The third name needs URL-decoding: S3 sends ``photo+3%2Bb.png`` for it.
FIRST_BATCH = ["photo-1.png", "photo-2.png", "photo 3+b.png"]
LATER = "photo-4.png"
SETTLE_TIMEOUT_S = 240.0


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(
        request, f"events-e2e-{os.getpid()}", emulator_args=EMULATOR_ARGS, before_airflow=event_setup(BUCKET)
    )


def upload(s3: Any, names: list[str]) -> dict[str, str]:
    """Upload images under the input prefix; returns key -> ETag."""
    etags = {}
    for i, name in enumerate(names, start=1):
        key = f"{INPUT_PREFIX}{name}"
        response = s3.put_object(
            Bucket=BUCKET, Key=key, Body=make_input_image(i, len(names)), ContentType="image/png"
        )
        etags[key] = response["ETag"].strip('"')
    return etags


def watcher_events(client: AirflowClient) -> list[dict[str, Any]]:
    """The asset events of the DAG's watched asset, with the runs each one created.

    Airflow 3.3.2 answers 500 here while a run an event created is still queued (its ``start_date``
    is null and the response model requires one), so callers polling this treat that as "not yet".
    """
    events: list[dict[str, Any]] = client._call("GET", "/assets/events", params={"limit": 100})[
        "asset_events"
    ]
    return [e for e in events if e.get("name") == ASSET_NAME]


def delivered_keys(client: AirflowClient) -> list[str]:
    """Object keys in the payloads of all watcher events, duplicates kept."""
    return [o["key"] for e in watcher_events(client) for o in (e.get("extra") or {})["payload"]["objects"]]


def outputs_of(s3: Any, name: str) -> list[str]:
    return list_objects(s3, BUCKET, f"{OUTPUT_PREFIX}{name}/")


def settled(
    client: AirflowClient,
    s3: Any,
    names: list[str],
    min_events: int,
    *,
    repeats_of: str = "",
    repeats: int = 0,
) -> bool | None:
    """Every name has its output and manifest, every watcher event's run has finished, and
    ``repeats_of`` was delivered ``repeats`` times."""
    if any(len(outputs_of(s3, name)) < 2 for name in names):
        return None
    try:
        events = watcher_events(client)
    except AirflowAPIError as exc:
        if "-> 500" in str(exc):
            return None  # a run is still queued (see watcher_events)
        raise
    delivered = [o["key"] for e in events for o in (e.get("extra") or {})["payload"]["objects"]]
    if repeats_of and delivered.count(repeats_of) != repeats:
        return None
    if len(events) < min_events or any(not e["created_dagruns"] for e in events):
        return None
    runs = {r["run_id"] for e in events for r in e["created_dagruns"]}
    states = {client.run_state(DAG_ID, run_id) for run_id in runs}
    return True if states <= {"success", "failed"} else None


def check_outputs(s3: Any, names: list[str]) -> None:
    for name in names:
        keys = outputs_of(s3, name)
        images = [k for k in keys if k.endswith(".png")]
        manifests = [k for k in keys if k.endswith(".manifest.json")]
        assert (len(images), len(manifests)) == (1, 1), keys
        manifest = json.loads(read_object(s3, f"s3://{BUCKET}/{manifests[0]}"))
        assert manifest["inputs"] == [f"s3://{BUCKET}/{INPUT_PREFIX}{name}"]


def check_runs(client: AirflowClient) -> list[str]:
    """Every run of the DAG was started by the watcher's asset events and succeeded."""
    runs = {r["run_id"] for e in watcher_events(client) for r in e["created_dagruns"]}
    for run_id in runs:
        run = client.dag_run(DAG_ID, run_id)
        assert (run["run_type"], run["state"]) == ("asset_triggered", "success"), run
    return sorted(runs)


def duplicate_notification(key: str, etag: str) -> str:
    """The body S3 sent for ``key``, as SQS may deliver it a second time."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": quote_plus(key), "eTag": etag, "size": 1}},
    }
    return json.dumps({"Records": [record]})


def test_uploads_start_the_dag_and_each_image_is_paid_for_once(stack: LocalStack) -> None:
    s3, sqs = stack.moto.client(), aws_client(stack.moto, "sqs")
    client = stack.airflow.client()
    client.wait_for_dag(DAG_ID, timeout_s=120, alive=stack.check_alive)
    client.unpause(DAG_ID)  # paused on creation: nothing is watched (or paid) before this

    etags = upload(s3, FIRST_BATCH)
    wait_until(
        lambda: settled(client, s3, FIRST_BATCH, min_events=1),
        timeout_s=SETTLE_TIMEOUT_S,
        what="the first uploads to be edited",
        interval_s=1.0,
        alive=stack.check_alive,
    )
    check_outputs(s3, FIRST_BATCH)
    first_runs = check_runs(client)
    assert stack.emulator.counters()["submits"] == len(FIRST_BATCH)

    # SQS delivers the first image's notification a second time: a run starts and pays nothing.
    queue_url = sqs.get_queue_url(QueueName="nanobanana-new-images")["QueueUrl"]
    first_key = f"{INPUT_PREFIX}{FIRST_BATCH[0]}"
    sqs.send_message(QueueUrl=queue_url, MessageBody=duplicate_notification(first_key, etags[first_key]))
    wait_until(
        lambda: settled(client, s3, FIRST_BATCH, min_events=2, repeats_of=first_key, repeats=2),
        timeout_s=SETTLE_TIMEOUT_S,
        what="the duplicate notification's run to finish",
        interval_s=1.0,
        alive=stack.check_alive,
    )
    assert len(check_runs(client)) == len(first_runs) + 1
    assert stack.emulator.counters()["submits"] == len(FIRST_BATCH)

    # One more upload: exactly one more paid request. (Uploaded after the duplicate's run was
    # created, not together with it: see "Known limits" in docs/event-driven.md for why.)
    upload(s3, [LATER])
    wait_until(
        lambda: settled(client, s3, [*FIRST_BATCH, LATER], min_events=3),
        timeout_s=SETTLE_TIMEOUT_S,
        what="the later upload to be edited",
        interval_s=1.0,
        alive=stack.check_alive,
    )
    check_outputs(s3, [*FIRST_BATCH, LATER])
    assert len(check_runs(client)) == len(first_runs) + 2
    assert f"{INPUT_PREFIX}photo 3+b.png" in delivered_keys(client), "keys arrive URL-decoded"
    assert stack.emulator.counters()["submits"] == len(FIRST_BATCH) + 1
    claims = list_objects(s3, BUCKET, f"{OUTPUT_PREFIX}_claims/")
    assert len(claims) == len(FIRST_BATCH) + 1, claims
