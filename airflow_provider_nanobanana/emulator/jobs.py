"""The emulated job store and state machine, free of HTTP.

States follow the real service: ``in_queue`` → ``in_progress`` → ``completed`` | ``failed``, and
``cancelled`` only from ``in_queue`` (the admin endpoints may also end a running job from outside).

Benchmarks keep 10,000+ jobs alive while polling hard, so nothing here costs a task or a timer per
job. Queued jobs wait in one FIFO; running jobs finish from one heap of due times. State is advanced
lazily on every access and by a single ticker that sleeps until the next due time. Only a running
job (at most ``max_running`` of them) owns a task, and only while it fetches its inputs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from airflow_provider_nanobanana.emulator.config import EmulatorConfig
from airflow_provider_nanobanana.emulator.inputs import InputError, LoadedInputs
from airflow_provider_nanobanana.models import ACTIVE_STATES, CancelOutcome, EditRequest, JobState

log = logging.getLogger(__name__)

ErrorBody = dict[str, str]
#: States a job can be in; ``UNKNOWN`` exists only for clients parsing answers.
JOB_STATES = tuple(state for state in JobState if state is not JobState.UNKNOWN)


class Loader(Protocol):
    async def load(self, request: EditRequest, *, max_bytes: int, timeout_s: float) -> LoadedInputs: ...


@dataclass(eq=False)
class Job:
    request_id: str
    model_id: str
    request: EditRequest
    seq: int
    created_at: float  # wall clock (epoch seconds)
    ready_at: float  # monotonic: the earliest moment it may start
    will_fail: bool
    #: Emulated seconds in progress, drawn at submit when ``run_s_max`` is set; ``None``: ``run_s``.
    run_s: float | None = None
    state: JobState = JobState.IN_QUEUE
    finish_due: float | None = None  # monotonic
    finished_at: float | None = None  # wall clock
    error: ErrorBody | None = None
    first_input_size: tuple[int, int] | None = None
    source_digest: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def created_iso(self) -> str:
        return _iso(self.created_at)

    @property
    def finished_iso(self) -> str | None:
        return None if self.finished_at is None else _iso(self.finished_at)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """All jobs of one emulator, scheduled against ``config`` (which may be replaced at any time)."""

    def __init__(
        self,
        config: EmulatorConfig,
        loader: Loader | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.loader = loader
        self._clock = clock
        self._wall = wall_clock
        self._wakeup = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._init_state()

    def _init_state(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._due: list[tuple[float, int, Job]] = []
        self._removed_from_queue: list[int] = []  # sorted seqs that left the queue other than by starting
        self._started = 0  # jobs that left the queue by starting (always from its head)
        self._next_seq = 0
        self._running = 0
        self._last_free = float("-inf")  # when a running slot was last given back
        self._by_state: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        self.peak_active = 0
        self.peak_running = 0
        self.sources: dict[str, bytes] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the ticker; needs a running event loop."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def aclose(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        if self._ticker is not None:
            tasks.append(self._ticker)
            self._ticker = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def reset(self) -> None:
        """Forget every job and reseed, as if the server had just started."""
        for job in self._jobs.values():
            if job.task is not None:
                job.task.cancel()
        self._init_state()
        self.wake()

    def wake(self) -> None:
        """Tell the ticker that the next due time may have changed."""
        self._wakeup.set()

    async def _tick_forever(self) -> None:
        while True:
            self._wakeup.clear()
            self.advance()
            delay = self._next_event_in()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=delay)

    def _next_event_in(self) -> float:
        now = self._clock()
        candidates = [1.0]
        if self._due:
            candidates.append(self._due[0][0] - now)
        head = self._queue_head()
        if head is not None and self._running < self.config.max_running:
            candidates.append(head.ready_at - now)
        return max(0.0, min(candidates))

    # --- queries ----------------------------------------------------------------------------

    def get(self, request_id: str) -> Job | None:
        self.advance()
        return self._jobs.get(request_id)

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs are ahead of ``job`` (0 = next to start); ``None`` unless queued."""
        if job.state is not JobState.IN_QUEUE:
            return None
        return job.seq - self._started - bisect.bisect_left(self._removed_from_queue, job.seq)

    def source(self, job: Job) -> bytes | None:
        return None if job.source_digest is None else self.sources.get(job.source_digest)

    @property
    def running(self) -> int:
        return self._running

    def stats(self) -> dict[str, Any]:
        return {
            "jobs_total": len(self._jobs),
            "jobs_by_state": {state.value: count for state, count in self._by_state.items()},
            "active": self._active,
            "running": self._running,
            "peak_active": self.peak_active,
            "peak_running": self.peak_running,
        }

    @property
    def _active(self) -> int:
        return self._by_state[JobState.IN_QUEUE] + self._by_state[JobState.IN_PROGRESS]

    # --- commands ---------------------------------------------------------------------------

    def submit(self, model_id: str, request: EditRequest) -> Job:
        self.advance()
        config = self.config
        now = self._clock()
        job = Job(
            request_id=uuid.uuid4().hex,
            model_id=model_id,
            request=request,
            seq=self._next_seq,
            created_at=self._wall(),
            ready_at=now + config.scaled(config.queue_s),
            will_fail=self._rng.random() < config.failure_rate,
            run_s=self._draw_run_s(config),
        )
        self._next_seq += 1
        self._jobs[job.request_id] = job
        self._queue.append(job)
        self._by_state[JobState.IN_QUEUE] += 1
        self.peak_active = max(self.peak_active, self._active)
        self._start_ready(now, self._last_free)
        self.wake()
        return job

    def _draw_run_s(self, config: EmulatorConfig) -> float | None:
        """A run time in ``[run_s, run_s_max]``, drawn at submit so the order of draws follows the
        order of requests (as the failure draw does), never the timing of starts. Without
        ``run_s_max`` nothing is drawn, so seeded outcomes are the same as before it existed."""
        if config.run_s_max is None:
            return None
        return self._rng.uniform(config.run_s, config.run_s_max)

    def cancel(self, request_id: str) -> tuple[Job, CancelOutcome] | None:
        """The public cancel: only a queued job can be cancelled; anything else is left alone."""
        job = self.get(request_id)
        if job is None:
            return None
        if job.state is not JobState.IN_QUEUE:
            return job, CancelOutcome.NOT_CANCELLABLE
        self._finish(job, JobState.CANCELLED)
        return job, CancelOutcome.CANCELLED

    def force_cancel(self, request_id: str) -> Job | None:
        """Cancel from outside, even a running job (someone cancelled it in RunComfy's web UI)."""
        job = self.get(request_id)
        if job is not None and job.state in ACTIVE_STATES:
            self._finish(job, JobState.CANCELLED)
        return job

    def force_fail(self, request_id: str, message: str, error_type: str = "model_error") -> Job | None:
        job = self.get(request_id)
        if job is not None and job.state in ACTIVE_STATES:
            self._finish(job, JobState.FAILED, {"type": error_type, "message": message})
        return job

    # --- the state machine ------------------------------------------------------------------

    def advance(self) -> None:
        """Apply, in time order, every transition due by now. Cheap when nothing is due.

        Transitions are dated when they were due, not when someone looked: a job whose slot freed
        at t starts at t, so lazy evaluation gives the same history as a real clock would.
        """
        now = self._clock()
        self._start_ready(now, self._last_free)
        while self._due and self._due[0][0] <= now:
            due, _, job = heapq.heappop(self._due)
            if job.state is JobState.IN_PROGRESS:
                self._complete(job, due)
                self._start_ready(now, due)

    def _queue_head(self) -> Job | None:
        while self._queue and self._queue[0].state is not JobState.IN_QUEUE:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    def _start_ready(self, now: float, free_since: float) -> None:
        """Start queued jobs while slots are free; a job starts once queued long enough and a slot
        is free (``free_since``), whichever is later, as long as that is not after ``now``."""
        while self._running < self.config.max_running:
            job = self._queue_head()
            if job is None:
                return
            start_at = max(job.ready_at, free_since)
            if start_at > now:
                return
            self._queue.popleft()
            self._started += 1
            self._set_state(job, JobState.IN_PROGRESS)
            self._running += 1
            self.peak_running = max(self.peak_running, self._running)
            run_s = self.config.run_s if job.run_s is None else job.run_s
            job.finish_due = start_at + self.config.scaled(run_s)
            if self.loader is None:
                heapq.heappush(self._due, (job.finish_due, job.seq, job))
            else:
                job.task = asyncio.get_running_loop().create_task(self._load_inputs(job, self.loader))

    async def _load_inputs(self, job: Job, loader: Loader) -> None:
        error: ErrorBody | None = None
        try:
            config = self.config
            loaded = await loader.load(
                job.request, max_bytes=config.max_input_bytes, timeout_s=config.input_timeout_s
            )
        except InputError as exc:
            error = {"type": "input_error", "message": str(exc)}
        except Exception as exc:  # a bug here must fail one job, not hold its slot forever
            log.exception("emulator: loading inputs of %s crashed", job.request_id)
            error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        job.task = None
        if job.state is not JobState.IN_PROGRESS or self._jobs.get(job.request_id) is not job:
            return
        now = self._clock()
        if error is not None:
            self._finish(job, JobState.FAILED, error)
            self._start_ready(now, now)
            return
        self.sources.setdefault(loaded.digest, loaded.thumbnail)
        job.source_digest = loaded.digest
        job.first_input_size = loaded.first_size
        assert job.finish_due is not None
        heapq.heappush(self._due, (max(job.finish_due, now), job.seq, job))
        self.wake()

    def _complete(self, job: Job, due: float) -> None:
        if job.will_fail:
            error = {"type": "model_error", "message": "the model could not process this request (emulated)"}
            self._finish(job, JobState.FAILED, error, at=due)
        else:
            self._finish(job, JobState.COMPLETED, at=due)

    def _finish(
        self, job: Job, state: JobState, error: ErrorBody | None = None, at: float | None = None
    ) -> None:
        """End ``job``; ``at`` is when it happened on the monotonic clock (default: now)."""
        now = self._clock()
        at = now if at is None else at
        previous = job.state
        if previous is JobState.IN_QUEUE:
            bisect.insort(self._removed_from_queue, job.seq)
        elif previous is JobState.IN_PROGRESS:
            self._running -= 1
            self._last_free = max(self._last_free, at)
            if job.task is not None:
                job.task.cancel()
                job.task = None
        self._set_state(job, state)
        job.error = error
        job.finished_at = self._wall() - (now - at)
        self.wake()

    def _set_state(self, job: Job, state: JobState) -> None:
        self._by_state[job.state] -= 1
        self._by_state[state] += 1
        job.state = state
