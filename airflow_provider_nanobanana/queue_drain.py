"""What one event loop has learnt about a RunComfy account's queue: how fast it drains, how long
a job then runs, and how far ahead that knowledge may be trusted.

RunComfy reports a queued job's ``queue_position`` but not how fast the queue moves; every job one
triggerer watches on a connection sees the same queue, so they share one model (per loop and
connection id) and a new job is scheduled from its first answer. :class:`~.polling.JobWatch` feeds
it and plans from it; this module does no I/O.
"""

from __future__ import annotations

import asyncio
import bisect
import weakref
from dataclasses import dataclass, field

from airflow_provider_nanobanana.config import POLL_QUEUE_MAX_S

#: A queued job sleeps at most this many times as long as the model has watched the queue move: a
#: rate learnt in the first seconds of a burst (every slot busy, none yet free) can be a fraction of
#: the steady one, and extrapolating it ten times further than it was seen is where deep jobs overslept.
HORIZON_FACTOR = 2.0
#: The head curve keeps about twice this many points however long ``poll_queue_max_s`` is: with a
#: cap of a day, one point per second would be a quarter of a million floats per connection.
CURVE_POINTS = 1024


@dataclass
class QueueDrain:
    """How fast the queue ahead of one event loop's jobs empties, and how long a job then runs.

    Learnt from every watched job: two answers of the same queued job give positions moved per
    second; a job seen starting and ending gives a run time. Old evidence fades with ``half_life_s``,
    so a queue that speeds up or slows down is followed within minutes. Shared by all jobs of one
    connection on one loop (:func:`shared_queue_drain`), so a new job is scheduled from its first
    answer. RunComfy does not say whether ``queue_position`` counts from 0 or 1: positions are only
    ever differenced, and a job at position ``p`` is taken to have ``p - 1`` jobs ahead (the earlier
    wake-up of the two readings). Pure bookkeeping; times are ``time.time()`` values passed in.
    """

    #: Longest sleep of a queued job, however deep the queue (``[nanobanana] poll_queue_max_s``).
    max_wait_s: float = 300.0
    half_life_s: float = 120.0
    #: Seconds of watched queue, and positions seen moved, before a rate is trusted: a queue that
    #: has not been seen moving is polled by backoff (it may start any moment).
    min_evidence_s: float = 4.0
    min_moved: float = 3.0
    moved: float = 0.0
    spent_s: float = 0.0
    run_s: float | None = None
    _updated_s: float | None = None
    _watched_since_s: float | None = None  # start of the current stretch of evidence
    # The head curve: when, and how many positions the head had moved by then (since the first answer).
    _times: list[float] = field(default_factory=list, repr=False)
    _heads: list[float] = field(default_factory=list, repr=False)

    def _decay(self, now: float) -> float:
        if self._updated_s is None:
            return 1.0
        return float(0.5 ** (max(0.0, now - self._updated_s) / self.half_life_s))

    def observe_queue(self, moved: int, seconds: float, now: float) -> None:
        """A queued job moved ``moved`` positions in the ``seconds`` up to ``now`` (a position that
        grew counts as 0).

        Every job of the queue sees the same head move, so the answers are stitched into one curve
        of how far the head has moved, and each second counts once: an answer adds only what it
        says beyond the curve, after the curve's end. Counted per job instead, a burst of jobs all
        answering in its first, stalled seconds outweighed the minutes after; and a long answer
        spanning that stall would carry it into seconds in which the queue was moving.
        """
        if self._times and now < self._times[-1] - self.min_evidence_s:
            self._forget()  # the wall clock stepped back: a curve in the future would mute every answer
        if seconds <= 0 or (self._times and now <= self._times[-1]):
            return
        moved = max(0, moved)
        since = now - seconds
        times, heads = self._times, self._heads
        if not times or since >= times[-1]:
            # Nothing known of [end of the curve, since]: counted neither as time nor as movement.
            if not times or since > times[-1]:
                times.append(since)
                heads.append(heads[-1] if heads else 0.0)
            fresh_s, head = seconds, heads[-1] + moved
        else:
            fresh_s, head = now - times[-1], max(heads[-1], self._head_at(since) + moved)
        fresh_moved = head - heads[-1]
        if len(times) >= 2 and now - times[-2] < self._point_gap_s():
            # Thin the curve: at most two points per gap.
            times[-1], heads[-1] = now, head
        else:
            times.append(now)
            heads.append(head)
        if (cut := bisect.bisect_left(times, now - 2 * self.max_wait_s)) > 1:
            del times[: cut - 1], heads[: cut - 1]  # older than any sleeping job's last answer
        k = self._decay(now)
        if self._watched_since_s is None or self.spent_s * k < self.min_evidence_s:
            self._watched_since_s = now - fresh_s  # fresh evidence, or the old has faded: start over
        self.moved = self.moved * k + fresh_moved
        self.spent_s = self.spent_s * k + fresh_s
        self._updated_s = now

    def _point_gap_s(self) -> float:
        """Closest spacing of the curve's points: a quarter of ``min_evidence_s``, wider only when the
        kept window (twice ``max_wait_s``) would otherwise hold more than :data:`CURVE_POINTS`."""
        return max(self.min_evidence_s / 4, 2 * self.max_wait_s / CURVE_POINTS)

    def _forget(self) -> None:
        """Start the queue evidence over (the run time, learnt from whole runs, is kept)."""
        self._times.clear()
        self._heads.clear()
        self.moved = self.spent_s = 0.0
        self._updated_s = self._watched_since_s = None

    def _head_at(self, when: float) -> float:
        """How far the head had moved at ``when``, read off the curve (its first point if older)."""
        times, heads = self._times, self._heads
        i = bisect.bisect_right(times, when)
        if i == 0:
            return heads[0]
        if i == len(times):
            return heads[-1]
        t0, t1 = times[i - 1], times[i]
        return heads[i - 1] + (heads[i] - heads[i - 1]) * (when - t0) / (t1 - t0)

    def rate_per_s(self, now: float) -> float | None:
        """Positions per second, or None while there is too little evidence. One position is added
        to what was seen: a queue watched standing still for a while may still move next second."""
        k = self._decay(now)
        if self.spent_s * k < self.min_evidence_s or self.moved * k < self.min_moved:
            return None
        return (self.moved * k + 1.0) / (self.spent_s * k)

    @property
    def updated_s(self) -> float | None:
        """When the queue was last seen moving (or standing): what :meth:`JobWatch.wake` compares to."""
        return self._updated_s

    def horizon_s(self, now: float) -> float:
        """How far ahead a queued job may plan: :data:`HORIZON_FACTOR` times the watched stretch."""
        since = now if self._watched_since_s is None else self._watched_since_s
        return HORIZON_FACTOR * (now - since)

    def observe_run(self, seconds: float) -> None:
        if seconds > 0:
            self.run_s = seconds if self.run_s is None else 0.7 * self.run_s + 0.3 * seconds

    def run_at_most(self, seconds: float) -> None:
        """A job went from queued to finished within ``seconds``: runs are not longer than that."""
        if self.run_s is not None and 0 < seconds < self.run_s:
            self.run_s = seconds


_DRAINS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, QueueDrain]]
_DRAINS = weakref.WeakKeyDictionary()


def shared_queue_drain(key: str) -> QueueDrain | None:
    """The running loop's queue model for ``key`` (a connection id: one account's view of the queue),
    or None when ``[nanobanana] poll_queue_max_s`` is 0 (poll by backoff alone)."""
    max_wait_s = POLL_QUEUE_MAX_S.get()
    if max_wait_s <= 0:
        return None
    drains = _DRAINS.setdefault(asyncio.get_running_loop(), {})
    drain = drains.get(key)
    if drain is None:
        drain = drains[key] = QueueDrain(max_wait_s=max_wait_s)
    return drain
