"""One trigger that drives a whole batch of edits on the triggerer's event loop.

Thousands of mapped tasks would each need a scheduler slot, a DB row set and a trigger; this runs
one trigger per batch that keeps at most ``max_in_flight`` jobs at RunComfy, spaces every call with a
per-batch rate limit (on top of the process-wide poll budget), and polls each job with the same
:class:`~airflow_provider_nanobanana.polling.JobWatch` policy as a single edit.

Unlike the single-edit trigger, this one submits: a batch cannot be pre-submitted on the worker
without either exceeding ``max_in_flight`` or holding a worker slot. It stays at-most-once through
the S3 checkpoint: items are marked ``submitting`` durably *before* each POST, and an item found in
that state after a restart is never sent again (see :mod:`airflow_provider_nanobanana.batch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_nanobanana.batch import (
    BatchCheckpoint,
    BatchEvent,
    BatchItem,
    BatchState,
    ItemState,
    summary,
)
from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook, RunComfySettings
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, EditRequest, JobEvent
from airflow_provider_nanobanana.polling import JobWatch, PollBudget, PollPolicy, shared_poll_budget

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media import S3MediaHook

SAVE_EVERY_S = 1.0
SUBMIT_DRAIN_S = 30.0
PROGRESS_EVERY_S = 15.0


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
    ) -> None:
        super().__init__()
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

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        uri = f"s3://{self.checkpoint_bucket}/{self.checkpoint_prefix}"
        try:
            event = await self._run()
        except Exception as exc:
            self.log.exception("RunComfy batch trigger failed")
            event = BatchEvent(status="error", checkpoint_uri=uri, message=f"{type(exc).__name__}: {exc}")
        yield TriggerEvent(event.model_dump(mode="json"))

    async def on_kill(self) -> None:
        """Airflow >= 3.3, on mark-failed/clear of the deferred batch: cancel its still-queued jobs.

        Running jobs cannot be cancelled at RunComfy and finish regardless. Best effort and bounded:
        each cancel is one short call, failures are logged, never raised.
        """
        from airflow_provider_nanobanana.media import S3MediaHook
        from airflow_provider_nanobanana.triggers.runcomfy import cancel_if_queued

        media = S3MediaHook(self.aws_conn_id)
        try:
            client = await asyncio.to_thread(media.get_client)
            checkpoint = BatchCheckpoint(client, self.checkpoint_bucket, self.checkpoint_prefix)
            state = await asyncio.to_thread(checkpoint.load)
        except Exception as exc:  # noqa: BLE001 - cleanup must never raise
            self.log.warning("Could not read the batch checkpoint to cancel its jobs: %s", exc)
            return
        active = [i.request_id for i in state.in_state(ItemState.ACTIVE) if i.request_id] if state else []
        hook = RunComfyHook(self.runcomfy_conn_id, model_id=self.model_id)
        results = await asyncio.gather(*(cancel_if_queued(hook, rid, log=self.log) for rid in active))
        self.log.info("Batch killed: cancelled %d of %d unfinished job(s)", sum(results), len(active))

    async def _run(self) -> BatchEvent:
        from airflow_provider_nanobanana.media import S3MediaHook

        hook = RunComfyHook(self.runcomfy_conn_id, model_id=self.model_id)
        settings = await hook.aget_settings()
        media = S3MediaHook(self.aws_conn_id, presign_expiry_s=self.presign_expiry_s)
        client = await asyncio.to_thread(media.get_client)
        checkpoint = BatchCheckpoint(client, self.checkpoint_bucket, self.checkpoint_prefix)
        state = await asyncio.to_thread(checkpoint.load)
        if state is None:
            return BatchEvent(
                status="error", checkpoint_uri=checkpoint.uri, message="no batch checkpoint there"
            )
        return await _BatchRun(self, hook, settings, media, checkpoint, state).run()


class _BatchRun:
    """The state of one ``run()``; rebuilt from the checkpoint after every restart."""

    def __init__(
        self,
        trigger: RunComfyBatchTrigger,
        hook: RunComfyHook,
        settings: RunComfySettings,
        media: S3MediaHook,
        checkpoint: BatchCheckpoint,
        state: BatchState,
    ) -> None:
        self.t = trigger
        self.log = trigger.log
        self.hook, self.settings, self.media = hook, settings, media
        self.checkpoint, self.state = checkpoint, state
        self.policy = PollPolicy.between(trigger.poll_interval_s, trigger.poll_max_s)
        self.budget = PollBudget(trigger.rate_per_s, max_in_flight=min(64, 2 * trigger.max_in_flight))
        self.watches: dict[str, tuple[BatchItem, JobWatch]] = {}
        self.next_poll: dict[str, float] = {}
        self.pending: deque[BatchItem] = deque()
        self.last_save = 0.0
        self.last_progress = 0.0
        self.dirty = False

    async def run(self) -> BatchEvent:
        if lost := self.state.recover_interrupted_submits():
            self.log.warning("%d item(s) were mid-submit when the last run stopped; not resent", len(lost))
            await self._save()
        now = time.time()
        for item in self.state.in_state(ItemState.ACTIVE):
            self._watch(item, now)
        self.pending.extend(self.state.in_state(ItemState.PENDING))
        self.log.info("Batch %s resumed: %s", self.state.batch_id, self.state.counts())
        return await self._loop()

    async def _loop(self) -> BatchEvent:
        while True:
            now = time.time()
            if now >= self.t.deadline_epoch_s:
                await self._save()
                return self._event("timeout", "batch deadline passed before every item finished")
            await self._fill()
            due = [rid for rid, at in self.next_poll.items() if at <= now]
            if due:
                await asyncio.gather(*(self._poll(rid) for rid in due))
            if not self.pending and not self.watches:
                await self._save()
                return self._event("success", "every item reached a final state")
            if self.dirty and time.time() - self.last_save >= SAVE_EVERY_S:
                await self._save()
            self._progress()
            await asyncio.sleep(self._sleep_s())

    def _sleep_s(self) -> float:
        soonest = min(self.next_poll.values(), default=time.time() + 1.0)
        if self.pending and len(self.watches) < self.t.max_in_flight:
            soonest = min(soonest, time.time() + 0.05)
        return max(0.0, min(soonest - time.time(), self.t.deadline_epoch_s - time.time(), 5.0))

    # -- submitting ---------------------------------------------------------------------------
    async def _fill(self) -> None:
        free = self.t.max_in_flight - len(self.watches)
        group = [self.pending.popleft() for _ in range(min(free, len(self.pending)))]
        if not group:
            return
        work = asyncio.ensure_future(self._submit_group(group))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # A graceful stop (triggerer restart, reassignment): finish the group in hand (intent
            # saved, POSTs sent, ids saved) so the next run re-attaches instead of having to mark
            # items submit_unknown. A hard kill still falls back to that rule.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(work, SUBMIT_DRAIN_S)
            raise
        now = time.time()
        for item in group:
            if item.state is ItemState.ACTIVE:
                self._watch(item, now)
            elif item.state is ItemState.PENDING:
                self.pending.append(item)

    async def _submit_group(self, group: list[BatchItem]) -> None:
        for item in group:
            item.state = ItemState.SUBMITTING
        await self._save()  # durable intent before any POST: the at-most-once guarantee
        await asyncio.gather(*(self._submit(item) for item in group))
        await self._save()

    async def _submit(self, item: BatchItem) -> None:
        item.attempts += 1
        try:
            urls = await asyncio.to_thread(self.media.resolve_inputs, item.image_urls)
            request = EditRequest.build(
                **{**self.state.parameters, "prompt": item.prompt, "image_urls": urls},
                allow_insecure_inputs=self.settings.allow_insecure_inputs,
            )
            async with self.budget.slot(), shared_poll_budget().slot():
                response = await self.hook.asubmit(request)
        except RunComfySubmitUnknownError as exc:
            self._final(item, ItemState.SUBMIT_UNKNOWN, str(exc))
        except (RunComfyTransientError, RunComfyRateLimitedError) as exc:
            # Only raised for submits that provably never reached RunComfy: safe to try again.
            item.attempts -= 1
            item.state, item.error = ItemState.PENDING, str(exc)
        except (RunComfyError, ValueError) as exc:
            self._final(item, ItemState.FAILED, str(exc))
        else:
            item.request_id, item.state, item.error = response.request_id, ItemState.ACTIVE, ""
        self.dirty = True

    # -- watching -----------------------------------------------------------------------------
    def _watch(self, item: BatchItem, now: float) -> None:
        assert item.request_id is not None
        self.watches[item.request_id] = (
            item,
            JobWatch(item.request_id, self.t.deadline_epoch_s, self.policy),
        )
        self.next_poll[item.request_id] = now + self.policy.delay(0)

    async def _poll(self, request_id: str) -> None:
        item, watch = self.watches[request_id]
        event: JobEvent | None = None
        try:
            async with self.budget.slot(), shared_poll_budget().slot():
                terminal = watch.on_status(await self.hook.aget_status(request_id))
            if terminal:
                async with self.budget.slot(), shared_poll_budget().slot():
                    event = watch.on_result(await self.hook.aget_result(request_id))
        except RunComfyAPIError as exc:
            event = watch.on_error(exc)
        if event is None:
            self.next_poll[request_id] = time.time() + watch.next_delay()
            return
        del self.watches[request_id], self.next_poll[request_id]
        self._apply(item, event)

    def _apply(self, item: BatchItem, event: JobEvent) -> None:
        self.dirty = True
        if event.status == "success":
            item.state, item.outputs, item.error = ItemState.COMPLETED, len(event.images), ""
        elif event.status == "failed" and item.attempts <= self.t.item_retries:
            self.log.info("Item %s failed (%s); retrying it", item.id, event.message)
            item.state, item.request_id, item.error = ItemState.PENDING, None, event.message
            self.pending.append(item)
        elif event.status == "cancelled":
            self._final(item, ItemState.CANCELLED, event.message)
        else:
            self._final(item, ItemState.FAILED, event.message)

    def _final(self, item: BatchItem, state: ItemState, error: str) -> None:
        item.state, item.error = state, error[:500]
        self.dirty = True

    # -- bookkeeping --------------------------------------------------------------------------
    async def _save(self) -> None:
        await asyncio.to_thread(self.checkpoint.save, self.state)
        self.last_save, self.dirty = time.time(), False

    def _progress(self) -> None:
        now = time.time()
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            self.log.info(
                "Batch %s: %s (%d in flight)", self.state.batch_id, self.state.counts(), len(self.watches)
            )

    def _event(self, status: str, message: str) -> BatchEvent:
        return BatchEvent.model_validate(
            {
                "status": status,
                "checkpoint_uri": self.checkpoint.uri,
                "message": message,
                "summary": summary(self.state),
            }
        )
