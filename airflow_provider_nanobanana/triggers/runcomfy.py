"""Wait for one RunComfy request in the triggerer, without holding a worker slot.

The trigger only polls. Submitting happens on the worker, because a triggerer restart re-runs
``run()`` from the serialized kwargs and a POST in here could be sent twice (and billed twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_nanobanana.exceptions import RunComfyAPIError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import JobState, validate_request_id
from airflow_provider_nanobanana.polling import JobWatch, PollPolicy, shared_poll_budget

#: Cleanup on kill is one best-effort call; it must never hang the triggerer.
CANCEL_TIMEOUT_S = 10.0


class RunComfyJobTrigger(BaseTrigger):
    """Poll a submitted request until it ends; yield exactly one event, then return.

    :param request_id: the RunComfy request to wait for.
    :param deadline_epoch_s: wall-clock deadline (``time.time()`` based) after which a ``timeout``
        event is sent; epoch, not a duration, so a trigger rebuilt after a restart keeps it.
    :param runcomfy_conn_id: connection with the API token.
    :param poll_interval_s: first poll delay; later ones grow to ``poll_max_s``.
    :param cancel_on_kill: cancel the job when a user kills the deferred task while it is queued.

    Serialized kwargs carry ids and settings only: never the token or a pre-signed URL.
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
    ) -> None:
        super().__init__()
        self.request_id = validate_request_id(request_id)
        self.deadline_epoch_s = float(deadline_epoch_s)
        self.runcomfy_conn_id = runcomfy_conn_id
        self.poll_interval_s = poll_interval_s
        self.poll_max_s = poll_max_s
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "deadline_epoch_s": self.deadline_epoch_s,
                "runcomfy_conn_id": self.runcomfy_conn_id,
                "poll_interval_s": self.poll_interval_s,
                "poll_max_s": self.poll_max_s,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _hook(self) -> RunComfyHook:
        return RunComfyHook(self.runcomfy_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        policy = PollPolicy.between(self.poll_interval_s, self.poll_max_s)
        watch = JobWatch(self.request_id, self.deadline_epoch_s, policy)
        hook = self._hook()
        budget = shared_poll_budget()
        try:
            while not watch.expired():
                try:
                    async with budget.slot():
                        terminal = watch.on_status(await hook.aget_status(self.request_id))
                    if terminal:
                        async with budget.slot():
                            event = watch.on_result(await hook.aget_result(self.request_id))
                        if event is not None:
                            yield TriggerEvent(event.model_dump(mode="json"))
                            return
                except RunComfyAPIError as exc:
                    if (event := watch.on_error(exc)) is not None:
                        yield TriggerEvent(event.model_dump(mode="json"))
                        return
                if line := watch.progress():
                    self.log.info(line)
                await asyncio.sleep(watch.next_delay())
            yield TriggerEvent(watch.timeout_event().model_dump(mode="json"))
        except Exception as exc:
            self.log.exception("RunComfy trigger for %s failed", self.request_id)
            event = watch.event("error", f"trigger failed: {type(exc).__name__}: {exc}")
            yield TriggerEvent(event.model_dump(mode="json"))

    async def on_kill(self) -> None:
        """Airflow >= 3.3 calls this when a user marks or clears the deferred task (not on restarts).

        RunComfy can only cancel queued jobs; a running one will finish (and be billed) regardless,
        so this is one best-effort call whose failure is logged, never raised.
        """
        if not self.cancel_on_kill:
            return
        await cancel_if_queued(self._hook(), self.request_id, log=self.log)


async def cancel_if_queued(hook: RunComfyHook, request_id: str, *, log: Any) -> bool:
    """Best-effort, time-bounded cancel of a job that is still queued; True if it was cancelled."""

    async def attempt() -> bool:
        status = await hook.aget_status(request_id)
        if status.status is not JobState.IN_QUEUE:
            log.info("Not cancelling %s: it is %s", request_id, status.status_text or status.status.value)
            return False
        response = await hook.acancel(request_id)
        log.info("Cancel of %s: %s", request_id, response.outcome.value)
        return response.cancelled

    try:
        return await asyncio.wait_for(attempt(), CANCEL_TIMEOUT_S)
    except (RunComfyAPIError, asyncio.TimeoutError) as exc:
        log.warning("Could not cancel RunComfy request %s: %s", request_id, exc or "timed out")
        return False
