"""An Asset watcher trigger: new objects in S3, announced by S3 event notifications on an SQS queue.

Use it in ``Asset(..., watchers=[AssetWatcher(name=..., trigger=S3NewObjectsTrigger(...))])``
(Airflow 3 event-driven scheduling, available from 3.0, so on every Airflow this provider supports).
The triggerer runs it for as long as a DAG scheduled on the asset is unpaused; each batch of
messages naming new objects becomes one asset event whose ``extra["payload"]`` is
``{"objects": [...], "message_ids": [...]}`` (see :mod:`airflow_provider_nanobanana.events.notifications`).

Delivery: yielding an event only hands it to the triggerer's memory; the triggerer process passes
it to its supervisor (which writes it to the database) on its next sync, about once a second. So a
batch's messages are deleted only ``ack_delay_s`` (default 15 s) after its event was yielded, on a
later pass of the watch loop: a triggerer killed in between leaves them to be received again after
their visibility timeout, which must therefore be longer than ``ack_delay_s`` (checked when given;
SQS's queue default is 30 s). SQS itself is at least once. Either way a message can produce two asset events: the consuming DAG must be idempotent
per object (the example DAG claims each object's ETag with a conditional S3 write).
"""

from __future__ import annotations

import asyncio
import math
import time
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
#: Default delay between yielding an event and deleting its messages: well over the triggerer's
#: ~1 s sync of events to its supervisor (Airflow 3's triggerer loop), and under SQS's default
#: 30 s visibility timeout.
ACK_DELAY_S = 15.0
#: SQS's limit on a message's visibility timeout (12 hours).
MAX_VISIBILITY_TIMEOUT_S = 43200


def _now() -> float:
    """Monotonic seconds (its own name so tests can move it without touching the event loop's clock)."""
    return time.monotonic()


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


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
        again if it was not deleted, 0-43200 s and longer than ``ack_delay_s`` (``None``: the queue's
        own setting, which should be too).
    :param ack_delay_s: seconds between yielding an event and deleting its messages, so the event
        is in Airflow's database before the messages are gone (0: delete on the next pass).
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
        ack_delay_s: float = ACK_DELAY_S,
    ) -> None:
        super().__init__()
        if not isinstance(queue_url, str) or not queue_url.startswith(("https://", "http://")):
            raise ValueError(f"queue_url must be an SQS queue URL (https://...), got {queue_url!r}")
        _check_int("wait_time_s", wait_time_s, 0, 20)
        _check_int("max_messages", max_messages, 1, 10)
        _check_int("max_batch_messages", max_batch_messages, 1)
        if visibility_timeout_s is not None:
            _check_int("visibility_timeout_s", visibility_timeout_s, 0, MAX_VISIBILITY_TIMEOUT_S)
        if (
            isinstance(ack_delay_s, bool)
            or not isinstance(ack_delay_s, (int, float))
            or not 0 <= ack_delay_s < math.inf
        ):
            raise ValueError(f"ack_delay_s must be a finite number of seconds >= 0, got {ack_delay_s!r}")
        if visibility_timeout_s is not None and visibility_timeout_s <= ack_delay_s:
            raise ValueError(
                f"visibility_timeout_s ({visibility_timeout_s}) must be longer than ack_delay_s "
                f"({ack_delay_s}), else messages are received again before they are deleted"
            )
        self.queue_url = queue_url
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.wait_time_s = wait_time_s
        self.max_messages = max_messages
        self.max_batch_messages = max_batch_messages
        self.visibility_timeout_s = visibility_timeout_s
        self.ack_delay_s = ack_delay_s

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
                "ack_delay_s": self.ack_delay_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async with httpx.AsyncClient() as client:
            queue: SqsQueue | None = None
            failures = 0
            #: (when, messages): batches whose events were yielded, deleted once ``when`` has passed.
            unacked: list[tuple[float, list[SqsMessage]]] = []
            while True:
                try:
                    if queue is None:
                        access = await resolve_access(self.aws_conn_id, self.region_name, self.queue_url)
                        queue = SqsQueue(self.queue_url, access, client)
                        self.log.info("Watching %s for S3 object notifications", self.queue_url)
                    unacked = await self._acknowledge_due(queue, unacked)
                    wait_s = self.wait_time_s
                    if unacked:  # wake up in time to delete them, well within their visibility
                        wait_s = min(wait_s, max(0, math.ceil(unacked[0][0] - _now())))
                    messages = await self._receive(queue, wait_s, self.max_messages)
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
                if not payload["objects"]:  # no event to lose: test events and non-notifications
                    await self._acknowledge(queue, messages)
                    continue
                yield TriggerEvent(payload)
                # Only in the triggerer's memory so far: delete after it has reached the database.
                unacked.append((_now() + self.ack_delay_s, messages))

    async def _acknowledge_due(
        self, queue: SqsQueue, unacked: list[tuple[float, list[SqsMessage]]]
    ) -> list[tuple[float, list[SqsMessage]]]:
        """Delete the batches whose delay has passed; returns the ones still waiting."""
        now = _now()
        for when, messages in unacked:
            if when <= now:
                await self._acknowledge(queue, messages)
        return [(when, messages) for when, messages in unacked if when > now]

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
