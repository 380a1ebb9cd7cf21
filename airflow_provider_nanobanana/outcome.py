"""What a job's verdict means for the task: the one success/failure policy, and its time limits.

The operators (deferred and in-place paths) and the sensor all call :func:`raise_for_event` and
:func:`completed_outputs`, so a ``cancelled``, unknown or empty outcome can never fall through to
success in one of them.
"""

from __future__ import annotations

import math
from datetime import timedelta

from airflow_provider_nanobanana.exceptions import (
    RunComfyError,
    RunComfyJobCancelledError,
    RunComfyJobFailedError,
    RunComfyJobTimeoutError,
)
from airflow_provider_nanobanana.models import EventStatus, JobEvent, JobState, ResultResponse

#: A deferral's own timeout sits this far past the trigger's deadline, so the trigger's clean
#: ``timeout`` event (which lets ``execute_complete`` cancel and explain) always arrives first.
DEFERRAL_MARGIN_S = 120.0


def raise_for_event(event: JobEvent) -> None:
    """Return only for ``success``; raise the error that names the request and the cause otherwise."""
    rid = event.request_id
    if event.status is EventStatus.SUCCESS:
        return
    if event.status is EventStatus.TIMEOUT:
        raise RunComfyJobTimeoutError(f"RunComfy request {rid}: {event.message}", request_id=rid)
    if event.status is EventStatus.CANCELLED:
        raise RunComfyJobCancelledError(f"RunComfy request {rid} was cancelled", request_id=rid)
    if event.status is EventStatus.FAILED:
        raise RunComfyJobFailedError(f"RunComfy request {rid}: {event.message}", request_id=rid)
    raise RunComfyError(f"RunComfy request {rid}: {event.message}")


def completed_outputs(result: ResultResponse) -> list[str]:
    """The output URLs of a job whose verdict was success; a result without any is a failure."""
    images = result.images
    if not images:
        state = result.status_text or result.status.value
        detail = "" if result.status is JobState.COMPLETED else f" (the result says {state!r})"
        raise RunComfyJobFailedError(
            f"RunComfy request {result.request_id}: job completed but returned no output URLs{detail}",
            request_id=result.request_id or "",
        )
    return images


def deferral_timeout(wait_s: float, poll_max_s: float) -> timedelta:
    """The backstop timeout of a deferral whose trigger gives up after ``wait_s`` by itself."""
    return timedelta(seconds=wait_s + poll_max_s + DEFERRAL_MARGIN_S)


def check_seconds(name: str, value: float | None) -> float | None:
    """A non-negative, finite number of seconds (or None for "use the configured default")."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number of seconds >= 0 (or None), got {value!r}")
    return float(value)
