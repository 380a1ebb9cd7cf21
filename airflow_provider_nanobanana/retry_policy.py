"""Whether a failed RunComfy task is worth another try, decided from the exception itself.

Airflow 3.3 lets a task carry a ``retry_policy`` that reads the exception of a failed try and
decides: fail now, retry (optionally after a delay of its choosing), or leave it to the task's
``retries``/``retry_delay``. The provider's operators use :class:`RunComfyRetryPolicy` by default on
3.3+, so a wrong token or a rejected input does not burn every retry, and a rate limit waits as long
as the server asked. On Airflow 3.1/3.2 there is no such hook: the class still imports (its
:meth:`~RunComfyRetryPolicy.choose` works anywhere) but operators do not attach it, and Airflow's
own retries apply exactly as before.

The table (first match wins; see docs/retries.md):

=========================================  =====================================================
exception                                   decision
=========================================  =====================================================
``RunComfySubmitUnknownError``              fail: the POST may have created a billed job
``InvalidEditRequestError``,                fail: the same input is rejected again
``RunComfyBadRequestError`` (400/402/422)
``RunComfyAuthError`` (401/403)             fail: the token will not fix itself
``RunComfyNotFoundError`` (404/410)         fail: unknown model or request id
``RunComfyRateLimitedError`` (429)          retry after the server's ``Retry-After``
``RunComfyTransientError``, network errors  retry after the task's ``retry_delay``
``RunComfyJobTimeoutError``                 the task's ``retries`` (a retry re-attaches)
``RunComfyJobCancelledError``               fail: someone cancelled the job
``RunComfyJobFailedError`` (model refused)  fail, or retry with ``retry_refused_jobs=True``
``BudgetExceededError``                     fail: a retry meets the same budget or balance
anything else                               the task's ``retries``
=========================================  =====================================================

A retry never extends past the task's ``retries``: with ``retries=0`` only the "fail" rows change
anything. Reasons are fixed texts plus the request id: never the server's message, so no secret
can reach the task instance's stored reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_nanobanana._compat import HAS_RETRY_POLICY, RetryPolicy
from airflow_provider_nanobanana.exceptions import (
    BudgetExceededError,
    InvalidEditRequestError,
    RunComfyAuthError,
    RunComfyBadRequestError,
    RunComfyJobCancelledError,
    RunComfyJobFailedError,
    RunComfyJobTimeoutError,
    RunComfyNotFoundError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)

if TYPE_CHECKING:
    from airflow.sdk.definitions.retry_policy import RetryDecision

#: Longest ``Retry-After`` honoured by default; a server asking for more gets the task's own delay
#: capped here instead of parking the task for a day.
DEFAULT_MAX_RETRY_AFTER_S = 3600.0

#: Network failures outside the hook's typed errors (S3 transfers, user code in a subclass).
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, ConnectionError, TimeoutError)


class Choice(str, Enum):
    """What to do with a failed try; mirrors Airflow's ``RetryAction`` without needing 3.3."""

    RETRY = "retry"
    FAIL = "fail"
    DEFAULT = "default"


@dataclass(frozen=True)
class RetryChoice:
    """One decision: the action, an optional delay in seconds (None: the task's ``retry_delay``),
    and a reason safe to log and store."""

    action: Choice
    reason: str
    delay_s: float | None = None


