from __future__ import annotations

import random
import time

import pytest

from airflow_provider_nanobanana.exceptions import (
    RunComfyAuthError,
    RunComfyRateLimitedError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.models import ResultResponse, StatusResponse
from airflow_provider_nanobanana.polling import JobWatch, PollBudget, PollPolicy, hold_until, wait_for_job
from tests.fakes import install_clock, record_async_sleeps


def test_backoff_grows_to_the_cap_with_bounded_jitter():
    policy = PollPolicy(initial_s=2, factor=1.5, max_s=30, jitter=0.2)
    rng = random.Random(1)
    delays = [policy.delay(step, rng=rng) for step in range(12)]
    assert 1.6 <= delays[0] <= 2.4
    assert all(24 <= d <= 36 for d in delays[8:])
    assert delays[4] > delays[0] * 2


def test_retry_after_stretches_the_next_wait():
    assert PollPolicy(initial_s=1, jitter=0).delay(0, retry_after_s=7) == 7


@pytest.mark.parametrize(
    "bad", [{"initial_s": 0}, {"initial_s": 40, "max_s": 30}, {"factor": 0.5}, {"jitter": 1}]
)
def test_invalid_policies_are_refused(bad):
    with pytest.raises(ValueError, match="poll"):
        PollPolicy(**bad)


def test_watch_never_sleeps_past_the_deadline():
    watch = JobWatch("r1", time.time() + 0.5, PollPolicy(initial_s=10, max_s=30))
    assert watch.next_delay() <= 0.5


def status(state, **kw):
    return StatusResponse.model_validate({"status": state, **kw})


def test_a_status_is_mapped_to_a_verdict_without_outputs():
    watch = JobWatch("r1", time.time() + 60)
    assert watch.on_status(status("in_queue", queue_position=3)) is None
    assert watch.on_status(status("in_progress")) is None
    ok = watch.on_status(status("completed"))
    assert ok.status == "success"
    assert not hasattr(ok, "images")  # a verdict: the worker fetches outputs once, where it archives
    failed = watch.on_status(status("failed", error={"type": "safety", "message": "nsfw"}))
    assert failed.status == "failed"
    assert "safety: nsfw" in failed.message
    assert watch.on_status(status("canceled")).status == "cancelled"
    assert watch.on_status(status("weird_state")) is None  # unknown: keep polling until the deadline


class Hook:
    """Counts the sends of one poll step; answers from a script."""

    def __init__(self, statuses, result=None):
        self.statuses = list(statuses)
        self.result = result
        self.calls: list[str] = []

    def get_status(self, rid):
        self.calls.append("status")
        item = self.statuses.pop(0)
        if isinstance(item, Exception):
            raise item
        return status(item) if isinstance(item, str) else item

    def get_result(self, rid):
        self.calls.append("result")
        return ResultResponse.model_validate(self.result)

    async def aget_status(self, rid):
        return self.get_status(rid)

    async def aget_result(self, rid):
        return self.get_result(rid)


def test_poll_asks_the_result_only_for_a_failure_the_status_does_not_explain():
    hook = Hook(["completed"], result={"status": "completed"})
    assert JobWatch("r1", time.time() + 60).poll(hook).status == "success"
    assert hook.calls == ["status"]
    hook = Hook(["failed"], result={"status": "failed", "error": "content policy"})
    event = JobWatch("r1", time.time() + 60).poll(hook)
    assert event.status == "failed"
    assert "content policy" in event.message
    assert hook.calls == ["status", "result"]
    hook = Hook([status("failed", error="told in the status")])
    assert "told in the status" in JobWatch("r1", time.time() + 60).poll(hook).message
    assert hook.calls == ["status"]


async def test_apoll_is_the_same_step_on_the_event_loop():
    hook = Hook(
        [RunComfyTransientError("503"), "in_queue", "failed"], result={"status": "failed", "error": "x"}
    )
    watch = JobWatch("r1", time.time() + 60)
    assert await watch.apoll(hook) is None
    assert watch.consecutive_errors == 1
    assert await watch.apoll(hook) is None
    assert watch.consecutive_errors == 0
    assert (await watch.apoll(hook)).status == "failed"
    assert hook.calls == ["status", "status", "status", "result"]


@pytest.fixture
def clock(monkeypatch):
    return install_clock(monkeypatch)


def test_waiting_before_deferring_finishes_a_job_that_ends_in_the_window(clock):
    hook = Hook(["in_queue", "in_progress", "completed"])
    watch = JobWatch("r1", clock.now + 600, PollPolicy(initial_s=1, factor=1, jitter=0))
    event = wait_for_job(hook, watch, give_up_at_epoch_s=clock.now + 10, sleep=clock.sleep)
    assert event.status == "success"
    assert hook.calls == ["status"] * 3
    assert clock.sleeps == [1, 1]


def test_waiting_before_deferring_gives_up_at_its_time_and_never_oversleeps_it(clock):
    hook = Hook(["in_queue"] * 50)
    watch = JobWatch("r1", clock.now + 600, PollPolicy(initial_s=3, factor=1, jitter=0))
    start = clock.now
    assert wait_for_job(hook, watch, give_up_at_epoch_s=start + 10, sleep=clock.sleep) is None
    assert clock.now == start + 10
    assert clock.sleeps == [3, 3, 3, 1]
    assert hook.calls == ["status"] * 5  # at 0, 3, 6, 9 and a last look at the give-up time


def test_zero_wait_is_one_look_and_a_watch_that_already_looked_does_not_look_again(clock):
    hook = Hook(["in_queue"])
    watch = JobWatch("r1", clock.now + 600)
    assert wait_for_job(hook, watch, give_up_at_epoch_s=clock.now, sleep=clock.sleep) is None
    assert hook.calls == ["status"]
    assert wait_for_job(hook, watch, give_up_at_epoch_s=clock.now, sleep=clock.sleep) is None
    assert hook.calls == ["status"]  # a re-attach's status counts as the look


def test_the_in_place_wait_ends_with_a_timeout_at_the_deadline(clock):
    hook = Hook(["in_queue"] * 50)
    watch = JobWatch("r1", clock.now + 7, PollPolicy(initial_s=2, factor=1, jitter=0))
    event = wait_for_job(hook, watch, sleep=clock.sleep)
    assert event.status == "timeout"
    assert sum(clock.sleeps) == 7


async def test_hold_sleeps_until_the_release_time_and_not_after_it(clock, monkeypatch):

    slept = record_async_sleeps(monkeypatch)
    await hold_until(clock.now + 8.5)
    assert slept == [8.5]
    await hold_until(clock.now - 1)
    await hold_until(None)
    assert slept == [8.5]


def test_transient_errors_are_tolerated_up_to_a_budget_and_permanent_ones_end_at_once():
    watch = JobWatch("r1", time.time() + 60, PollPolicy(max_consecutive_errors=3))
    assert watch.on_error(RunComfyTransientError("503")) is None
    assert watch.on_error(RunComfyRateLimitedError("429", retry_after_s=9)) is None
    assert watch.retry_after_s == 9
    event = watch.on_error(RunComfyTransientError("503"))
    assert event.status == "error"
    assert "3 consecutive" in event.message
    watch = JobWatch("r2", time.time() + 60)
    assert watch.on_error(RunComfyAuthError("401")).status == "error"


def test_a_good_poll_resets_the_error_budget():
    watch = JobWatch("r1", time.time() + 60, PollPolicy(max_consecutive_errors=2))
    watch.on_error(RunComfyTransientError("503"))
    watch.on_status(status("in_queue"))
    assert watch.on_error(RunComfyTransientError("503")) is None


def test_timeout_event_says_the_last_state():
    watch = JobWatch("r1", time.time() - 1)
    watch.on_status(status("weird_state"))
    event = watch.timeout_event()
    assert event.status == "timeout"
    assert "weird_state" in event.message


def test_progress_lines_only_on_change_or_heartbeat():
    watch = JobWatch("r1", time.time() + 600)
    watch.on_status(status("in_queue", queue_position=2))
    now = time.time()
    assert "queue position 2" in watch.progress(now)
    assert watch.progress(now + 1) is None
    watch.on_status(status("in_queue", queue_position=1))
    assert "queue position 1" in watch.progress(now + 2)
    assert watch.progress(now + 100) is not None  # heartbeat


async def test_budget_spaces_sends_to_its_rate():
    budget = PollBudget(rate_per_s=50, max_in_flight=4)
    import asyncio

    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one():
        async with budget.slot():
            return loop.time()

    times = await asyncio.gather(*(one() for _ in range(20)))
    # 20 slots at 50/s: the last one cannot start before ~0.38 s.
    assert max(times) - started >= 0.35


async def test_a_send_time_is_reserved_only_once_an_in_flight_place_is_held():
    """Waiters for a place must not book send times: theirs would expire while they wait, and they
    would all send at once when places free up, a burst over the rate."""
    import asyncio

    budget = PollBudget(rate_per_s=10, max_in_flight=1)
    release = asyncio.Event()

    async def holder():
        async with budget.slot():
            await release.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    booked = budget._next_free
    waiters = [asyncio.create_task(holder()) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert budget._next_free == booked  # ten waiters, no times booked while they wait
    release.set()
    await asyncio.gather(first, *waiters)
    assert budget._next_free == pytest.approx(booked + 10 * 0.1)  # then one interval each
