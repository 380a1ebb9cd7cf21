"""Wait for a RunComfy request submitted elsewhere (another task, another system)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from airflow_provider_nanobanana.exceptions import RunComfyError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import JobEvent, JobState, validate_request_id
from airflow_provider_nanobanana.outcome import raise_for_event
from airflow_provider_nanobanana.polling import JobWatch
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
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.request_id = request_id
        self.runcomfy_conn_id = runcomfy_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.poll_max_interval = poll_max_interval

    @cached_property
    def hook(self) -> RunComfyHook:
        return RunComfyHook(self.runcomfy_conn_id)

    def execute(self, context: Context) -> Any:
        validate_request_id(self.request_id)
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=RunComfyJobTrigger(
                request_id=self.request_id,
                deadline_epoch_s=time.time() + float(self.timeout),
                runcomfy_conn_id=self.runcomfy_conn_id,
                poll_interval_s=self.poll_interval,
                poll_max_s=self.poll_max_interval,
                cancel_on_kill=False,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout) + self.poll_max_interval + 120),
        )

    def poke(self, context: Context) -> bool:
        status = self.hook.get_status(self.request_id)
        if not status.status.is_terminal:
            self.log.info("%s is %s", self.request_id, status.status_text or status.status.value)
            return False
        watch = JobWatch(self.request_id, time.time() + 60)
        watch.on_status(status)
        event = watch.on_result(self.hook.get_result(self.request_id))
        if event is None:
            return False
        raise_for_event(event)
        return True

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if event is None:
            raise RunComfyError("the RunComfy trigger fired without an event; the job outcome is unknown")
        parsed = JobEvent.model_validate(event)
        raise_for_event(parsed)
        return {
            "request_id": parsed.request_id,
            "status": JobState.COMPLETED.value,
            "images": [redact_url(u) for u in parsed.images],
        }
