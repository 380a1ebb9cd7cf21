"""How to wait for a RunComfy job: the one "decide the next step" logic shared by every waiter.

The synchronous wait (``deferrable=False``), the trigger and the batch trigger all drive a
:class:`JobWatch` and differ only in how they sleep and send. That keeps the policy (backoff, error
budget, deadline, what counts as success) in one place instead of one copy per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyRateLimitedError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.models import JobEvent, JobState, ResultResponse, StatusResponse
from airflow_provider_nanobanana.redaction import redact_url

if TYPE_CHECKING:
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollPolicy:
    """Adaptive polling: soon after submit, then slower, capped, jittered, never past the deadline.

    Edits take seconds to minutes, so a fixed 30-60 s interval (what the official providers use)
    either wastes minutes or floods the API. Starting at ``initial_s`` and growing by ``factor`` to
    ``max_s`` costs ~10 polls for a 2-minute job instead of 24 at a fixed 5 s.
    """

    initial_s: float = 2.0
    factor: float = 1.5
    max_s: float = 30.0
    jitter: float = 0.2
    max_consecutive_errors: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"poll_interval must be > 0 and <= {self.max_s} s, got {self.initial_s}")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("poll factor must be >= 1 and jitter in [0, 1)")

    @classmethod
    def between(cls, first_s: float, max_s: float) -> PollPolicy:
        """The policy for an operator's ``poll_interval`` / ``poll_max_interval`` pair (a max below
        the first interval means a fixed interval)."""
        return cls(initial_s=first_s, max_s=max(first_s, max_s))

    def delay(
        self, step: int, *, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(step, 0))
        if retry_after_s:
            base = max(base, retry_after_s)
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base * spread


@dataclass
class JobWatch:
    """State of one wait; every method is pure bookkeeping, no I/O.

    The deadline is an epoch (``time.time()``), not ``monotonic()``: a trigger is rebuilt from its
    kwargs in another process after a triggerer restart and must keep the same deadline.
    """

    request_id: str
    deadline_epoch_s: float
    policy: PollPolicy = field(default_factory=PollPolicy)
    started_epoch_s: float = field(default_factory=time.time)
    step: int = 0
    polls: int = 0
    consecutive_errors: int = 0
    state: JobState | None = None
    state_text: str = ""
    queue_position: int | None = None
    retry_after_s: float | None = None
    last_error: str = ""
    _last_report_s: float = 0.0
    _last_key: tuple[JobState | None, int | None] | None = None

    def remaining_s(self, now: float | None = None) -> float:
        return self.deadline_epoch_s - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining_s(now) <= 0

    def next_delay(self) -> float:
        delay = self.policy.delay(self.step, retry_after_s=self.retry_after_s)
        self.retry_after_s = None
        # Wake up exactly at the deadline rather than oversleeping it, so the timeout is punctual.
        return max(0.0, min(delay, self.remaining_s()))

    # -- outcomes of one poll -----------------------------------------------------------------
    def on_status(self, status: StatusResponse) -> bool:
        """Record a status; True when the job is terminal and its result should be fetched."""
        self.polls += 1
        self.consecutive_errors = 0
        previous = self.state
        self.state, self.state_text = status.status, status.status_text
        self.queue_position = status.queue_position
        if previous is JobState.IN_QUEUE and status.status is JobState.IN_PROGRESS:
            self.step = 1  # it started running: edits finish soon, so look again soon
        else:
            self.step += 1
        return status.status.is_terminal

    def on_error(self, exc: RunComfyAPIError) -> JobEvent | None:
        """A poll failed after the hook's own retries: keep waiting, or end with an ``error`` event."""
        self.polls += 1
        self.last_error = str(exc)
        transient = isinstance(exc, (RunComfyTransientError, RunComfyRateLimitedError))
        if isinstance(exc, RunComfyRateLimitedError):
            self.retry_after_s = exc.retry_after_s
        self.consecutive_errors += 1
        if transient and self.consecutive_errors < self.policy.max_consecutive_errors:
            self.step += 1
            return None
        why = "" if not transient else f" ({self.consecutive_errors} consecutive failed polls)"
        return self.event("error", f"polling {self.request_id} failed{why}: {exc}")

    def on_result(self, result: ResultResponse) -> JobEvent | None:
        """Map a terminal result to the final event; None if the result still shows a running job."""
        state = result.status
        if state is JobState.COMPLETED:
            images = result.images
            if not images:
                return self.event("failed", "job completed but returned no output URLs", state=state)
            # Output URLs may be signed; the event is stored in the metadata DB, so only redacted ones.
            redacted = [redact_url(u) for u in images]
            return self.event(
                "success", f"completed with {len(images)} output(s)", images=redacted, state=state
            )
        if state is JobState.FAILED:
            return self.event("failed", f"job failed: {result.error_message}", state=state)
        if state is JobState.CANCELLED:
            return self.event("cancelled", "job was cancelled", state=state)
        return None

    def timeout_event(self) -> JobEvent:
        last = self.state_text or (self.state.value if self.state else "never polled")
        extra = f"; last error: {self.last_error}" if self.last_error and self.consecutive_errors else ""
        waited = time.time() - self.started_epoch_s
        return self.event("timeout", f"job not finished after {waited:.0f}s (last state: {last}){extra}")

    def event(
        self,
        status: str,
        message: str,
        *,
        images: list[str] | None = None,
        state: JobState | None = None,
    ) -> JobEvent:
        return JobEvent.model_validate(
            {
                "status": status,
                "request_id": self.request_id,
                "message": message,
                "images": images or [],
                "job_state": state or self.state,
            }
        )

    def progress(self, now: float | None = None, every_s: float = 60.0) -> str | None:
        """A log line when something changed, or a heartbeat every ``every_s``; None otherwise."""
        now = time.time() if now is None else now
        key = (self.state, self.queue_position)
        if key == self._last_key and now - self._last_report_s < every_s:
            return None
        self._last_key = key
        self._last_report_s = now
        where = f" (queue position {self.queue_position})" if self.queue_position is not None else ""
        state = (
            self.state_text if self.state is JobState.UNKNOWN else (self.state.value if self.state else "?")
        )
        return (
            f"{self.request_id}: {state}{where} after {now - self.started_epoch_s:.0f}s, {self.polls} polls"
        )


