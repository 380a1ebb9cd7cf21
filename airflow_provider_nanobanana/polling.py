"""How to wait for a RunComfy job: the one poll step shared by every waiter.

The in-place wait (``deferrable=False``), the wait before deferring, the sensor's poke, the trigger
and the batch trigger all call :meth:`JobWatch.poll` (or :meth:`JobWatch.apoll` on an event loop) and
differ only in how they sleep. That keeps the policy (backoff, error budget, deadline, what counts as
success) in one place. Polling knows no trigger, operator or task: it needs a hook and a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_nanobanana.config import POLL_MAX_IN_FLIGHT, POLL_RATE_PER_S
from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyRateLimitedError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.models import EventStatus, JobEvent, JobState, StatusResponse
from airflow_provider_nanobanana.queue_drain import QueueDrain

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
        if not 0 < self.initial_s <= self.max_s < math.inf:
            raise ValueError(
                f"poll_interval must be > 0 and <= poll_max_interval, both finite, got {self.initial_s} "
                f"and {self.max_s}"
            )
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


#: A queued job far from the head sleeps this share of its predicted wait: a queue that speeds up
#: then costs one more poll, not a late verdict.
QUEUE_LEAD = 0.9
#: A job is next looked at after this share of its expected run time: runs vary, and a look that
#: comes too early costs one poll while one that comes too late costs latency.
RUN_AIM = 0.95


def _starts_in(position: float, rate: float) -> float:
    """Seconds until a job at ``position`` starts, the queue moving ``rate`` positions a second.

    RunComfy does not say whether positions count from 0 or 1: ``p`` is taken as ``p - 1`` jobs
    ahead, the earlier wake-up of the two readings. The one home of that convention.
    """
    return max(0.0, position - 1) / rate


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
    #: The loop's queue model (:func:`shared_queue_drain`); None polls by backoff alone.
    drain: QueueDrain | None = field(default=None, repr=False)
    _last_report_s: float = 0.0
    _last_key: tuple[JobState | None, int | None] | None = None
    _queued_seen: tuple[float, int | None] | None = None  # (when, position) of the last in_queue answer
    _started: tuple[float, float] | None = None  # (estimated start, half the uncertainty)
    _running_seen_s: float | None = None  # the last in_progress answer
    _due_s: float | None = None  # when the queue model, at the last in_queue answer, expected a start
    _planned_s: float | None = None  # when the current sleep was planned

    def remaining_s(self, now: float | None = None) -> float:
        return self.deadline_epoch_s - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining_s(now) <= 0

    def next_delay(self, now: float | None = None) -> float:
        """Seconds until the next poll: planned from the queue model when it can predict (a queued
        job near when it should reach the head, a running one near when it should end), else the
        policy's backoff. ``Retry-After`` always wins."""
        now = time.time() if now is None else now
        self._planned_s = now
        planned = None if self.retry_after_s else self._planned_delay(now)
        delay = self.policy.delay(self.step, retry_after_s=self.retry_after_s) if planned is None else planned
        self.retry_after_s = None
        # Wake up exactly at the deadline rather than oversleeping it, so the timeout is punctual.
        return max(0.0, min(delay, self.remaining_s(now)))

    def wake(self, now: float | None = None) -> float:
        """Seconds more to sleep when a sleep from :meth:`next_delay` ends, or 0 to poll now.

        A deep job's sleep is cut at the model's horizon, because its rate may rest on too little.
        When other jobs' answers have taught the model something since this sleep was planned, the
        job's position is carried forward at the new rate and its sleep re-planned without a
        request; a poll is spent only when nothing new was learnt or the job is near the head.
        While the model has no rate yet but others are feeding it, a queued job waits for it (at
        most ``policy.max_s`` after its last answer) rather than asking again itself.
        """
        now = time.time() if now is None else now
        drain, seen = self.drain, self._queued_seen
        if self.state is not JobState.IN_QUEUE or drain is None or seen is None or seen[1] is None:
            return 0.0
        if drain.updated_s is None or self._planned_s is None or drain.updated_s <= self._planned_s:
            return 0.0
        rate = drain.rate_per_s(now)
        self._planned_s = max(now, drain.updated_s)  # an update stamped ahead of now is not news twice
        if rate is None:
            # Other jobs' answers are teaching the model; this one's would add little. Wait for a
            # rate, but never longer than backoff's cap since this job was last heard from.
            more = min(self.policy.delay(self.step), seen[0] + self.policy.max_s - now)
        else:
            starts_in = _starts_in(seen[1] - rate * (now - seen[0]), rate)
            if starts_in <= self.policy.max_s:
                return 0.0
            more = self._approach(starts_in, drain, now)
        # However sure the model is, a queued job answers itself at least every poll_queue_max_s:
        # one cancelled or failed while queued is seen that late at worst, as without re-planning.
        more = min(more, seen[0] + drain.max_wait_s - now, self.remaining_s(now))
        return 0.0 if more < self.policy.initial_s else more

    def _approach(self, starts_in: float, drain: QueueDrain, now: float) -> float:
        """The sleep of a job far from the head: most of the way there, no further than watched."""
        return min(drain.max_wait_s, QUEUE_LEAD * starts_in, max(self.policy.max_s, drain.horizon_s(now)))

    def _planned_delay(self, now: float) -> float | None:
        planned = self._predicted_delay(now)
        # One job that hung for an hour must not make every later job sleep an hour: no plan, near
        # the head, running or far back, sleeps longer than the model's cap (``poll_queue_max_s``).
        return None if planned is None or self.drain is None else min(planned, self.drain.max_wait_s)

    def _predicted_delay(self, now: float) -> float | None:
        drain = self.drain
        if drain is None:
            return None
        if self.state is JobState.IN_QUEUE and self.queue_position is not None:
            rate = drain.rate_per_s(now)
            if rate is None:
                return None
            starts_in = _starts_in(self.queue_position, rate)
            if starts_in > self.policy.max_s:
                return self._approach(starts_in, drain, now)
            if drain.run_s is None:  # near the head, run time unknown: see it start, and learn it
                return max(self.policy.initial_s, starts_in)
            return max(self.policy.initial_s, starts_in + RUN_AIM * drain.run_s)
        if self.state is JobState.IN_PROGRESS and self._started is not None and drain.run_s is not None:
            start, err = self._started
            if self._due_s is not None and err > self.policy.initial_s:
                # Seen queued long ago: the queue model's guess beats the middle of the gap.
                start = min(max(self._due_s, start - err), start + err)
            ends_in = start + RUN_AIM * drain.run_s - now
            if ends_in > self.policy.initial_s:
                return ends_in
        return None

    # -- the poll step: one home for "ask, then decide" -------------------------------------------
    def poll(self, hook: RunComfyHook) -> JobEvent | None:
        """One poll on this thread: the job's final verdict, or None to poll again after
        :meth:`next_delay`. Used by every synchronous waiter (in-place wait, pre-deferral wait,
        sensor poke)."""
        try:
            status = hook.get_status(self.request_id)
            if _needs_failure_detail(status):
                status = hook.get_result(self.request_id)
        except RunComfyAPIError as exc:
            return self.on_error(exc)
        return self.on_status(status)

    async def apoll(self, hook: RunComfyHook) -> JobEvent | None:
        """:meth:`poll` for the event loop (triggers); only the sends differ."""
        try:
            status = await hook.aget_status(self.request_id)
            if _needs_failure_detail(status):
                status = await hook.aget_result(self.request_id)
        except RunComfyAPIError as exc:
            return self.on_error(exc)
        return self.on_status(status)

    # -- outcomes of one poll (pure) --------------------------------------------------------------
    def on_status(self, status: StatusResponse, now: float | None = None) -> JobEvent | None:
        """Record a status; the final verdict when the job has ended, None while it runs.

        A verdict never carries outputs: whoever acts on a completed job (the worker that archives)
        fetches the result exactly once, so no result is fetched twice on any path.
        """
        self.polls += 1
        self.consecutive_errors = 0
        previous = self.state
        self._learn(status, time.time() if now is None else now)
        self.state, self.state_text = status.status, status.status_text
        self.queue_position = status.queue_position
        if previous is JobState.IN_QUEUE and status.status is JobState.IN_PROGRESS:
            self.step = 1  # it started running: edits finish soon, so look again soon
        else:
            self.step += 1
        state = status.status
        if state is JobState.COMPLETED:
            return self.event(EventStatus.SUCCESS, "job completed", state=state)
        if state is JobState.FAILED:
            return self.event(EventStatus.FAILED, f"job failed: {status.error_message}", state=state)
        if state is JobState.CANCELLED:
            return self.event(EventStatus.CANCELLED, "job was cancelled", state=state)
        return None

    def _learn(self, status: StatusResponse, now: float) -> None:
        """Feed the queue model: positions moved while queued, the run time of a job seen start and end."""
        state, drain = status.status, self.drain
        if state is JobState.IN_QUEUE:
            seen = self._queued_seen
            if drain is not None and seen is not None and None not in (seen[1], status.queue_position):
                drain.observe_queue(int(seen[1] or 0) - int(status.queue_position or 0), now - seen[0], now)
            self._queued_seen = (now, status.queue_position)
            position = status.queue_position
            rate = None if drain is None or position is None else drain.rate_per_s(now)
            self._due_s = None if rate is None or position is None else now + _starts_in(position, rate)
            return
        queued_until = self._queued_seen[0] if self._queued_seen else None
        if state is JobState.IN_PROGRESS:
            if self._started is None:
                since = now if queued_until is None else queued_until
                self._started = ((since + now) / 2, (now - since) / 2)
            self._running_seen_s = now
            return
        # Only completed runs teach the run time: a failed job may have ended at once or hung.
        if drain is None or state is not JobState.COMPLETED:
            return
        if self._started is not None and self._running_seen_s is not None:
            start, start_err = self._started
            end, end_err = (self._running_seen_s + now) / 2, (now - self._running_seen_s) / 2
            # Only a run pinned down to within half its length (or a first poll interval) counts.
            if start_err + end_err <= max(self.policy.initial_s, 0.5 * (end - start)):
                drain.observe_run(end - start)
        elif queued_until is not None:
            drain.run_at_most(now - queued_until)

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
        return self.event(EventStatus.ERROR, f"polling {self.request_id} failed{why}: {exc}")

    def timeout_event(self) -> JobEvent:
        last = self.state_text or (self.state.value if self.state else "never polled")
        extra = f"; last error: {self.last_error}" if self.last_error and self.consecutive_errors else ""
        waited = time.time() - self.started_epoch_s
        return self.event(
            EventStatus.TIMEOUT, f"job not finished after {waited:.0f}s (last state: {last}){extra}"
        )

    def event(self, status: EventStatus, message: str, *, state: JobState | None = None) -> JobEvent:
        return JobEvent.model_validate(
            {
                "status": status,
                "request_id": self.request_id,
                "message": message,
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

    A poll costs about 1 ms of CPU (2.9 ms through httpx's own transport), so an unbounded rate
    would let thousands of waiting jobs take the loop's whole core. Reserving a send slot here makes
    each job's poll interval stretch when thousands wait, instead of the loop falling over. Slots are
    handed out in order, O(1) per poll; a send time is booked only once an in-flight place is held,
    so no second ever sees more sends than the rate (a loop stall aside: then up to ``max_in_flight``
    booked sends go together, once).
    """

    def __init__(self, rate_per_s: float = 400.0, max_in_flight: int = 32) -> None:
        if rate_per_s <= 0 or max_in_flight <= 0:
            raise ValueError("poll budget rate and in-flight limit must be positive")
        self.rate_per_s = rate_per_s
        self._interval = 1.0 / rate_per_s
        self._next_free = 0.0
        self._in_flight = asyncio.Semaphore(max_in_flight)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # The send time is reserved only once an in-flight place is held: a time reserved while
        # waiting for a place would expire meanwhile, and every expired waiter would then send at
        # once, a burst over the rate.
        async with self._in_flight:
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self._next_free)
            self._next_free = start + self._interval
            if start > now:
                await asyncio.sleep(start - now)
            yield


_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PollBudget] = weakref.WeakKeyDictionary()


def shared_poll_budget() -> PollBudget:
    """The budget of the running event loop, configured by ``[nanobanana] poll_rate_per_s`` and
    ``poll_max_in_flight`` (env ``AIRFLOW__NANOBANANA__POLL_RATE_PER_S`` ...)."""
    loop = asyncio.get_running_loop()
    budget = _BUDGETS.get(loop)
    if budget is None:
        budget = _BUDGETS[loop] = PollBudget(POLL_RATE_PER_S.get(), int(POLL_MAX_IN_FLIGHT.get()))
    return budget


def _needs_failure_detail(status: StatusResponse) -> bool:
    """A failed job whose status does not say why: its result does (one extra GET, failures only)."""
    return status.status is JobState.FAILED and not status.error


def wait_for_job(
    hook: RunComfyHook,
    watch: JobWatch,
    *,
    give_up_at_epoch_s: float | None = None,
    sleep: Callable[[float], None] | None = None,
) -> JobEvent | None:
    """Poll on this thread until the job ends; holds a worker slot while it waits.

    Without ``give_up_at_epoch_s`` it waits up to the watch's deadline and ends with a ``timeout``
    event (``deferrable=False``). With it, it stops polling at that time and returns None: the caller
    defers the rest of the wait to the triggerer. A watch that has polled already (a re-attach read
    the status) sleeps before its next poll rather than asking twice in a row.
    """
    while True:
        if watch.polls:
            now = time.time()
            stop = watch.deadline_epoch_s
            if give_up_at_epoch_s is not None:
                stop = min(stop, give_up_at_epoch_s)
            if now >= stop:
                return watch.timeout_event() if watch.expired(now) else None
            delay = min(watch.next_delay(), stop - now)
            while delay > 0:  # re-planned without a request while the model says the job is far off
                (sleep or time.sleep)(delay)
                delay = min(watch.wake(), stop - time.time())
        if (event := watch.poll(hook)) is not None:
            return event
        if line := watch.progress():
            log.info(line)


async def sleep_until_due(watch: JobWatch) -> None:
    """Sleep on the event loop until ``watch`` should poll again, re-planning (:meth:`JobWatch.wake`)
    without a request whenever a sleep ends early enough to be worth one more look at the model."""
    delay = watch.next_delay()
    while delay > 0:
        await asyncio.sleep(delay)
        delay = watch.wake()


async def hold_until(epoch_s: float | None) -> None:
    """Sleep until ``epoch_s`` (a wall-clock time that survives a triggerer restart).

    A trigger that fires seconds after its task deferred can lose a race in Airflow's scheduler: it
    re-queues the task before it has drained the executor's "success" event for the worker's exit
    after ``defer()``, and then treats the task as killed externally (apache/airflow#66374, #67287,
    #71580, #72716). Triggers hold their event until ``min_deferral_s`` after the deferral began.
    """
    if epoch_s is not None and (wait := epoch_s - time.time()) > 0:
        await asyncio.sleep(wait)
