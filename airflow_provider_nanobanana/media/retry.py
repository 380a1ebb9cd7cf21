"""Which S3 and download failures are worth another try, and the tenacity policy that tries again.

:func:`classify` is the one place that decides: connection errors, 408/429/5xx from the file host and
S3 throttling or 5xx are transient; an expired output URL (401/403/404/410), a body that is not an
image, access denied or a missing bucket are not. Errors it does not know propagate unchanged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TypeVar

import botocore.exceptions
import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from airflow_provider_nanobanana.bodies import BodyRefused
from airflow_provider_nanobanana.media.content import NotAnImageError
from airflow_provider_nanobanana.media.errors import (
    FileHostStatus,
    OutputFailure,
    s3_error_code,
    s3_error_text,
    safe_text,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest single back-off; the delay doubles per attempt up to this.
MAX_BACKOFF_S = 30.0

#: File-host answers meaning the temporary output URL is gone; retrying cannot bring it back.
_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
    }
)


def classify(exc: BaseException) -> OutputFailure | None:
    """Map an exception to a failure reason and whether retrying may help; ``None`` for unknown errors."""
    if isinstance(exc, OutputFailure):
        return exc
    if isinstance(exc, FileHostStatus):
        code = exc.status_code
        if code in _EXPIRED_STATUSES:
            return OutputFailure(
                f"the output URL expired before archiving (file host answered HTTP {code}); "
                "RunComfy keeps outputs only for a limited time",
                transient=False,
            )
        return OutputFailure(f"file host answered HTTP {code}", transient=code in (408, 429) or code >= 500)
    if isinstance(exc, httpx.TransportError):
        return OutputFailure(f"download failed: {type(exc).__name__}: {safe_text(exc)}", transient=True)
    if isinstance(exc, httpx.HTTPError):
        return OutputFailure(f"download failed: {type(exc).__name__}: {safe_text(exc)}", transient=False)
    if isinstance(exc, (NotAnImageError, BodyRefused)):
        return OutputFailure(str(exc), transient=False)
    if isinstance(exc, botocore.exceptions.ClientError):
        s3_code = s3_error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return OutputFailure(
            f"S3 error: {s3_error_text(exc)}", transient=s3_code in _TRANSIENT_S3_CODES or status >= 500
        )
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return OutputFailure(f"S3 unreachable: {type(exc).__name__}: {safe_text(exc)}", transient=True)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return OutputFailure(f"S3 client error: {type(exc).__name__}: {safe_text(exc)}", transient=False)
    return None


def is_transient(exc: BaseException) -> bool:
    failure = classify(exc)
    return failure is not None and failure.transient


def call_with_retries(call: Callable[[], T], what: str, *, max_attempts: int, base_delay_s: float) -> T:
    """Run ``call``, trying transient failures again up to ``max_attempts`` tries in all.

    The delay starts at ``base_delay_s`` and doubles per attempt (at most :data:`MAX_BACKOFF_S`),
    with ±20 % jitter. What still fails is raised as :class:`OutputFailure` (a permanent failure at
    once); an error :func:`classify` does not know propagates unchanged, without a retry.
    """
    backoff = wait_exponential(multiplier=base_delay_s, max=MAX_BACKOFF_S)
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(max_attempts),
        wait=lambda state: backoff(state) * random.uniform(0.8, 1.2),
        before_sleep=lambda state: _log_retry(state, what, max_attempts),
        reraise=True,
    )
    try:
        return retrying(call)
    except Exception as exc:
        failure = classify(exc)
        if failure is None or failure is exc:
            raise
        raise failure from exc


def _log_retry(state: RetryCallState, what: str, max_attempts: int) -> None:
    exc = state.outcome.exception() if state.outcome else None
    failure = classify(exc) if exc is not None else None
    log.warning(
        "%s: %s; retrying in %.1f s (attempt %d of %d)",
        what,
        failure.reason if failure else "failed",
        state.next_action.sleep if state.next_action else 0.0,
        state.attempt_number,
        max_attempts,
    )
