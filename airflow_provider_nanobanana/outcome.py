"""What a terminal job event means for the task: the one success/failure policy.

The operator (deferred and in-place paths) and the sensor all call :func:`raise_for_event`, so a
``cancelled`` or unknown outcome can never fall through to success in one of them.
"""

from __future__ import annotations

from airflow_provider_nanobanana.exceptions import (
    RunComfyError,
    RunComfyJobCancelledError,
    RunComfyJobFailedError,
    RunComfyJobTimeoutError,
)
from airflow_provider_nanobanana.models import JobEvent


def raise_for_event(event: JobEvent) -> None:
    """Return only for ``success``; raise the error that names the request and the cause otherwise."""
    rid = event.request_id
    if event.status == "success":
        return
    if event.status == "timeout":
        raise RunComfyJobTimeoutError(f"RunComfy request {rid}: {event.message}", request_id=rid)
    if event.status == "cancelled":
        raise RunComfyJobCancelledError(f"RunComfy request {rid} was cancelled", request_id=rid)
    if event.status == "failed":
        raise RunComfyJobFailedError(f"RunComfy request {rid}: {event.message}", request_id=rid)
    raise RunComfyError(f"RunComfy request {rid}: {event.message}")
