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
from airflow_provider_nanobanana.polling import JobWatch, PollBudget, PollPolicy


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


def test_terminal_status_asks_for_the_result_and_maps_outcomes():
    watch = JobWatch("r1", time.time() + 60)
    assert watch.on_status(status("in_queue", queue_position=3)) is False
    assert watch.on_status(status("completed")) is True
    ok = watch.on_result(
        ResultResponse.model_validate(
            {"status": "completed", "output": {"images": ["https://c/1.png?sig=abc"]}}
        )
    )
    assert ok.status == "success"
    assert ok.images == ["https://c/1.png?sig=***"]
    failed = watch.on_result(ResultResponse.model_validate({"status": "failed", "error": "nsfw"}))
    assert failed.status == "failed"
    assert "nsfw" in failed.message
    assert watch.on_result(ResultResponse.model_validate({"status": "cancelled"})).status == "cancelled"
    empty = watch.on_result(ResultResponse.model_validate({"status": "completed", "output": {}}))
    assert empty.status == "failed"
    assert "no output" in empty.message
    assert watch.on_result(ResultResponse.model_validate({"status": "in_progress"})) is None


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
