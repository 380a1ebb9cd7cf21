from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from airflow_provider_nanobanana.emulator.config import EmulatorConfig
from airflow_provider_nanobanana.emulator.inputs import InputError, LoadedInputs
from airflow_provider_nanobanana.emulator.jobs import JobStore
from airflow_provider_nanobanana.models import CancelOutcome, EditRequest, JobState

REQUEST = EditRequest(prompt="add a hat", image_urls=["https://example.com/a.png"])
MODEL = "google/nano-banana-2/edit"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def make_store(clock: FakeClock, **settings: Any) -> JobStore:
    config = EmulatorConfig(**{"queue_s": 1.0, "run_s": 2.0, **settings})
    return JobStore(config, clock=clock)


def states(store: JobStore, ids: list[str]) -> list[JobState]:
    jobs = [store.get(request_id) for request_id in ids]
    return [job.state for job in jobs if job is not None]


def positions(store: JobStore, ids: list[str]) -> list[int | None]:
    return [store.queue_position(job) for job in (store.get(i) for i in ids) if job is not None]


def test_jobs_wait_queue_s_then_run_run_s() -> None:
    clock = FakeClock()
    store = make_store(clock)
    job = store.submit(MODEL, REQUEST)
    assert store.get(job.request_id) is job
    assert job.state is JobState.IN_QUEUE
    clock.tick(0.99)
    assert states(store, [job.request_id]) == [JobState.IN_QUEUE]
    clock.tick(0.02)
    assert states(store, [job.request_id]) == [JobState.IN_PROGRESS]
    clock.tick(1.9)
    assert states(store, [job.request_id]) == [JobState.IN_PROGRESS]
    clock.tick(0.2)
    assert states(store, [job.request_id]) == [JobState.COMPLETED]
    assert job.error is None
    assert job.finished_at is not None


def test_a_queue_forms_beyond_max_running() -> None:
    clock = FakeClock()
    store = make_store(clock, max_running=1)
    ids = [store.submit(MODEL, REQUEST).request_id for _ in range(3)]
    assert positions(store, ids) == [0, 1, 2]
    clock.tick(1.0)
    assert states(store, ids) == [JobState.IN_PROGRESS, JobState.IN_QUEUE, JobState.IN_QUEUE]
    assert positions(store, ids) == [None, 0, 1]
    clock.tick(2.0)
    assert states(store, ids) == [JobState.COMPLETED, JobState.IN_PROGRESS, JobState.IN_QUEUE]
    assert positions(store, ids) == [None, None, 0]
    clock.tick(4.0)
    assert states(store, ids) == [JobState.COMPLETED] * 3
    assert store.peak_running == 1
    assert store.peak_active == 3


def test_max_running_zero_never_starts_anything() -> None:
    clock = FakeClock()
    store = make_store(clock, max_running=0)
    job = store.submit(MODEL, REQUEST)
    clock.tick(3600)
    assert states(store, [job.request_id]) == [JobState.IN_QUEUE]
    assert store.queue_position(job) == 0


def test_cancelling_a_queued_job_moves_the_queue_up() -> None:
    clock = FakeClock()
    store = make_store(clock, max_running=0)
    ids = [store.submit(MODEL, REQUEST).request_id for _ in range(4)]
    assert store.cancel(ids[1]) == (store.get(ids[1]), CancelOutcome.CANCELLED)
    assert positions(store, ids) == [0, None, 1, 2]
    store.force_fail(ids[0], "boom")
    assert positions(store, ids) == [None, None, 0, 1]
    clock.tick(1.0)
    store.config = store.config.model_copy(update={"max_running": 1})
    assert states(store, ids) == [
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.IN_PROGRESS,
        JobState.IN_QUEUE,
    ]
    assert positions(store, ids) == [None, None, None, 0]


def test_only_queued_jobs_can_be_cancelled() -> None:
    clock = FakeClock()
    store = make_store(clock)
    job = store.submit(MODEL, REQUEST)
    clock.tick(1.5)
    assert store.cancel(job.request_id) == (job, CancelOutcome.NOT_CANCELLABLE)
    assert job.state is JobState.IN_PROGRESS
    clock.tick(5)
    assert store.cancel(job.request_id) == (job, CancelOutcome.NOT_CANCELLABLE)
    assert job.state is JobState.COMPLETED
    assert store.cancel("unknown") is None


