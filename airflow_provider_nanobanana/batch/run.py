"""One run of a batch trigger: claim, submit, watch, record. Rebuilt from S3 after every restart.

Every slot freed at RunComfy is refilled at once: each item is submitted by its own task, and the
state is saved at most once a second (the per-item claim, not a state write, is what a POST waits
for). Items are always looked up by id, never held across an ``await``: a save that merges another
writer's view may replace the objects.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from airflow_provider_nanobanana.batch.state import BatchEvent, BatchItem, BatchState, ItemState, summary
from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.models import EventStatus, JobEvent
from airflow_provider_nanobanana.polling import (
    JobWatch,
    PollBudget,
    PollPolicy,
    shared_poll_budget,
)
from airflow_provider_nanobanana.preparation import prepare_request
from airflow_provider_nanobanana.queue_drain import QueueDrain, shared_queue_drain

if TYPE_CHECKING:
    from airflow_provider_nanobanana.batch.checkpoint import BatchCheckpoint
    from airflow_provider_nanobanana.batch.trigger import RunComfyBatchTrigger
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
    from airflow_provider_nanobanana.media.hook import S3MediaHook
    from airflow_provider_nanobanana.spend.budget import SpendLedger

SAVE_EVERY_S = 1.0
#: On a graceful stop, submits already under way get this long to finish and be recorded.
SUBMIT_DRAIN_S = 30.0
PROGRESS_EVERY_S = 15.0
#: How often items claimed by another writer are looked up again.
FOREIGN_CHECK_S = 2.0
#: A claim whose writer has not said what its POST did, this long after a live writer's submit would
#: have timed out, was left by a writer that died mid-POST.
CLAIM_MARGIN_S = 5.0


class BatchRun:
    """The state of one ``run()`` of :class:`RunComfyBatchTrigger`."""

    def __init__(
        self,
        trigger: RunComfyBatchTrigger,
        hook: RunComfyHook,
        media: S3MediaHook,
        checkpoint: BatchCheckpoint,
        state: BatchState,
        *,
        ledger: SpendLedger | None = None,
    ) -> None:
        self.t = trigger
        #: The spend budget, when one is set: a unit is reserved before each claim (so before each POST).
        self.ledger = ledger
        self.log = trigger.log
        self.hook, self.media, self.checkpoint = hook, media, checkpoint
        self.state = state
        self.by_id = {item.id: item for item in state.items}
        self.generation = state.generation
        #: Names this run in its claims, so a log or a claim says which writer sent a POST.
        self.owner = uuid.uuid4().hex
        self.policy = PollPolicy.between(trigger.poll_interval_s, trigger.poll_max_s)
        self.budget = PollBudget(trigger.rate_per_s, max_in_flight=min(64, 2 * trigger.max_in_flight))
        #: The loop's queue model for this account, shared with the single-job triggers (set by run()).
        self.drain: QueueDrain | None = None
        self.watches: dict[str, JobWatch] = {}
        self.next_poll: dict[str, float] = {}
        self.foreign: set[str] = set()
        self.submits: dict[str, asyncio.Task[None]] = {}
        self.closing = False
        self.last_save = self.last_progress = self.last_foreign_check = 0.0
        self.dirty = False
        self.claim_grace_s = hook.settings.submit_exchange_s + CLAIM_MARGIN_S

    async def run(self) -> BatchEvent:
        self.drain = shared_queue_drain(self.t.runcomfy_conn_id)
        try:
            await self._resume()
            return await self._loop()
        finally:
            # Whatever ends the run (its event, an error, a triggerer stopping it): no POST may
            # leave after it, and every POST that left must be recorded.
            await self._drain()

    async def _resume(self) -> None:
        interrupted = self.state.in_state(ItemState.SUBMITTING)
        if interrupted:
            self.log.info("%d item(s) were being submitted when the last run stopped", len(interrupted))
            await asyncio.gather(*(self._settle_from_claim(item.id) for item in interrupted))
        self._sync()  # watch the jobs an earlier run left active
        await self._save()
        self.log.info("Batch %s resumed: %s", self.state.batch_id, self.state.counts())

    async def _loop(self) -> BatchEvent:
        while True:
            now = time.time()
            if now >= self.t.deadline_epoch_s:
                return self._event(EventStatus.TIMEOUT, "batch deadline passed before every item finished")
            self._fill()
            due = [item_id for item_id, at in self.next_poll.items() if at <= now]
            if due:
                await asyncio.gather(*(self._poll(item_id) for item_id in due))
            if self.foreign and now - self.last_foreign_check >= FOREIGN_CHECK_S:
                self.last_foreign_check = now
                await asyncio.gather(*(self._settle_from_claim(item_id) for item_id in list(self.foreign)))
            if not self.submits and all(item.state.is_final for item in self.state.items):
                return self._event(EventStatus.SUCCESS, "every item reached a final state")
            if self.dirty and time.time() - self.last_save >= SAVE_EVERY_S:
                await self._save()
            self._progress()
            await asyncio.sleep(self._sleep_s())

    def _sleep_s(self) -> float:
        soonest = min(self.next_poll.values(), default=time.time() + 1.0)
        if self.foreign:
            soonest = min(soonest, self.last_foreign_check + FOREIGN_CHECK_S)
        if self.submits or self._free_slots():
            soonest = min(soonest, time.time() + 0.05)
        return max(0.0, min(soonest - time.time(), self.t.deadline_epoch_s - time.time(), 5.0))

    # -- submitting ---------------------------------------------------------------------------
    def _free_slots(self) -> int:
        return self.t.max_in_flight - len(self.watches) - len(self.submits) - len(self.foreign)

    def _fill(self) -> None:
        """Top up to ``max_in_flight``: one submit task per free slot, none waiting for another."""
        free = self._free_slots()
        if free <= 0 or self.closing:
            return
        for item in self.state.items:
            if free <= 0:
                break
            if item.state is ItemState.PENDING and item.id not in self.submits:
                self.submits[item.id] = asyncio.create_task(self._submit(item.id))
                free -= 1

    async def _submit(self, item_id: str) -> None:
        try:
            await self._submit_one(item_id)
        except Exception as exc:
            self.log.exception("Submitting item %s failed", item_id)
            item = self.by_id[item_id]
            if item.state is ItemState.SUBMITTING:
                item.move(ItemState.SUBMIT_UNKNOWN, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.submits.pop(item_id, None)
            self.dirty = True

    async def _submit_one(self, item_id: str) -> None:
        item = self.by_id[item_id]
        fields = {**self.state.parameters, "prompt": item.prompt, "image_urls": item.image_urls}
        try:
            request = await asyncio.to_thread(
                prepare_request,
                fields,
                media=self.media,
                allow_insecure_inputs=self.hook.settings.allow_insecure_inputs,
            )
        except Exception as exc:  # noqa: BLE001 - bad or unreadable input: nothing was sent
            self.by_id[item_id].move(ItemState.FAILED, error=f"could not prepare the request: {exc}")
            return
        if self.closing:
            return
        # Reserve before marking the item: the time between marking it ``submitting`` and creating
        # its claim is when another copy resuming finds no claim, so nothing slow may sit there.
        claims = self.by_id[item_id].claims + 1
        if not await self._reserve(item_id, claims):
            return
        if self.closing or not self._still_ours(item_id, claims):
            return  # stopped, or another writer took the item meanwhile (the unit stays held: safe side)
        item = self.by_id[item_id]
        item.claims = claims
        item.claim_generation = self.generation
        item.submitting_since = time.time()
        item.move(ItemState.SUBMITTING)
        try:
            claimed = await asyncio.to_thread(self.checkpoint.claim, self.generation, item, self.owner)
        except Exception as exc:  # noqa: BLE001 - S3 down: not sent; try again with the next claim
            self.by_id[item_id].move(ItemState.PENDING, error=f"could not claim the item: {exc}")
            await self._release(item_id, claims)
            return
        if not claimed:
            self.log.info("Item %s is being submitted by another copy of this trigger", item_id)
            self.foreign.add(item_id)
            return
        if self.closing:
            await self._record(item_id, claims, ItemState.PENDING, sent=False, error="stopped before sending")
            return
        self.by_id[item_id].attempts += 1
        try:
            async with self.budget.slot(), shared_poll_budget().slot():
                response = await self.hook.asubmit(request)
        except RunComfySubmitUnknownError as exc:
            await self._record(item_id, claims, ItemState.SUBMIT_UNKNOWN, sent=True, error=str(exc))
        except (RunComfyTransientError, RunComfyRateLimitedError) as exc:
            # Raised for a submit only when it provably never reached RunComfy: safe to send again.
            self.by_id[item_id].attempts -= 1
            await self._record(item_id, claims, ItemState.PENDING, sent=False, error=str(exc))
        except RunComfyAPIError as exc:  # refused (400/401/403/404/422): no job was created
            await self._record(item_id, claims, ItemState.FAILED, sent=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - after the POST may have left, anything is ambiguous
            error = f"{type(exc).__name__} after the submit was sent; a job may exist and be billed"
            await self._record(item_id, claims, ItemState.SUBMIT_UNKNOWN, sent=True, error=error)
        else:
            await self._record(item_id, claims, ItemState.ACTIVE, sent=True, request_id=response.request_id)

    async def _reserve(self, item_id: str, claims: int) -> bool:
        """Take a unit of the spend budget for this claim (so for its one possible POST).

        Keyed by the item and its claim number: a restarted or duplicated trigger that reaches the
        same claim counts nothing more. Refused: the item ends ``skipped_budget``, never sent.
        """
        if self.ledger is None:
            return True
        usd = self.t.price_per_request_usd or 0.0
        try:
            reserved = await asyncio.to_thread(self.ledger.reserve, item_id, claims, usd=usd)
        except Exception as exc:  # noqa: BLE001 - S3 down: not sent; try again with the next claim
            if self._still_ours(item_id, claims):
                self.by_id[item_id].move(ItemState.PENDING, error=f"could not reserve budget: {exc}")
            return False
        if not reserved and self._still_ours(item_id, claims):
            self.log.info("Item %s is over the spend budget: not submitted", item_id)
            self.by_id[item_id].move(
                ItemState.SKIPPED_BUDGET, error="the spend budget was used up; not submitted, not paid"
            )
        return reserved

    def _still_ours(self, item_id: str, claims: int) -> bool:
        """The item is still pending its claim ``claims`` (no other writer took it during an await)."""
        item = self.by_id[item_id]
        return item.state is ItemState.PENDING and item.claims < claims

    async def _release(self, item_id: str, claims: int) -> None:
        """The claim's POST provably never left: give its unit of budget back."""
        if self.ledger is None:
            return
        try:
            await asyncio.to_thread(self.ledger.release, item_id, claims)
        except Exception as exc:  # noqa: BLE001 - the unit stays spent: the budget errs on the safe side
            self.log.warning("Could not release the budget of item %s: %s", item_id, exc)

    async def _record(
        self,
        item_id: str,
        claims: int,
        state: ItemState,
        *,
        sent: bool,
        request_id: str | None = None,
        error: str = "",
    ) -> None:
        """Settle this run's claim (so other writers learn the outcome), then update the item."""
        item = self.by_id[item_id]
        item.move(state, error=error, request_id=request_id)
        if state is ItemState.ACTIVE:
            self._watch(item)
        try:
            await asyncio.to_thread(
                self.checkpoint.settle_claim,
                self.generation,
                item,
                self.owner,
                request_id=request_id,
                sent=sent,
            )
        except Exception as exc:  # noqa: BLE001 - the state save records the outcome too
            self.log.warning("Could not record claim %d of item %s: %s", claims, item_id, exc)
        if not sent:
            await self._release(item_id, claims)

    async def _settle_from_claim(self, item_id: str) -> None:
        """Learn what became of an item claimed by another writer, or by a run that stopped."""
        item = self.by_id[item_id]
        # 0.1.0 wrote no claims: its ``submitting`` items keep its rule (never resent).
        claim = (
            None
            if item.claims == 0
            else await asyncio.to_thread(
                self.checkpoint.read_claim, item.claim_generation or self.generation, item
            )
        )
        item = self.by_id[item_id]
        if item.claims == 0 or (claim is not None and claim.get("sent") and not claim.get("request_id")):
            item.move(
                ItemState.SUBMIT_UNKNOWN,
                error="the submit's outcome is unknown (its sender stopped mid-POST); a job may exist, "
                "so it was not resubmitted",
            )
        elif claim is not None and claim.get("request_id"):
            item.attempts += 1
            item.move(ItemState.ACTIVE, request_id=str(claim["request_id"]))
            self._watch(item)
        elif claim is None and self._claim_may_follow(item):
            self.foreign.add(item_id)  # marked just now: its writer may be about to create the claim
            return
        elif claim is None or claim.get("sent") is False:
            item.move(ItemState.PENDING, error=item.error)  # the POST never left: send it again
            await self._release(item_id, item.claims)  # ... under a new claim, with a new reservation
        elif time.time() - float(claim.get("claimed_at") or 0) >= self.claim_grace_s:
            item.move(
                ItemState.SUBMIT_UNKNOWN,
                error="the submit's outcome is unknown (its sender stopped mid-POST); a job may exist, "
                "so it was not resubmitted",
            )
        else:
            self.foreign.add(item_id)  # its sender is probably still at it: look again later
            return
        self.foreign.discard(item_id)
        self.dirty = True

    def _claim_may_follow(self, item: BatchItem) -> bool:
        """A ``submitting`` item without a claim, marked less than the claim grace ago: its writer may
        still create the claim and POST, so calling it unsent now could pay twice."""
        since = item.submitting_since
        return since is not None and time.time() - since < self.claim_grace_s

    async def _drain(self) -> None:
        self.closing = True
        if self.submits:
            await asyncio.wait(list(self.submits.values()), timeout=SUBMIT_DRAIN_S)
        if self.dirty:
            try:
                await self._save()
            except Exception as exc:  # noqa: BLE001 - the claims still hold every outcome
                self.log.warning("Could not save the batch state while stopping: %s", exc)

    # -- watching -----------------------------------------------------------------------------
    def _watch(self, item: BatchItem) -> None:
        assert item.request_id is not None
        self.watches[item.id] = JobWatch(
            item.request_id, self.t.deadline_epoch_s, self.policy, drain=self.drain
        )
        self.next_poll[item.id] = time.time() + self.policy.delay(0)

    def _unwatch(self, item_id: str) -> None:
        self.watches.pop(item_id, None)
        self.next_poll.pop(item_id, None)

    async def _poll(self, item_id: str) -> None:
        watch = self.watches[item_id]
        if (more := watch.wake()) > 0:  # re-planned from what other items taught: no request yet
            self.next_poll[item_id] = time.time() + more
            return
        async with self.budget.slot(), shared_poll_budget().slot():
            event = await watch.apoll(self.hook)
        if item_id not in self.watches:
            return  # a merged save ended it meanwhile
        if event is None:
            self.next_poll[item_id] = time.time() + watch.next_delay()
            return
        self._unwatch(item_id)
        self._apply(self.by_id[item_id], event)

    def _apply(self, item: BatchItem, event: JobEvent) -> None:
        self.dirty = True
        if event.status is EventStatus.SUCCESS:
            item.move(ItemState.COMPLETED)
        elif event.status is EventStatus.FAILED and item.attempts <= self.t.item_retries:
            self.log.info("Item %s failed (%s); retrying it", item.id, event.message)
            item.request_id = None
            item.move(ItemState.PENDING, error=event.message)
        elif event.status is EventStatus.CANCELLED:
            item.move(ItemState.CANCELLED, error=event.message)
        else:
            item.move(ItemState.FAILED, error=event.message)

    # -- bookkeeping --------------------------------------------------------------------------
    async def _save(self) -> None:
        """Save a snapshot (the loop keeps going meanwhile), then fold in what other writers saved."""
        snapshot = self.state.model_copy(deep=True)
        self.dirty = False
        written = await asyncio.to_thread(self.checkpoint.save, snapshot)
        self.last_save = time.time()
        if written is not snapshot:
            self.state = self.state.merged_with(written)
            self._sync()

    def _sync(self) -> None:
        """After a resume or a merge: re-index the items and watch exactly the active ones."""
        self.by_id = {item.id: item for item in self.state.items}
        for item_id in list(self.watches):
            item = self.by_id.get(item_id)
            if item is None or item.state is not ItemState.ACTIVE:
                self._unwatch(item_id)
        for item in self.state.in_state(ItemState.ACTIVE):
            if item.id not in self.watches and item.request_id:
                self._watch(item)
        self.foreign &= {item.id for item in self.state.in_state(ItemState.SUBMITTING)}

    def _progress(self) -> None:
        now = time.time()
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            self.log.info(
                "Batch %s: %s (%d in flight)", self.state.batch_id, self.state.counts(), len(self.watches)
            )

    def _event(self, status: EventStatus, message: str) -> BatchEvent:
        return BatchEvent.model_validate(
            {
                "status": status,
                "checkpoint_uri": self.checkpoint.uri,
                "message": message,
                "summary": summary(self.state),
            }
        )
