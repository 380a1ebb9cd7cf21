"""Receive and delete SQS messages without blocking the event loop: httpx plus botocore's SigV4 signer.

Why not the Amazon provider's async client: it needs ``aiobotocore``, which pins botocore to an
older minor than the boto3 this provider is installed with, so it cannot be installed beside it.
SQS's JSON protocol is small (two calls are used here), botocore signs a request without any I/O,
and httpx is already how this provider talks HTTP, so the triggerer's loop never waits on a socket.

Credentials come from an Airflow AWS connection through the Amazon provider's own session factory
(keys, profiles, role assumption, region, ``endpoint_url``), built off the event loop because a
role assumption calls STS; without the Amazon provider, boto3's default chain is used. Off the loop
means asgiref's ``sync_to_async``, as the Amazon provider does, never ``asyncio.to_thread``: reading
a connection's extras masks them, which tells the triggerer's supervisor through its comms channel,
and on Airflow 3.1 a send from a plain thread runs on a second event loop and corrupts that channel
("Response read out of order"), which stops the whole triggerer. ``sync_to_async`` routes the send
back to the triggerer's own loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from asgiref.sync import sync_to_async
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

#: SQS error codes worth another try after a pause; anything else is a configuration problem.
TRANSIENT_CODES = frozenset(
    {"ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalFailure", "KmsThrottled"}
)
_REGION_IN_HOST = re.compile(r"^sqs[.-]([a-z0-9-]+)\.amazonaws\.com")


class SqsError(RuntimeError):
    """An SQS call failed; ``code`` is SQS's error code (``QueueDoesNotExist``...) or the HTTP status."""

    def __init__(self, code: str, message: str, *, transient: bool) -> None:
        super().__init__(f"SQS {code}: {message}")
        self.code = code
        self.transient = transient


@dataclass(frozen=True)
class SqsMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1


@dataclass(frozen=True)
class AwsAccess:
    """What signing needs: a credentials object (refreshed by botocore when it expires), region, endpoint."""

    credentials: Credentials
    region: str
    endpoint_url: str | None = None


def region_from_queue_url(queue_url: str) -> str | None:
    """``https://sqs.eu-west-1.amazonaws.com/123/q`` -> ``eu-west-1``; ``None`` for other hosts."""
    match = _REGION_IN_HOST.match(urlsplit(queue_url).hostname or "")
    return match.group(1) if match else None


async def resolve_access(aws_conn_id: str | None, region_name: str | None, queue_url: str) -> AwsAccess:
    """Credentials, region and endpoint for ``queue_url`` from the connection (or boto3's default chain).

    Any failure (no such connection, no credentials, a refused role assumption) becomes a
    non-transient :class:`SqsError`, so a watcher reports it and tries again later instead of dying.
    """
    fallback_region = region_name or region_from_queue_url(queue_url)
    try:
        conn = None
        if aws_conn_id is not None:
            from airflow.sdk import BaseHook

            conn = await BaseHook.aget_connection(aws_conn_id)
        return await sync_to_async(_build_access)(conn, fallback_region)
    except SqsError:
        raise
    except Exception as exc:
        raise SqsError("Credentials", f"AWS connection {aws_conn_id!r}: {exc}", transient=False) from exc


def _build_access(conn: Any, region_name: str | None) -> AwsAccess:
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory
        from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper
    except ImportError:
        conn = None  # without the Amazon provider a connection cannot be read: default chain
    if conn is None:
        import boto3

        session = boto3.session.Session(region_name=region_name)
        endpoint = None
    else:
        wrapper = AwsConnectionWrapper(conn=conn, region_name=region_name)
        session = BaseSessionFactory(conn=wrapper, region_name=wrapper.region_name).create_session()
        endpoint = wrapper.get_service_endpoint_url("sqs")
    credentials = session.get_credentials()
    if credentials is None:
        raise SqsError("NoCredentials", "no AWS credentials found for the SQS queue", transient=False)
    region = region_name or session.region_name or "us-east-1"
    return AwsAccess(credentials=credentials, region=region, endpoint_url=endpoint)


class SqsQueue:
    """One queue, spoken to through SQS's JSON protocol over a caller-owned ``httpx.AsyncClient``.

    The request goes to the connection's ``endpoint_url`` when it has one (moto, LocalStack, a VPC
    endpoint), else to the queue URL's own host, which is the regional SQS endpoint on AWS.
    """

    def __init__(self, queue_url: str, access: AwsAccess, client: httpx.AsyncClient) -> None:
        self.queue_url = queue_url
        self.access = access
        self._client = client
        parts = urlsplit(access.endpoint_url or queue_url)
        self._endpoint = f"{parts.scheme}://{parts.netloc}/"

    async def receive(
        self, *, max_messages: int, wait_time_s: int, visibility_timeout_s: int | None = None
    ) -> list[SqsMessage]:
        """One long poll: returns as soon as messages are there, or empty after ``wait_time_s``."""
        body: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_time_s,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_timeout_s is not None:
            body["VisibilityTimeout"] = visibility_timeout_s
        answer = await self._call("ReceiveMessage", body, read_timeout_s=wait_time_s + 10)
        return [
            SqsMessage(
                message_id=str(m["MessageId"]),
                receipt_handle=str(m["ReceiptHandle"]),
                body=str(m.get("Body", "")),
                receive_count=int((m.get("Attributes") or {}).get("ApproximateReceiveCount", 1)),
            )
            for m in answer.get("Messages") or []
        ]

    async def delete(self, messages: Sequence[SqsMessage]) -> list[str]:
        """Delete (acknowledge) messages, ten per call; returns the ids SQS did not delete."""
        failed: list[str] = []
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)]
            answer = await self._call("DeleteMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries})
            failed += [chunk[int(f["Id"])].message_id for f in answer.get("Failed") or []]
        return failed

    async def _call(self, action: str, body: dict[str, Any], *, read_timeout_s: float = 30.0) -> Any:
        data = json.dumps(body)
        headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"}
        frozen = await self._frozen_credentials()
        request = AWSRequest(method="POST", url=self._endpoint, data=data, headers=headers)
        SigV4Auth(frozen, "sqs", self.access.region).add_auth(request)
        timeout = httpx.Timeout(10.0, read=read_timeout_s)
        try:
            response = await self._client.post(
                self._endpoint, content=data, headers=dict(request.headers.items()), timeout=timeout
            )
        except httpx.TransportError as exc:
            raise SqsError(type(exc).__name__, str(exc) or "transport error", transient=True) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json() if response.content else {}

    async def _frozen_credentials(self) -> Any:
        credentials = self.access.credentials
        if getattr(credentials, "refresh_needed", lambda: False)():
            # A refresh may call STS: never on the loop (and not in a bare thread: see the module doc).
            return await sync_to_async(credentials.get_frozen_credentials)()
        return credentials.get_frozen_credentials()


def _error_from(response: httpx.Response) -> SqsError:
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    code = str(answer.get("__type") or response.status_code).rsplit("#", 1)[-1]
    message = str(answer.get("message") or answer.get("Message") or response.reason_phrase)[:300]
    transient = response.status_code >= 500 or response.status_code == 429 or code in TRANSIENT_CODES
    return SqsError(code, message, transient=transient)