def test_force_cancel_ends_a_running_job_and_frees_its_slot() -> None:
    clock = FakeClock()
    store = make_store(clock, max_running=1)
    first, second = (store.submit(MODEL, REQUEST).request_id for _ in range(2))
    clock.tick(1.0)
    assert states(store, [first, second]) == [JobState.IN_PROGRESS, JobState.IN_QUEUE]
    store.force_cancel(first)
    assert states(store, [first, second]) == [JobState.CANCELLED, JobState.IN_PROGRESS]
    clock.tick(10)
    assert states(store, [first, second]) == [JobState.CANCELLED, JobState.COMPLETED]
    assert store.force_cancel("unknown") is None


def test_force_fail_sets_the_error_and_leaves_terminal_jobs_alone() -> None:
    clock = FakeClock()
    store = make_store(clock)
    job = store.submit(MODEL, REQUEST)
    store.force_fail(job.request_id, "out of GPUs", "capacity_error")
    assert job.state is JobState.FAILED
    assert job.error == {"type": "capacity_error", "message": "out of GPUs"}
    store.force_cancel(job.request_id)
    assert job.state is JobState.FAILED


def test_failure_rate_one_fails_every_job_with_an_error_object() -> None:
    clock = FakeClock()
    store = make_store(clock, failure_rate=1.0)
    job = store.submit(MODEL, REQUEST)
    clock.tick(10)
    assert states(store, [job.request_id]) == [JobState.FAILED]
    assert job.error is not None
    assert job.error["type"] == "model_error"
    assert job.error["message"]


def test_failures_are_reproducible_from_the_seed() -> None:
    def outcomes(seed: int) -> list[JobState]:
        clock = FakeClock()
        store = make_store(clock, failure_rate=0.5, seed=seed, max_running=100)
        ids = [store.submit(MODEL, REQUEST).request_id for _ in range(40)]
        clock.tick(10)
        return states(store, ids)

    first = outcomes(3)
    assert outcomes(3) == first
    assert outcomes(4) != first
    assert 5 < first.count(JobState.FAILED) < 35


def test_time_scale_divides_every_duration() -> None:
    clock = FakeClock()
    store = make_store(clock, queue_s=10.0, run_s=20.0, time_scale=100.0)
    job = store.submit(MODEL, REQUEST)
    clock.tick(0.11)
    assert states(store, [job.request_id]) == [JobState.IN_PROGRESS]
    clock.tick(0.2)
    assert states(store, [job.request_id]) == [JobState.COMPLETED]


def run_times(seed: int = 0, **settings: Any) -> list[float]:
    """Each job's emulated run time, read off the store's own clock: due time minus start time."""
    clock = FakeClock()
    store = make_store(clock, queue_s=0.0, max_running=100, seed=seed, **settings)
    jobs = [store.submit(MODEL, REQUEST) for _ in range(40)]
    started = clock.now  # queue_s=0 and free slots: every job starts at its submit
    assert {job.state for job in jobs} == {JobState.IN_PROGRESS}
    return [job.finish_due - started for job in jobs if job.finish_due is not None]


def test_run_s_max_spreads_run_times_over_the_range() -> None:
    times = run_times(run_s=1.0, run_s_max=5.0)
    assert len(times) == 40
    assert all(1.0 <= t <= 5.0 for t in times)
    assert len(set(times)) == 40
    assert min(times) < 2.0, times  # spread out, not bunched at one end
    assert max(times) > 4.0, times


def test_run_s_max_jobs_complete_in_due_order_on_the_emulated_clock() -> None:
    clock = FakeClock()
    store = make_store(clock, queue_s=0.0, run_s=0.0, run_s_max=5.0, max_running=40)
    ids = [store.submit(MODEL, REQUEST).request_id for _ in range(40)]
    completed_by_second = []
    for _ in range(5):
        clock.tick(1.0)
        completed_by_second.append(states(store, ids).count(JobState.COMPLETED))
    assert completed_by_second[-1] == 40
    assert completed_by_second == sorted(completed_by_second)
    assert 0 < completed_by_second[0] < 40  # some finish within a second, the others later


def test_run_times_are_reproducible_from_the_seed() -> None:
    first = run_times(seed=7, run_s=0.0, run_s_max=5.0)
    assert run_times(seed=7, run_s=0.0, run_s_max=5.0) == first
    assert run_times(seed=8, run_s=0.0, run_s_max=5.0) != first


def test_without_run_s_max_every_job_runs_run_s_and_failure_draws_are_unchanged() -> None:
    assert set(run_times(run_s=2.0)) == {2.0}
    assert set(run_times(run_s=2.0, run_s_max=2.0)) == {2.0}

    store = make_store(FakeClock(), failure_rate=0.5, seed=3, max_running=100)
    will_fail = [store.submit(MODEL, REQUEST).will_fail for _ in range(40)]
    # Without run_s_max nothing else is drawn: each job takes exactly one draw, as before the option.
    rng = random.Random(3)
    assert will_fail == [rng.random() < 0.5 for _ in range(40)]


