"""Queue-position-aware polling (issue #17): what the schedule decides, on a patched clock.

Every time here is a ``now`` handed to the watch, or the patched ``time.time``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable

import pytest

from airflow_provider_nanobanana.exceptions import RunComfyRateLimitedError
from airflow_provider_nanobanana.models import StatusResponse
from airflow_provider_nanobanana.polling import (
    QUEUE_LEAD,
    RUN_AIM,
    JobWatch,
    PollPolicy,
    sleep_until_due,
    wait_for_job,
)
from airflow_provider_nanobanana.queue_drain import HORIZON_FACTOR, QueueDrain
from tests.fakes import Clock, install_clock

POLICY = PollPolicy(initial_s=2, factor=1.5, max_s=30, jitter=0)


def status(state: str, position: int | None = None) -> StatusResponse:
    return StatusResponse.model_validate({"request_id": "r1", "status": state, "queue_position": position})


def trained(rate: float = 2.0, run_s: float | None = 10.0, at: float = 1000.0) -> QueueDrain:
    """A drain that has watched the queue move ``rate`` positions/s for a minute."""
    drain = QueueDrain()
    drain.observe_queue(round(rate * 60), 60.0, at)
    drain.run_s = run_s
    return drain


def watch_for(drain: QueueDrain | None, deadline: float = 1e12) -> JobWatch:
    return JobWatch("r1", deadline, POLICY, drain=drain, started_epoch_s=0.0)


# -- the drain estimate --------------------------------------------------------------------------


def test_run_time_is_learnt_from_runs_pinned_down_and_capped_by_quick_ones():
    drain = QueueDrain()
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 1), 100.0)
    watch.on_status(status("in_progress"), 102.0)  # started in (100, 102]
    watch.on_status(status("in_progress"), 110.0)
    watch.on_status(status("completed"), 112.0)  # ended in (110, 112]
    assert drain.run_s == pytest.approx(10.0)
    loose = watch_for(drain)
    loose.on_status(status("in_queue", 1), 200.0)
    loose.on_status(status("in_progress"), 260.0)  # a minute of doubt about the start: not a sample
    loose.on_status(status("completed"), 262.0)
    assert drain.run_s == pytest.approx(10.0)
    quick = watch_for(drain)
    quick.on_status(status("in_queue", 1), 300.0)
    quick.on_status(status("completed"), 306.0)  # queued to done in 6 s: runs take at most 6 s
    assert drain.run_s == pytest.approx(6.0)


def test_two_answers_of_one_queued_job_feed_the_drain():
    drain = QueueDrain()
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 100), 0.0)
    watch.on_status(status("in_queue", 80), 10.0)
    assert drain.rate_per_s(10.0) == pytest.approx(21 / 10)


# -- the schedule --------------------------------------------------------------------------------


def test_a_job_deep_in_the_queue_sleeps_most_of_its_predicted_wait():
    watch = watch_for(trained(rate=2.0))
    watch.on_status(status("in_queue", 201), 1000.0)  # 200 ahead at ~2/s: starts in ~100 s
    rate = (120 + 1) / 60
    assert watch.next_delay(1000.0) == pytest.approx(QUEUE_LEAD * 200 / rate)
    assert watch.next_delay(1000.0) > POLICY.max_s  # far past what backoff alone would wait


def test_the_predicted_sleep_is_capped():
    drain = trained(rate=2.0)
    drain.max_wait_s = 60.0
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 5000), 1000.0)
    assert watch.next_delay(1000.0) == 60.0


def test_a_rate_seen_briefly_plans_no_further_than_twice_the_stretch_watched():
    drain = QueueDrain()
    drain.observe_queue(5, 10.0, 1010.0)  # 0.6/s, but only 10 s of it
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 401), 1010.0)  # predicted start in ~650 s
    assert watch.next_delay(1010.0) == POLICY.max_s  # 2 x 10 s is under backoff's cap: that cap
    watch.on_status(status("in_queue", 311), 1100.0)  # 100 s watched, now ~1/s: start in ~320 s
    assert watch.next_delay(1100.0) == pytest.approx(HORIZON_FACTOR * 100.0)


def _burst_latencies(jobs: int, stall_s: float, rate: float, run_s: float) -> list[float]:
    """Detection latency of ``jobs`` watches sharing one drain, on a virtual clock: a queue that
    stands still for ``stall_s`` (every slot busy with work submitted before), then drains at ``rate``."""
    drain = QueueDrain()
    starts = [stall_s + k / rate for k in range(jobs)]
    watches = [JobWatch(f"j{k}", 1e12, POLICY, drain=drain, started_epoch_s=0.0) for k in range(jobs)]
    heap, latency = [(0.0, k) for k in range(jobs)], [0.0] * jobs
    while heap:
        now, k = heapq.heappop(heap)
        if now < starts[k]:
            answer = status("in_queue", k - math.floor(max(0.0, now - stall_s) * rate))
        else:
            answer = status("in_progress" if now < starts[k] + run_s else "completed")
        if watches[k].on_status(answer, now) is not None:
            latency[k] = now - starts[k] - run_s
        else:
            heapq.heappush(heap, (now + watches[k].next_delay(now), k))
    return latency


def test_a_burst_onto_a_busy_queue_does_not_make_deep_jobs_oversleep():
    # The first seconds show a queue barely moving; extrapolated 300 s ahead, that rate made jobs
    # a few minutes deep sleep until long after they had finished (p99 of minutes, issue #17).
    latency = _burst_latencies(jobs=300, stall_s=8.0, rate=1.0, run_s=10.0)
    assert max(latency) <= POLICY.max_s


def test_a_job_found_running_after_a_long_sleep_is_aimed_at_its_predicted_start():
    watch = watch_for(trained(rate=2.0, run_s=10.0))
    watch.on_status(status("in_queue", 101), 1000.0)  # due to start at ~1050
    watch.on_status(status("in_progress"), 1055.0)  # started somewhere in 1000..1055
    rate = (120 + 1) / 60
    assert watch.next_delay(1055.0) == pytest.approx(1000.0 + 100 / rate + RUN_AIM * 10.0 - 1055.0)


def test_near_the_head_the_next_look_is_when_the_job_should_be_nearly_done():
    watch = watch_for(trained(rate=2.0, run_s=10.0))
    watch.on_status(status("in_queue", 5), 1000.0)  # 4 ahead: starts in ~2 s, runs ~10 s
    starts_in = 4 / ((120 + 1) / 60)
    assert watch.next_delay(1000.0) == pytest.approx(starts_in + RUN_AIM * 10.0)


@pytest.mark.parametrize("position", [0, 1])
def test_positions_0_and_1_both_mean_next_in_line(position):
    """RunComfy does not document whether positions count from 0 or 1: both are read as 'next'."""
    watch = watch_for(trained(rate=2.0, run_s=10.0))
    watch.on_status(status("in_queue", position), 1000.0)
    assert watch.next_delay(1000.0) == pytest.approx(RUN_AIM * 10.0)


def test_near_the_head_with_no_run_time_known_it_looks_when_the_job_should_start():
    """...so that the start is pinned down and the run time can be learnt."""
    watch = watch_for(trained(rate=2.0, run_s=None))
    for _ in range(8):
        watch.on_status(status("in_queue", 41), 1000.0)  # the backoff has grown meanwhile
    watch.on_status(status("in_queue", 21), 1000.0)
    assert watch.next_delay(1000.0) == pytest.approx(20 / ((120 + 1) / 60))
    assert watch.next_delay(1000.0) < POLICY.delay(watch.step)


def test_a_running_job_is_looked_at_when_it_should_be_nearly_done_then_by_backoff():
    watch = watch_for(trained(rate=2.0, run_s=20.0))
    watch.on_status(status("in_queue", 1), 1000.0)
    watch.on_status(status("in_progress"), 1002.0)  # started at ~1001
    assert watch.next_delay(1002.0) == pytest.approx(1001 + RUN_AIM * 20.0 - 1002)
    watch.on_status(status("in_progress"), 1019.0)  # longer than expected: back off from the start
    assert watch.next_delay(1019.0) == POLICY.delay(watch.step)


def test_a_learnt_hour_long_run_never_plans_a_sleep_past_the_cap():
    """One job that ran an hour must not make a running job or one next in line sleep an hour."""
    drain = trained(rate=2.0, run_s=3600.0)
    drain.max_wait_s = 300.0
    running = watch_for(drain)
    running.on_status(status("in_queue", 1), 1000.0)
    running.on_status(status("in_progress"), 1002.0)
    assert running.next_delay(1002.0) == 300.0
    next_in_line = watch_for(drain)
    next_in_line.on_status(status("in_queue", 2), 1000.0)
    assert next_in_line.next_delay(1000.0) == 300.0


def test_a_failed_run_teaches_no_run_time():
    """A failed job may have been refused at once or hung: neither says how long edits run."""
    drain = QueueDrain()
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 1), 100.0)
    watch.on_status(status("in_progress"), 102.0)
    watch.on_status(status("in_progress"), 110.0)
    watch.on_status(status("failed"), 112.0)
    assert drain.run_s is None


def test_without_a_drain_or_a_rate_it_is_todays_backoff():
    blind = watch_for(None)
    blind.on_status(status("in_queue", 500), 1000.0)
    assert blind.next_delay(1000.0) == POLICY.delay(blind.step)
    untrained = watch_for(QueueDrain())
    untrained.on_status(status("in_queue", 500), 1000.0)
    assert untrained.next_delay(1000.0) == POLICY.delay(untrained.step)


def test_retry_after_wins_over_the_prediction():
    watch = watch_for(trained(rate=2.0))
    watch.on_status(status("in_queue", 201), 1000.0)
    watch.on_error(RunComfyRateLimitedError("slow down", retry_after_s=7.0))
    assert watch.next_delay(1000.0) == 7.0


def test_a_prediction_never_sleeps_past_the_deadline():
    watch = watch_for(trained(rate=2.0), deadline=1010.0)
    watch.on_status(status("in_queue", 201), 1000.0)
    assert watch.next_delay(1000.0) == pytest.approx(10.0)


def test_the_patched_clock_drives_the_defaults(monkeypatch):
    clock = install_clock(monkeypatch)
    drain = QueueDrain()
    watch = JobWatch("r1", clock.now + 3600, POLICY, drain=drain)
    watch.on_status(status("in_queue", 400))
    clock.now += 90
    watch.on_status(status("in_queue", 220))  # 180 positions in 90 s
    assert drain.rate_per_s(clock.now) == pytest.approx(181 / 90)
    assert watch.next_delay() == pytest.approx(QUEUE_LEAD * 219 / (181 / 90))


# -- re-planning on waking, without a request --------------------------------------------------------


def _sleep_while_others_answer(
    drain: QueueDrain, clock: Clock, slept: list[float]
) -> Callable[[float], None]:
    """A sleep that moves the patched clock while other jobs' answers show the queue moving 1/s."""

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        drain.observe_queue(round(seconds), seconds, clock.now)

    return sleep


