"""Wait for a RunComfy request submitted elsewhere (another task, another system)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_nanobanana.config import MIN_DEFERRAL_S, WAIT_BEFORE_DEFER_S
from airflow_provider_nanobanana.exceptions import RunComfyError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import JobEvent, JobState, validate_request_id
from airflow_provider_nanobanana.outcome import (
    check_seconds,
    completed_outputs,
    deferral_timeout,
    raise_for_event,
)
from airflow_provider_nanobanana.polling import JobWatch, PollPolicy, wait_for_job
from airflow_provider_nanobanana.redaction import redact_url
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class RunComfyJobSensor(BaseSensorOperator):
    """Succeeds when ``request_id`` completes; fails when it fails or is cancelled.

    Deferrable by default (the same trigger as :class:`NanoBananaEditOperator`). The sensor only
    watches: it never cancels a job it did not submit. Returns ``{"request_id", "status", "images"}``
    with output URLs redacted.

    :param request_id: the RunComfy request to wait for (templated).
    :param runcomfy_conn_id: ``runcomfy`` connection (password = API token).
    :param deferrable: wait in the triggerer (default) or poke from the worker.
    :param poll_interval: seconds before the first poll; also the poke interval.
    :param poll_max_interval: longest wait between two polls in deferrable mode, in seconds.
    :param wait_before_defer: seconds to keep polling on the worker before deferring (``None``:
        ``[nanobanana] wait_before_defer_s``).
    :param min_deferral: seconds after deferring before the trigger may fire (``None``:
        ``[nanobanana] min_deferral_s``); see :class:`NanoBananaEditOperator`.
    """

    template_fields: Sequence[str] = ("request_id",)

    def __init__(
        self,
        *,
        request_id: str,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: float = 2.0,
        poll_max_interval: float = 30.0,
        wait_before_defer: float | None = None,
        min_deferral: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.request_id = request_id
        self.runcomfy_conn_id = runcomfy_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval
        self.wait_before_defer = check_seconds("wait_before_defer", wait_before_defer)
        self.min_deferral = check_seconds("min_deferral", min_deferral)
        PollPolicy.between(poll_interval, poll_max_interval)

    @cached_property
    def hook(self) -> RunComfyHook:
        return RunComfyHook(self.runcomfy_conn_id)

    @cached_property
    def watch(self) -> JobWatch:
        """One watch per sensor run, so pokes share the error budget and the progress reports."""
        policy = PollPolicy.between(self.poll_interval, self.poll_max_interval)
        return JobWatch(validate_request_id(self.request_id), time.time() + float(self.timeout), policy)

    def execute(self, context: Context) -> Any:
        validate_request_id(self.request_id)
        if not self.deferrable:
            return super().execute(context)
        wait_s = WAIT_BEFORE_DEFER_S.resolve(self.wait_before_defer)
        event = wait_for_job(self.hook, self.watch, give_up_at_epoch_s=time.time() + wait_s)
        if event is not None:
            return self._complete(event)
        self.defer(
            trigger=RunComfyJobTrigger(
                request_id=self.request_id,
                deadline_epoch_s=self.watch.deadline_epoch_s,
                runcomfy_conn_id=self.runcomfy_conn_id,
                poll_interval_s=self.poll_interval,
                poll_max_s=self.poll_max_interval,
                cancel_on_kill=False,
                release_not_before_epoch_s=time.time() + MIN_DEFERRAL_S.resolve(self.min_deferral),
            ),
            method_name="execute_complete",
            timeout=deferral_timeout(float(self.timeout), self.poll_max_interval),
        )

    def poke(self, context: Context) -> PokeReturnValue:
        event = self.watch.poll(self.hook)
        if event is None:
            if line := self.watch.progress():
                self.log.info(line)
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._complete(event))

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if event is None:
            raise RunComfyError("the RunComfy trigger fired without an event; the job outcome is unknown")
        return self._complete(JobEvent.model_validate(event))

    def _complete(self, event: JobEvent) -> dict[str, Any]:
        raise_for_event(event)
        images = completed_outputs(self.hook.get_result(event.request_id))
        return {
            "request_id": event.request_id,
            "status": JobState.COMPLETED.value,
            "images": [redact_url(u) for u in images],
        }
