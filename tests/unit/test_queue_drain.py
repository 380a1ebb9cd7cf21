"""The queue model (issue #17): what it learns from queue positions, and how far it trusts that.

Every time here is a ``now`` handed in; nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_nanobanana.queue_drain import (
    CURVE_POINTS,
    HORIZON_FACTOR,
    QueueDrain,
    shared_queue_drain,
)


def test_no_rate_before_the_queue_was_watched_long_enough_and_seen_moving():
    drain = QueueDrain()
    assert drain.rate_per_s(0.0) is None
    drain.observe_queue(10, 2.0, 2.0)  # moved, but watched only 2 s
    assert drain.rate_per_s(2.0) is None
    stuck = QueueDrain()
    stuck.observe_queue(0, 60.0, 60.0)  # watched a minute, never moved: may start any moment
    assert stuck.rate_per_s(60.0) is None
    drain.observe_queue(10, 3.0, 5.0)
    assert drain.rate_per_s(5.0) == pytest.approx((20 + 1) / 5.0, rel=0.05)  # 3 s of decay


def test_a_position_that_grows_counts_as_no_progress():
    drain = QueueDrain()
    drain.observe_queue(-50, 10.0, 10.0)  # a priority job jumped ahead
    drain.observe_queue(10, 10.0, 20.0)
    assert drain.rate_per_s(20.0) == pytest.approx(11 / 20, rel=0.05)  # 10 s of decay


def test_old_evidence_fades_so_a_faster_queue_is_followed():
    drain = QueueDrain(half_life_s=60.0)
    drain.observe_queue(60, 600.0, 600.0)  # 0.1/s for ten minutes
    drain.observe_queue(100, 50.0, 1200.0)  # then, ten minutes later, 2/s
    assert drain.rate_per_s(1200.0) > 1.0


def test_evidence_that_faded_starts_a_new_stretch():
    drain = QueueDrain(half_life_s=60.0)
    drain.observe_queue(600, 600.0, 600.0)
    drain.observe_queue(40, 20.0, 4200.0)  # an hour later: the old evidence is ~2**-60 of itself
    assert drain.horizon_s(4200.0) == pytest.approx(HORIZON_FACTOR * 20.0)


def test_one_drain_per_loop_and_connection_and_none_when_switched_off(monkeypatch):
    async def drains() -> tuple[QueueDrain | None, ...]:
        return shared_queue_drain("a"), shared_queue_drain("a"), shared_queue_drain("b")

    a, again, b = asyncio.run(drains())
    assert a is again
    assert a is not b
    assert asyncio.run(drains())[0] is not a  # a new loop learns afresh
    monkeypatch.setenv("AIRFLOW__NANOBANANA__POLL_QUEUE_MAX_S", "0")
    assert asyncio.run(drains()) == (None, None, None)


def test_answers_of_many_jobs_over_the_same_seconds_count_those_seconds_once():
    drain = QueueDrain()
    for _ in range(100):  # a burst: 100 jobs see the queue stand still over its first 8 s
        drain.observe_queue(0, 8.0, 8.0)
    drain.observe_queue(30, 30.0, 38.0)  # then one job sees it move 1/s for 30 s
    assert drain.rate_per_s(38.0) == pytest.approx((30 + 1) / 38, rel=0.05)
    drain.observe_queue(20, 40.0, 38.0)  # a longer answer over seconds already accounted for
    assert drain.rate_per_s(38.0) == pytest.approx((30 + 1) / 38, rel=0.05)
    drain.observe_queue(20, 20.0, 48.0)  # 28..48: the curve has 28..38 (10), so 38..48 moved 10
    assert drain.rate_per_s(48.0) == pytest.approx((40 + 1) / 48, rel=0.06)


def test_a_long_answer_spanning_a_stall_does_not_carry_it_into_later_seconds():
    drain = QueueDrain()
    drain.observe_queue(0, 8.0, 8.0)  # one job: the queue stood still for 8 s
    drain.observe_queue(37, 45.0, 45.0)  # another, asked at 0 and 45: 37 moved, all after the stall
    assert drain.rate_per_s(45.0) == pytest.approx((37 + 1) / 45, rel=0.05)  # 37/37 s, not 37/45


def test_the_head_curve_keeps_only_what_a_sleeping_job_can_still_ask_about():
    drain = QueueDrain(max_wait_s=300.0)
    for second in range(1, 3601):  # an hour of answers, one per second
        drain.observe_queue(1, 1.0, float(second))
    assert len(drain._times) <= 2 * (2 * 300) / (drain.min_evidence_s / 4) + 2  # two per quarter
    assert drain.rate_per_s(3600.0) == pytest.approx(1.0, rel=0.02)


def test_answers_closer_together_than_a_quarter_of_min_evidence_share_one_curve_point():
    drain = QueueDrain(max_wait_s=300.0)
    for tenth in range(1, 6001):  # ten minutes of answers, ten a second
        drain.observe_queue(1, 0.1, tenth / 10)
    assert len(drain._times) <= 2 * (2 * 300) / (drain.min_evidence_s / 4) + 2  # two per quarter
    assert drain.rate_per_s(600.0) == pytest.approx(10.0, rel=0.02)


def test_a_long_poll_queue_max_s_thins_the_curve_instead_of_growing_it():
    drain = QueueDrain(max_wait_s=86_400.0)  # a day: one point a second would be 172,800 points
    for second in range(1, 20_001):
        drain.observe_queue(1, 1.0, float(second))
    assert len(drain._times) <= 2 * CURVE_POINTS + 2
    assert drain.rate_per_s(20_000.0) == pytest.approx(1.0, rel=0.02)


def test_a_wall_clock_stepped_back_starts_the_queue_evidence_over():
    drain = QueueDrain()
    for second in range(1, 61):  # 1 position/s until 10:00:60 ...
        drain.observe_queue(1, 1.0, 36_000.0 + second)
    drain.observe_run(12.0)
    drain.observe_queue(9, 1.0, 36_060.0 - 1.0)  # a clock 2 s behind (NTP slew): one answer dropped
    assert drain.rate_per_s(36_060.0) == pytest.approx(1.0, rel=0.05)
    for second in range(1, 31):  # ... then the clock is an hour back and the queue moves 5/s
        drain.observe_queue(5, 1.0, 32_400.0 + second)
    assert drain.rate_per_s(32_430.0) == pytest.approx(5.0, rel=0.05)  # learnt, not muted for an hour
    assert drain.updated_s == 32_430.0
    assert drain.run_s == 12.0  # whole runs were measured on one clock: kept
