"""An Asset watcher trigger: new objects in S3, announced by S3 event notifications on an SQS queue.

Use it in ``Asset(..., watchers=[AssetWatcher(name=..., trigger=S3NewObjectsTrigger(...))])``
(Airflow 3 event-driven scheduling, available from 3.0, so on every Airflow this provider supports).
The triggerer runs it for as long as a DAG scheduled on the asset is unpaused; each batch of
messages naming new objects becomes one asset event whose ``extra["payload"]`` is
``{"objects": [...], "message_ids": [...]}`` (see :mod:`airflow_provider_nanobanana.events.notifications`).

Delivery: messages are deleted from the queue only after their event has been handed to the
triggerer, so a triggerer that dies in between leaves them to be received again. SQS itself is at
least once. Either way a message can produce two asset events: the consuming DAG must be idempotent
per object (the example DAG claims each object's ETag with a conditional S3 write).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_nanobanana.events.notifications import NotificationError, parse_notification
from airflow_provider_nanobanana.events.sqs import SqsError, SqsMessage, SqsQueue, resolve_access

#: Pauses after failed receives: transient errors back off to the first cap, configuration errors
#: (no such queue, access denied) wait the second, so a fixed queue policy is picked up by itself.
TRANSIENT_BACKOFF_S = (1.0, 30.0)
PERMANENT_RETRY_S = 60.0
#: Pause after an empty receive. A long poll already waited ``wait_time_s``; this keeps a server that
#: ignores long polling (or ``wait_time_s=0``) from being asked again in a tight loop.
EMPTY_RECEIVE_PAUSE_S = 1.0
#: Long-poll wait of the follow-up receives that gather a burst of uploads into one event.
BURST_WAIT_S = 1


class S3NewObjectsTrigger(BaseEventTrigger):
    """Long-polls an SQS queue of S3 event notifications; yields one event per burst of new objects.

    A burst is every message that arrives while receives keep returning some (each follow-up receive
    waits up to 1 s), up to ``max_batch_messages``. One upload of 50 images is then one asset event
    and one DAG run, not dozens, and fewer events milliseconds apart means fewer chances for the
    scheduler race described in docs/event-driven.md.

    :param queue_url: the queue S3 notifies (``https://sqs.<region>.amazonaws.com/<account>/<name>``).
    :param aws_conn_id: Airflow AWS connection (needs the Amazon provider); ``None`` uses boto3's chain.
    :param region_name: overrides the connection's region (else taken from the queue URL).
    :param wait_time_s: SQS long-poll wait, 0-20 s; a message is delivered as soon as it arrives.
    :param max_messages: messages per receive, 1-10.
    :param max_batch_messages: most messages gathered into one event.
    :param visibility_timeout_s: how long a received message stays hidden before it can be received
        again if it was not deleted (``None``: the queue's own setting).
    """

    def __init__(
        self,
        *,
        queue_url: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        wait_time_s: int = 20,
        max_messages: int = 10,
        max_batch_messages: int = 100,
        visibility_timeout_s: int | None = None,
    ) -> None:
        super().__init__()
        if not queue_url.startswith(("https://", "http://")):
            raise ValueError(f"queue_url must be an SQS queue URL (https://...), got {queue_url!r}")
        if not 0 <= wait_time_s <= 20:
            raise ValueError(f"wait_time_s must be between 0 and 20 (SQS's limit), got {wait_time_s}")
        if not 1 <= max_messages <= 10:
            raise ValueError(f"max_messages must be between 1 and 10 (SQS's limit), got {max_messages}")
        if max_batch_messages < 1:
            raise ValueError(f"max_batch_messages must be at least 1, got {max_batch_messages}")
        self.queue_url = queue_url
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.wait_time_s = wait_time_s
        self.max_messages = max_messages
        self.max_batch_messages = max_batch_messages
        self.visibility_timeout_s = visibility_timeout_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "queue_url": self.queue_url,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "wait_time_s": self.wait_time_s,
                "max_messages": self.max_messages,
                "max_batch_messages": self.max_batch_messages,
                "visibility_timeout_s": self.visibility_timeout_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async with httpx.AsyncClient() as client:
            queue: SqsQueue | None = None
            failures = 0
            while True:
                try:
                    if queue is None:
                        access = await resolve_access(self.aws_conn_id, self.region_name, self.queue_url)
                        queue = SqsQueue(self.queue_url, access, client)
                        self.log.info("Watching %s for S3 object notifications", self.queue_url)
                    messages = await self._receive(queue, self.wait_time_s, self.max_messages)
                except SqsError as exc:
                    failures += 1
                    if not exc.transient:
                        queue = None  # read the connection again: its credentials may have been fixed
                    await asyncio.sleep(self._pause_after(exc, failures))
                    continue
                failures = 0
                if not messages:
                    await asyncio.sleep(EMPTY_RECEIVE_PAUSE_S)
                    continue
                messages += await self._rest_of_burst(queue, len(messages))
                payload = self.payload_of(messages)
                if payload["objects"]:
                    yield TriggerEvent(payload)
                await self._acknowledge(queue, messages)

    async def _receive(self, queue: SqsQueue, wait_time_s: int, limit: int) -> list[SqsMessage]:
        return await queue.receive(
            max_messages=min(self.max_messages, limit),
            wait_time_s=wait_time_s,
            visibility_timeout_s=self.visibility_timeout_s,
        )

    async def _rest_of_burst(self, queue: SqsQueue, have: int) -> list[SqsMessage]:
        """Messages that keep arriving right after the first ones, until a receive comes back empty."""
        more: list[SqsMessage] = []
        while have + len(more) < self.max_batch_messages:
            try:
                received = await self._receive(
                    queue, BURST_WAIT_S, self.max_batch_messages - have - len(more)
                )
            except SqsError as exc:  # what was received still goes out; the next receive backs off
                self.log.warning("Receiving the rest of a burst failed: %s", exc)
                break
            if not received:
                break
            more += received
        return more

    def payload_of(self, messages: list[SqsMessage]) -> dict[str, Any]:
        """The event payload: every created object the messages name (test events name none)."""
        objects: list[dict[str, Any]] = []
        for message in messages:
            try:
                found = parse_notification(message.body)
            except NotificationError as exc:
                # Deleted below all the same: a message that is not a notification never will be.
                self.log.error("Dropping SQS message %s: %s", message.message_id, exc)
                continue
            objects += [o.to_dict() for o in found]
        return {"objects": objects, "message_ids": [m.message_id for m in messages]}

    async def _acknowledge(self, queue: SqsQueue, messages: list[SqsMessage]) -> None:
        try:
            failed = await queue.delete(messages)
        except SqsError as exc:
            failed, reason = [m.message_id for m in messages], str(exc)
        else:
            reason = "refused by SQS"
        if failed:
            # They come back after the visibility timeout; the DAG's per-object claim absorbs that.
            self.log.warning(
                "Could not delete %d message(s) (%s); they will be delivered again", len(failed), reason
            )

    def _pause_after(self, exc: SqsError, failures: int) -> float:
        if not exc.transient:
            self.log.error(
                "Receiving from %s failed: %s; retrying in %.0f s", self.queue_url, exc, PERMANENT_RETRY_S
            )
            return PERMANENT_RETRY_S
        first, cap = TRANSIENT_BACKOFF_S
        pause = min(cap, first * 2 ** (failures - 1))
        self.log.warning("Receiving from %s failed: %s; retrying in %.0f s", self.queue_url, exc, pause)
        return pause
