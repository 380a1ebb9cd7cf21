"""One trigger that drives a whole batch of edits on the triggerer's event loop.

Thousands of mapped tasks would each need a scheduler slot, a DB row set and a trigger; this runs
one trigger per batch that keeps at most ``max_in_flight`` jobs at RunComfy, spaces every call with a
per-batch rate limit (on top of the process-wide poll budget), and polls each job with the same
:meth:`~airflow_provider_nanobanana.polling.JobWatch.apoll` step as a single edit.

Unlike the single-edit trigger, this one submits: a batch cannot be pre-submitted on the worker
without either exceeding ``max_in_flight`` or holding a worker slot. Every POST is preceded by an S3
claim that only one writer can create (see :mod:`.checkpoint`), so a restarted trigger, or a second
copy of it running in another triggerer, never pays twice for an item.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_provider_nanobanana.batch.checkpoint import BatchCheckpoint
from airflow_provider_nanobanana.batch.run import BatchRun
from airflow_provider_nanobanana.batch.state import BatchEvent, ItemState
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, EventStatus
from airflow_provider_nanobanana.polling import hold_until
from airflow_provider_nanobanana.spend.budget import BudgetLimits, batch_ledger
from airflow_provider_nanobanana.triggers.moves import task_still_deferred
from airflow_provider_nanobanana.triggers.versioning import check_kwargs_version

#: Version of the serialized kwargs. 1 (0.1.0, no ``kwargs_version`` key) had no release hold.
KWARGS_VERSION = 2


class RunComfyBatchTrigger(BaseTrigger):
    """Submit and watch every pending item of a checkpointed batch; one event when all are final.

    Serialized kwargs are locations and settings only; items live in the S3 checkpoint, inputs are
    pre-signed at submit time and never stored.
    """

    def __init__(
        self,
        *,
        checkpoint_bucket: str,
        checkpoint_prefix: str,
        deadline_epoch_s: float,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        model_id: str = DEFAULT_MODEL_ID,
        max_in_flight: int = 16,
        rate_per_s: float = 10.0,
        item_retries: int = 1,
        poll_interval_s: float = 2.0,
        poll_max_s: float = 30.0,
        presign_expiry_s: int = 6 * 3600,
        release_not_before_epoch_s: float | None = None,
        max_paid_requests: int | None = None,
        max_spend_usd: float | None = None,
        price_per_request_usd: float | None = None,
        kwargs_version: int = 1,
    ) -> None:
        super().__init__()
        check_kwargs_version(type(self), kwargs_version, KWARGS_VERSION)
        if max_in_flight < 1 or rate_per_s <= 0 or item_retries < 0:
            raise ValueError("max_in_flight must be >= 1, rate_per_s > 0 and item_retries >= 0")
        self.checkpoint_bucket = checkpoint_bucket
        self.checkpoint_prefix = checkpoint_prefix
        self.deadline_epoch_s = float(deadline_epoch_s)
        self.runcomfy_conn_id = runcomfy_conn_id
        self.aws_conn_id = aws_conn_id
        self.model_id = model_id
        self.max_in_flight = max_in_flight
        self.rate_per_s = rate_per_s
        self.item_retries = item_retries
        self.poll_interval_s = poll_interval_s
        self.poll_max_s = poll_max_s
        self.presign_expiry_s = presign_expiry_s
        self.release_not_before_epoch_s = release_not_before_epoch_s
        #: The spend budget (spend/budget.py); absent in kwargs of 0.1.0/0.2.0 triggers: no budget.
        self.max_paid_requests = max_paid_requests
        self.max_spend_usd = max_spend_usd
        self.price_per_request_usd = price_per_request_usd

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            # The 0.1.0 class path: triggers deferred before an upgrade are found at the same place.
            "airflow_provider_nanobanana.triggers.batch.RunComfyBatchTrigger",
            {
                "kwargs_version": KWARGS_VERSION,
                "checkpoint_bucket": self.checkpoint_bucket,
                "checkpoint_prefix": self.checkpoint_prefix,
                "deadline_epoch_s": self.deadline_epoch_s,
                "runcomfy_conn_id": self.runcomfy_conn_id,
                "aws_conn_id": self.aws_conn_id,
                "model_id": self.model_id,
                "max_in_flight": self.max_in_flight,
                "rate_per_s": self.rate_per_s,
                "item_retries": self.item_retries,
                "poll_interval_s": self.poll_interval_s,
                "poll_max_s": self.poll_max_s,
                "presign_expiry_s": self.presign_expiry_s,
                "release_not_before_epoch_s": self.release_not_before_epoch_s,
                "max_paid_requests": self.max_paid_requests,
                "max_spend_usd": self.max_spend_usd,
                "price_per_request_usd": self.price_per_request_usd,
            },
        )

    def _media(self) -> Any:
        from airflow_provider_nanobanana.media.hook import S3MediaHook

        return S3MediaHook(self.aws_conn_id, presign_expiry_s=self.presign_expiry_s)

    async def _checkpoint(self, media: Any) -> BatchCheckpoint:
        # Not asyncio.to_thread: building the client may read an Airflow connection, which talks to
        # the triggerer's supervisor; on Airflow 3.1 that from a bare thread corrupts the channel.
        client = await sync_to_async(media.get_client)()
        return BatchCheckpoint(client, self.checkpoint_bucket, self.checkpoint_prefix)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        uri = f"s3://{self.checkpoint_bucket}/{self.checkpoint_prefix}"
        try:
            event = await self._run()
        except Exception as exc:
            self.log.exception("RunComfy batch trigger failed")
            event = BatchEvent(
                status=EventStatus.ERROR, checkpoint_uri=uri, message=f"{type(exc).__name__}: {exc}"
            )
        await hold_until(self.release_not_before_epoch_s)
        yield TriggerEvent(event.model_dump(mode="json"))

    async def _run(self) -> BatchEvent:
        hook = RunComfyHook(self.runcomfy_conn_id, model_id=self.model_id)
        await hook.aget_settings()
        media = self._media()
        checkpoint = await self._checkpoint(media)
        state = await asyncio.to_thread(checkpoint.load)
        if state is None:
            return BatchEvent(
                status=EventStatus.ERROR, checkpoint_uri=checkpoint.uri, message="no batch checkpoint there"
            )
        ledger = batch_ledger(checkpoint, BudgetLimits(self.max_paid_requests, self.max_spend_usd))
        return await BatchRun(self, hook, media, checkpoint, state, ledger=ledger).run()

    async def on_kill(self) -> None:
        """Airflow >= 3.3, on mark-failed/clear of the deferred batch: cancel its still-queued jobs.

        Running jobs cannot be cancelled at RunComfy and finish regardless. Best effort and bounded:
        each cancel is one short call, failures are logged, never raised. A trigger that merely moved
        to another triggerer (its task still deferred) cancels nothing: see :mod:`...triggers.moves`.
        """
        if await task_still_deferred(self):
            self.log.info("Batch trigger moved to another triggerer; its jobs are not cancelled")
            return
        try:
            checkpoint = await self._checkpoint(self._media())
            state = await asyncio.to_thread(checkpoint.load)
        except Exception as exc:  # noqa: BLE001 - cleanup must never raise
            self.log.warning("Could not read the batch checkpoint to cancel its jobs: %s", exc)
            return
        active = [i.request_id for i in state.in_state(ItemState.ACTIVE) if i.request_id] if state else []
        hook = RunComfyHook(self.runcomfy_conn_id, model_id=self.model_id)
        results = await asyncio.gather(*(hook.acancel_if_queued(rid) for rid in active))
        self.log.info("Batch killed: cancelled %d of %d unfinished job(s)", sum(results), len(active))