def test_waking_re_plans_from_what_other_jobs_taught_and_polls_when_nothing_was_learnt():
    drain = trained(rate=1.0, at=1000.0)  # watched 60 s: plans reach 120 s ahead
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 601), 1000.0)
    assert watch.next_delay(1000.0) == pytest.approx(HORIZON_FACTOR * 60)
    assert watch.wake(1120.0) == 0.0  # nobody answered meanwhile: only a poll can tell
    watch.next_delay(1000.0)
    drain.observe_queue(120, 120.0, 1120.0)  # other jobs saw 120 positions go by
    rate = drain.rate_per_s(1120.0)
    assert rate is not None
    starts_in = (601 - rate * 120 - 1) / rate
    left = 1000.0 + drain.max_wait_s - 1120.0  # its own answer is due poll_queue_max_s after the last
    planned = min(left, QUEUE_LEAD * starts_in, HORIZON_FACTOR * 180)
    assert watch.wake(1120.0) == pytest.approx(planned)
    assert watch.wake(1120.0) == 0.0  # nothing new since that re-plan


def test_before_the_model_has_a_rate_a_queued_job_lets_others_answers_teach_it():
    drain = QueueDrain()
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 50), 0.0)
    assert watch.next_delay(0.0) == POLICY.delay(watch.step)  # no rate: backoff
    assert watch.wake(3.0) == 0.0  # nobody else answered: ask
    watch.next_delay(3.0)
    drain.observe_queue(0, 3.0, 5.0)  # another job's answer: still no rate
    assert watch.wake(6.0) == POLICY.delay(watch.step)  # wait for the model, without a request
    drain.observe_queue(0, 3.0, 28.5)
    assert watch.wake(29.0) == 0.0  # backoff's cap since its own last answer: ask after all