class PollBudget:
    """A process-wide cap on poll rate and in-flight polls, shared by every waiter on one event loop.

    One ``httpx.AsyncClient`` sustains about 200 requests/s on an event loop and collapses above
    ~400/s. Reserving a send slot here makes each job's poll interval stretch when thousands wait,
    instead of the loop falling over. Slots are handed out in order, O(1) per poll.
    """

    def __init__(self, rate_per_s: float = 150.0, max_in_flight: int = 32) -> None:
        if rate_per_s <= 0 or max_in_flight <= 0:
            raise ValueError("poll budget rate and in-flight limit must be positive")
        self.rate_per_s = rate_per_s
        self._interval = 1.0 / rate_per_s
        self._next_free = 0.0
        self._in_flight = asyncio.Semaphore(max_in_flight)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_free)
        self._next_free = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)
        async with self._in_flight:
            yield


_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PollBudget] = weakref.WeakKeyDictionary()


def shared_poll_budget() -> PollBudget:
    """The budget of the running event loop, configured by ``[nanobanana] poll_rate_per_s`` and
    ``poll_max_in_flight`` (env ``AIRFLOW__NANOBANANA__POLL_RATE_PER_S`` ...)."""
    loop = asyncio.get_running_loop()
    budget = _BUDGETS.get(loop)
    if budget is None:
        rate, in_flight = _budget_config()
        budget = _BUDGETS[loop] = PollBudget(rate, in_flight)
    return budget


def _budget_config() -> tuple[float, int]:
    try:
        from airflow_provider_nanobanana._compat import conf

        rate = conf.getfloat("nanobanana", "poll_rate_per_s", fallback=150.0)
        in_flight = conf.getint("nanobanana", "poll_max_in_flight", fallback=32)
    except Exception:  # noqa: BLE001 - configuration must never stop a poll loop
        return 150.0, 32
    return float(rate or 150.0), int(in_flight or 32)


def wait_for_job(
    hook: RunComfyHook, watch: JobWatch, *, sleep: Callable[[float], None] = time.sleep
) -> JobEvent:
    """Block until the job ends or the deadline passes (``deferrable=False``; holds a worker slot)."""
    while not watch.expired():
        try:
            if watch.on_status(hook.get_status(watch.request_id)):
                event = watch.on_result(hook.get_result(watch.request_id))
                if event is not None:
                    return event
        except RunComfyAPIError as exc:
            if (event := watch.on_error(exc)) is not None:
                return event
        if line := watch.progress():
            log.info(line)
        sleep(watch.next_delay())
    return watch.timeout_event()