def test_run_s_max_is_scaled_by_time_scale() -> None:
    times = run_times(run_s=10.0, run_s_max=20.0, time_scale=10.0)
    assert all(1.0 <= t <= 2.0 for t in times)


def test_stats_count_jobs_by_state_and_peaks() -> None:
    clock = FakeClock()
    store = make_store(clock, max_running=2)
    ids = [store.submit(MODEL, REQUEST).request_id for _ in range(3)]
    store.cancel(ids[2])
    clock.tick(1.0)
    store.advance()
    stats = store.stats()
    assert stats["jobs_by_state"] == {
        "in_queue": 0,
        "in_progress": 2,
        "completed": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert stats["active"] == 2
    assert stats["running"] == 2
    assert stats["peak_active"] == 3
    assert stats["peak_running"] == 2
    store.reset()
    assert store.stats()["jobs_total"] == 0
    assert store.get(ids[0]) is None


def test_ten_thousand_jobs_are_cheap() -> None:
    clock = FakeClock()
    store = make_store(clock, max_running=50, queue_s=0.0, run_s=1.0)
    ids = [store.submit(MODEL, REQUEST).request_id for _ in range(10_000)]
    last = store.get(ids[-1])
    assert last is not None
    assert store.queue_position(last) == 10_000 - 50 - 1
    for _ in range(50):
        clock.tick(1.0)
        for request_id in ids[::500]:
            store.get(request_id)
    assert store.stats()["jobs_by_state"]["completed"] == 2500


class FakeLoader:
    """Stands in for HTTP input fetching: succeeds, fails, or waits until released."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error
        self.release = asyncio.Event()
        self.release.set()
        self.calls = 0

    async def load(self, request: EditRequest, *, max_bytes: int, timeout_s: float) -> LoadedInputs:
        self.calls += 1
        await self.release.wait()
        if self.error:
            raise InputError(self.error)
        return LoadedInputs(first_size=(300, 200), thumbnail=b"thumb", digest="abc")


@pytest.mark.asyncio
async def test_running_jobs_load_inputs_and_keep_the_first_ones_size() -> None:
    store = JobStore(EmulatorConfig(queue_s=0.0, run_s=0.05), FakeLoader())
    store.start()
    try:
        job = store.submit(MODEL, REQUEST)
        await asyncio.sleep(0.15)
        assert store.stats()["jobs_by_state"]["completed"] == 1  # the ticker advanced it; nobody polled
        assert job.first_input_size == (300, 200)
        assert store.source(job) == b"thumb"
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_an_input_error_fails_the_job_at_once() -> None:
    loader = FakeLoader(error="image_urls[0] (https://example.com/a.png): fetching it returned HTTP 404")
    store = JobStore(EmulatorConfig(queue_s=0.0, run_s=60.0), loader)
    store.start()
    try:
        job = store.submit(MODEL, REQUEST)
        await asyncio.sleep(0.05)
        assert job.state is JobState.FAILED
        assert job.error == {"type": "input_error", "message": loader.error}
        assert store.running == 0
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_job_completes_only_after_its_inputs_arrive() -> None:
    loader = FakeLoader()
    loader.release.clear()
    store = JobStore(EmulatorConfig(queue_s=0.0, run_s=0.01), loader)
    store.start()
    try:
        job = store.submit(MODEL, REQUEST)
        await asyncio.sleep(0.1)
        assert store.get(job.request_id) is job
        assert job.state is JobState.IN_PROGRESS
        loader.release.set()
        await asyncio.sleep(0.05)
        assert job.state is JobState.COMPLETED
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_no_task_per_queued_job() -> None:
    loader = FakeLoader()
    loader.release.clear()
    store = JobStore(EmulatorConfig(queue_s=0.0, run_s=1.0, max_running=8), loader)
    store.start()
    try:
        for _ in range(5000):
            store.submit(MODEL, REQUEST)
        await asyncio.sleep(0.01)
        assert loader.calls == 8
        job_tasks = [t for t in asyncio.all_tasks() if "_load_inputs" in repr(t.get_coro())]
        assert len(job_tasks) == 8
        assert len(asyncio.all_tasks()) < 20
        assert store.stats()["jobs_by_state"]["in_queue"] == 5000 - 8
    finally:
        await store.aclose()