def test_a_queued_job_answers_itself_at_least_every_poll_queue_max_s():
    """Re-planning for free must not let a job cancelled while deep in the queue go unseen for long."""
    drain = trained(rate=1.0, at=1000.0)
    drain.max_wait_s = 200.0
    watch = watch_for(drain)
    watch.on_status(status("in_queue", 5001), 1000.0)  # over an hour from the head
    last = now = 1000.0 + watch.next_delay(1000.0)
    drain.observe_queue(round(now - 1000.0), now - 1000.0, now)
    wakes = 0
    while (more := watch.wake(now)) > 0:
        wakes += 1
        last, now = now, now + more
        drain.observe_queue(round(now - last), now - last, now)  # other jobs keep answering
    assert wakes >= 1
    assert now <= 1000.0 + drain.max_wait_s


@pytest.mark.parametrize("answer", [status("in_queue", 31), status("in_progress")])
def test_a_job_near_the_head_or_running_polls_on_waking(answer):
    drain = trained(rate=1.0, at=1000.0)
    watch = watch_for(drain)
    watch.on_status(answer, 1000.0)
    watch.next_delay(1000.0)
    drain.observe_queue(10, 10.0, 1010.0)
    assert watch.wake(1010.0) == 0.0


def test_the_in_place_wait_spends_no_poll_while_the_job_is_far_from_the_head(monkeypatch):
    clock = install_clock(monkeypatch)
    drain, slept, t0 = trained(rate=1.0, at=clock.now), [], clock.now
    answers: list[tuple[float, str]] = []

    class Hook:
        def get_status(self, rid: str) -> StatusResponse:
            ahead = 250 - (clock.now - t0)  # the queue moves 1/s; then a 10 s run
            state = "in_queue" if ahead > 0 else "in_progress" if ahead > -10 else "completed"
            answers.append((ahead, state))
            return status(state, math.ceil(ahead) + 1 if ahead > 0 else None)

    watch = JobWatch("r1", clock.now + 3600, POLICY, drain=drain)
    event = wait_for_job(Hook(), watch, sleep=_sleep_while_others_answer(drain, clock, slept))  # type: ignore[arg-type]
    assert event is not None
    assert event.status == "success"
    far = [ahead for ahead, state in answers if state == "in_queue" and ahead > POLICY.max_s]
    assert far == [250]  # the first answer only; the rest of the approach was planned for free


def test_the_trigger_sleep_re_plans_until_the_job_nears_the_head(monkeypatch):
    clock = install_clock(monkeypatch)
    drain, slept = trained(rate=1.0, at=clock.now), []
    watch = JobWatch("r1", clock.now + 3600, POLICY, drain=drain)
    watch.on_status(status("in_queue", 201))
    sleep = _sleep_while_others_answer(drain, clock, slept)

    async def fake_sleep(seconds: float) -> None:
        sleep(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    asyncio.run(sleep_until_due(watch))
    assert len(slept) > 1
    assert (201 - sum(slept) - 1) / 1.0 <= POLICY.max_s / QUEUE_LEAD  # woke for good near the head
    assert sum(slept) <= 200  # ... and before the job reached it
