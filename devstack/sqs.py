"""S3 event notifications to SQS on the local moto server, for ``nanobanana_event_driven``.

moto's server speaks both APIs and delivers S3 notifications to its own queues, exactly the AWS
setup of docs/event-driven.md: a queue, a queue policy that lets the bucket send, and a bucket
notification for ``s3:ObjectCreated:*`` under the input prefix. Use :func:`event_setup` as the
``before_airflow`` hook of :class:`~devstack.services.LocalStack`: the queue exists before the
triggerer starts, and its URL reaches the DAG file as ``NANOBANANA_EVENTS_QUEUE_URL``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from devstack.services import AWS_ENV

if TYPE_CHECKING:
    from devstack.services import LocalStack, MotoService

QUEUE_NAME = "nanobanana-new-images"
INPUT_PREFIX = "incoming/"
OUTPUT_PREFIX = "edited/"


def aws_client(moto: MotoService, service: Literal["s3", "sqs"]) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=moto.endpoint_url,
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def queue_policy(queue_arn: str, bucket: str) -> str:
    """The SQS access policy AWS requires before S3 may deliver to the queue (moto does not check it)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AllowS3BucketNotifications",
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
                }
            ],
        }
    )


def create_notified_queue(
    moto: MotoService, bucket: str, *, prefix: str = INPUT_PREFIX, queue_name: str = QUEUE_NAME
) -> str:
    """Create ``bucket`` and the queue, and notify the queue of every object created under ``prefix``.

    Returns the queue URL. S3 sends an ``s3:TestEvent`` message right away; the trigger ignores it.
    """
    sqs, s3 = aws_client(moto, "sqs"), aws_client(moto, "s3")
    queue_url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": queue_policy(arn, bucket)})
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "nanobanana-new-images",
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )
    return queue_url


def event_setup(bucket: str, *, prefix: str = INPUT_PREFIX) -> Callable[[LocalStack], dict[str, str]]:
    """A ``LocalStack(before_airflow=...)`` hook: queue + notification, and the DAG's settings."""

    def setup(stack: LocalStack) -> dict[str, str]:
        queue_url = create_notified_queue(stack.moto, bucket, prefix=prefix)
        return {
            "NANOBANANA_EVENTS_QUEUE_URL": queue_url,
            "NANOBANANA_EVENTS_INPUT_PREFIX": prefix,
            "NANOBANANA_EVENTS_OUTPUT_PREFIX": OUTPUT_PREFIX,
        }

    return setup