class RunComfyRetryPolicy(RetryPolicy):
    """The provider's retry policy (Airflow 3.3+ ``retry_policy``); see the module table.

    :param retry_refused_jobs: retry a job the model ended in ``failed`` (a refusal, a safety
        filter, an input it could not use). Off by default: the same input is usually refused
        again, and every try is a new paid request.
    :param max_retry_after_s: cap on a server's ``Retry-After`` (seconds).
    """

    def __init__(
        self, *, retry_refused_jobs: bool = False, max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    ) -> None:
        if not (isinstance(max_retry_after_s, (int, float)) and math.isfinite(max_retry_after_s)) or (
            max_retry_after_s <= 0
        ):
            raise ValueError(
                f"max_retry_after_s must be a finite number of seconds > 0, got {max_retry_after_s!r}"
            )
        self.retry_refused_jobs = bool(retry_refused_jobs)
        self.max_retry_after_s = float(max_retry_after_s)

    def __repr__(self) -> str:
        return (
            f"RunComfyRetryPolicy(retry_refused_jobs={self.retry_refused_jobs}, "
            f"max_retry_after_s={self.max_retry_after_s:g})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunComfyRetryPolicy) and self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash((self.retry_refused_jobs, self.max_retry_after_s))

    # -- the decision (pure, any Airflow version) -------------------------------------------------
    def choose(self, exception: BaseException) -> RetryChoice:
        """The decision for ``exception``; the first matching row of the module table wins."""
        rid = getattr(exception, "request_id", None)
        about = f" (request {rid})" if rid else ""
        if isinstance(exception, BudgetExceededError):
            return _fail("the spend budget or the account balance does not cover this work")
        if isinstance(exception, RunComfySubmitUnknownError):
            return _fail("the submit may have created a billed job; another try could pay twice")
        if isinstance(exception, (InvalidEditRequestError, RunComfyBadRequestError)):
            return _fail(f"RunComfy rejected the input{about}; the same input fails again")
        if isinstance(exception, RunComfyAuthError):
            return _fail("RunComfy refused the API token (401/403); fix the connection")
        if isinstance(exception, RunComfyNotFoundError):
            return _fail(f"RunComfy does not know this model or request{about}")
        if isinstance(exception, RunComfyRateLimitedError):
            return self._after_rate_limit(exception)
        if isinstance(exception, (RunComfyTransientError, *_NETWORK_ERRORS)):
            return RetryChoice(Choice.RETRY, f"transient error ({type(exception).__name__}){about}")
        if isinstance(exception, RunComfyJobTimeoutError):
            return RetryChoice(Choice.DEFAULT, f"the job did not finish in time{about}")
        if isinstance(exception, RunComfyJobCancelledError):
            return _fail(f"the job was cancelled{about}")
        if isinstance(exception, RunComfyJobFailedError):
            if self.retry_refused_jobs:
                return RetryChoice(Choice.RETRY, f"the model refused the job{about}; retry_refused_jobs=True")
            return _fail(f"the model refused the job{about}; set retry_refused_jobs=True to retry")
        return RetryChoice(Choice.DEFAULT, f"no RunComfy rule for {type(exception).__name__}")

    def _after_rate_limit(self, exc: RunComfyRateLimitedError) -> RetryChoice:
        after = exc.retry_after_s
        if after is None or not math.isfinite(after):
            return RetryChoice(Choice.RETRY, "rate limited (429, no Retry-After)")
        delay = min(max(0.0, after), self.max_retry_after_s)
        return RetryChoice(Choice.RETRY, f"rate limited (429); retrying after {delay:g}s", delay_s=delay)

    # -- Airflow's interface (3.3+) ---------------------------------------------------------------
    def evaluate(
        self, exception: BaseException, try_number: int, max_tries: int, context: Any = None
    ) -> RetryDecision:
        """Airflow's hook: :meth:`choose`, as a ``RetryDecision`` (runs in the task's worker)."""
        from datetime import timedelta

        from airflow.sdk.definitions.retry_policy import RetryAction, RetryDecision

        choice = self.choose(exception)
        delay = None if choice.delay_s is None else timedelta(seconds=choice.delay_s)
        return RetryDecision(action=RetryAction(choice.action.value), retry_delay=delay, reason=choice.reason)

    def serialize(self) -> dict[str, Any]:
        return {
            "__type": "RunComfyRetryPolicy",
            "retry_refused_jobs": self.retry_refused_jobs,
            "max_retry_after_s": self.max_retry_after_s,
        }

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> RunComfyRetryPolicy:
        return cls(
            retry_refused_jobs=bool(data.get("retry_refused_jobs", False)),
            max_retry_after_s=float(data.get("max_retry_after_s", DEFAULT_MAX_RETRY_AFTER_S)),
        )


def _fail(reason: str) -> RetryChoice:
    return RetryChoice(Choice.FAIL, reason)


def default_retry_policy(kwargs: dict[str, Any]) -> None:
    """Give an operator the provider's policy unless its user chose one (``retry_policy=...`` on
    the task or in ``default_args``; ``None`` turns it off). A no-op before Airflow 3.3."""
    if not HAS_RETRY_POLICY or "retry_policy" in kwargs:
        return
    if "retry_policy" in (kwargs.get("default_args") or {}):
        return
    kwargs["retry_policy"] = RunComfyRetryPolicy()
