"""The watcher trigger over real S3 and SQS APIs (moto server): notifications in, one event out.

moto delivers the bucket's notifications (``put_bucket_notification_configuration`` with a
``QueueConfigurations`` entry) to its own SQS queue, as AWS does; the trigger reads them through the
Airflow AWS connection, SigV4-signed, over SQS's JSON protocol.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from airflow_provider_nanobanana.triggers.s3_events import S3NewObjectsTrigger
from devstack.sqs import aws_client, create_notified_queue


@pytest.fixture
def notified(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A bucket whose ``in/`` uploads are notified to a fresh queue; returns (bucket, queue URL)."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_s3.aws_conn_json())
    suffix = os.urandom(3).hex()
    bucket = f"events-{suffix}"
    return bucket, create_notified_queue(moto_s3, bucket, prefix="in/", queue_name=f"q-{suffix}")


def in_queue(moto_s3: Any, queue_url: str) -> int:
    attributes = aws_client(moto_s3, "sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


async def test_uploads_become_one_event_and_their_messages_are_deleted(moto_s3, notified) -> None:
    bucket, queue_url = notified
    s3 = moto_s3.client()
    s3.put_object(Bucket=bucket, Key="in/a b+c.png", Body=b"x")
    s3.put_object(Bucket=bucket, Key="in/d.png", Body=b"y")
    s3.put_object(Bucket=bucket, Key="elsewhere/e.png", Body=b"z")  # not notified (prefix filter)
    assert in_queue(moto_s3, queue_url) == 3, "the s3:TestEvent plus one message per upload under in/"

    run = S3NewObjectsTrigger(queue_url=queue_url, wait_time_s=1, ack_delay_s=3).run()
    objects: list[dict[str, Any]] = []
    while len(objects) < 2:  # S3 sends one message per object; a receive may return fewer than all
        event = await asyncio.wait_for(run.__anext__(), timeout=30)
        objects += event.payload["objects"]
    assert {o["bucket"] for o in objects} == {bucket}
    etags = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"].strip('"') for k in ("in/a b+c.png", "in/d.png")}
    assert {o["key"]: o["etag"] for o in objects} == etags, "decoded keys, and the ETag of what was uploaded"
    pending = asyncio.ensure_future(run.__anext__())  # the watch goes on: it deletes, then receives
    await asyncio.sleep(0.1)
    assert in_queue(moto_s3, queue_url) > 0, "not deleted before the event had time to reach the database"
    for _ in range(300):
        if in_queue(moto_s3, queue_url) == 0:
            break
        await asyncio.sleep(0.05)
    pending.cancel()
    assert in_queue(moto_s3, queue_url) == 0


async def test_a_message_whose_event_was_not_taken_is_delivered_again(moto_s3, notified) -> None:
    """Deleted only after the event was handed over: a watcher stopped at the event loses nothing."""
    bucket, queue_url = notified
    moto_s3.client().put_object(Bucket=bucket, Key="in/once.png", Body=b"x")

    async def first_event_keys() -> list[str]:
        trigger = S3NewObjectsTrigger(
            queue_url=queue_url, wait_time_s=1, visibility_timeout_s=1, ack_delay_s=0.5
        )
        run: Any = trigger.run()  # an async generator: closed below like the triggerer would
        try:
            event = await asyncio.wait_for(run.__anext__(), timeout=30)
        finally:
            await run.aclose()  # stopped right after the event, as a dying triggerer would be
        return [o["key"] for o in event.payload["objects"]]

    assert await first_event_keys() == ["in/once.png"]
    assert await first_event_keys() == ["in/once.png"], "redelivered after the visibility timeout"
