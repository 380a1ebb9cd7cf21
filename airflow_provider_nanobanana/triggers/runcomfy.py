"""Wait for one RunComfy request in the triggerer, without holding a worker slot.

The trigger only polls. Submitting happens on the worker, because a triggerer restart re-runs
``run()`` from the serialized kwargs and a POST in here could be sent twice (and billed twice).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_nanobanana.hooks.per_loop import waiters_on_loop, waiting_on_loop
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import EventStatus, JobEvent, validate_request_id
from airflow_provider_nanobanana.polling import (
    JobWatch,
    PollPolicy,
    hold_until,
    shared_poll_budget,
    sleep_until_due,
)
from airflow_provider_nanobanana.queue_drain import shared_queue_drain
from airflow_provider_nanobanana.triggers.moves import task_still_deferred
from airflow_provider_nanobanana.triggers.versioning import check_kwargs_version

#: Version of the serialized kwargs. 1 (0.1.0, no ``kwargs_version`` key) had no release hold.
KWARGS_VERSION = 2

#: Above this many waiters on one triggerer, a job's state changes are logged at DEBUG, not INFO.
#: A trigger's log line goes to the triggerer's supervisor with a blocking write (Airflow 3.3); when
#: thousands of triggers are starting, the supervisor reads late, and one state line held the whole
#: event loop for 1.1 s with 2,000 triggers (docs/benchmarks-loop-blocks.md).
INFO_LOG_MAX_WAITERS = 500


class RunComfyJobTrigger(BaseTrigger):
    """Poll a submitted request until it ends; yield exactly one verdict event, then return.

    :param request_id: the RunComfy request to wait for.
    :param deadline_epoch_s: wall-clock deadline (``time.time()`` based) after which a ``timeout``
        event is sent; epoch, not a duration, so a trigger rebuilt after a restart keeps it.
    :param runcomfy_conn_id: connection with the API token.
    :param poll_interval_s: first poll delay; later ones grow to ``poll_max_s``.
    :param cancel_on_kill: cancel the job when a user kills the deferred task while it is queued.
    :param release_not_before_epoch_s: the event is never yielded before this wall-clock time (the
        deferral's start plus ``min_deferral``), so Airflow's defer-exit race cannot fail the task.

    Serialized kwargs carry ids and settings only: never the token or a pre-signed URL. The event
    is a verdict without outputs: the worker fetches the result once, when it archives.
    """

    def __init__(
        self,
        *,
        request_id: str,
        deadline_epoch_s: float,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        poll_interval_s: float = 2.0,
        poll_max_s: float = 30.0,
        cancel_on_kill: bool = True,
        release_not_before_epoch_s: float | None = None,
        kwargs_version: int = 1,
    ) -> None:
        super().__init__()
        check_kwargs_version(type(self), kwargs_version, KWARGS_VERSION)
        self.request_id = validate_request_id(request_id)
        self.deadline_epoch_s = float(deadline_epoch_s)
        self.runcomfy_conn_id = runcomfy_conn_id
        self.poll_interval_s = poll_interval_s
        self.poll_max_s = poll_max_s
        self.cancel_on_kill = cancel_on_kill
        self.release_not_before_epoch_s = release_not_before_epoch_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "kwargs_version": KWARGS_VERSION,
                "request_id": self.request_id,
                "deadline_epoch_s": self.deadline_epoch_s,
                "runcomfy_conn_id": self.runcomfy_conn_id,
                "poll_interval_s": self.poll_interval_s,
                "poll_max_s": self.poll_max_s,
                "cancel_on_kill": self.cancel_on_kill,
                "release_not_before_epoch_s": self.release_not_before_epoch_s,
            },
        )

    def _hook(self) -> RunComfyHook:
        return RunComfyHook(self.runcomfy_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = JobWatch(
            self.request_id,
            self.deadline_epoch_s,
            PollPolicy.between(self.poll_interval_s, self.poll_max_s),
            drain=shared_queue_drain(self.runcomfy_conn_id),  # queue-position-aware schedule
        )
        event = await self._wait(watch)
        await hold_until(self.release_not_before_epoch_s)
        yield TriggerEvent(event.model_dump(mode="json"))

    async def _wait(self, watch: JobWatch) -> JobEvent:
        try:
            hook = self._hook()
            # Resolved before taking a poll slot: a connection lookup must not hold one.
            await hook.aget_settings()
            budget = shared_poll_budget()
            logged_state = watch.state
            with waiting_on_loop():
                while not watch.expired():
                    async with budget.slot():
                        event = await watch.apoll(hook)
                    if event is not None:
                        return event
                    if line := watch.progress():
                        self.log.log(self._level_for(watch, logged_state), line)
                        logged_state = watch.state
                    await sleep_until_due(watch)
            return watch.timeout_event()
        except Exception as exc:
            self.log.exception("RunComfy trigger for %s failed", self.request_id)
            return watch.event(EventStatus.ERROR, f"trigger failed: {type(exc).__name__}: {exc}")

    @staticmethod
    def _level_for(watch: JobWatch, logged_state: object) -> int:
        """INFO for a change of state after the first answer, on a lightly loaded triggerer; else DEBUG.

        A triggerer's log lines travel through its supervisor with a blocking write (Airflow 3.3).
        10,000 triggers reporting queue positions and heartbeats at INFO filled that channel until
        the loop stalled; even one line each at the first answer, which comes in the burst of a
        pickup, held a 10,000-trigger loop for 1.6 s (docs/benchmarks-loop-blocks.md): the first
        triggers of a pickup answer while fewer than ``INFO_LOG_MAX_WAITERS`` are counted, just when
        the supervisor is busiest. So the first answer is DEBUG (Airflow logs the trigger's start
        itself), and so is everything on a crowded triggerer.
        """
        first = logged_state is None
        if first or watch.state is logged_state or waiters_on_loop() > INFO_LOG_MAX_WAITERS:
            return logging.DEBUG
        return logging.INFO

    async def on_kill(self) -> None:
        """Airflow >= 3.3 calls this when a user marks or clears the deferred task (not on restarts).

        RunComfy can only cancel queued jobs; a running one will finish (and be billed) regardless,
        so this is one best-effort call whose failure is logged, never raised. Airflow also calls it
        when the trigger merely moves to another triggerer; then the task is still deferred and the
        job is left alone (see :mod:`.moves`).
        """
        if not self.cancel_on_kill:
            return
        if await task_still_deferred(self):
            self.log.info(
                "Trigger for %s moved to another triggerer; its job is not cancelled", self.request_id
            )
            return
        await self._hook().acancel_if_queued(self.request_id)
