"""The poll budget is a real cap: never more sends in any second than its rate (issue #17).

Runs on an event loop whose clock is virtual: when nothing is ready, the loop jumps to its next timer
instead of sleeping, so minutes of polling take milliseconds and no assertion reads the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import AsyncIterator

from airflow_provider_nanobanana.polling import PollBudget


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` advances only by the loop's own waits, to the next timer at once."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list:
            events = real_select(0)
            if not events and timeout:
                self._now += timeout
            return events

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._now


def run_virtual(coro):  # type: ignore[no-untyped-def]
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class BookingWhileWaiting(PollBudget):
    """The budget before the fix: a send time booked before an in-flight place is held."""

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_free)
        self._next_free = start + self._interval
        async with self._in_flight:
            if start > loop.time():
                await asyncio.sleep(start - loop.time())
            yield


async def sends_per_second(budget: PollBudget, waiters: int, slow: int, slow_s: float) -> Counter[int]:
    """``waiters`` polls through ``budget``; the first ``slow`` take ``slow_s`` each (a server that
    stalls), the rest 10 ms. Returns sends per whole second of the loop's clock."""
    loop = asyncio.get_running_loop()
    sent: list[float] = []

    async def poll(i: int) -> None:
        async with budget.slot():
            sent.append(loop.time())
            await asyncio.sleep(slow_s if i < slow else 0.01)

    await asyncio.gather(*(poll(i) for i in range(waiters)))
    return Counter(math.floor(t) for t in sent)


def test_no_second_ever_sees_more_sends_than_the_rate():
    rate = 50
    per_second = run_virtual(sends_per_second(PollBudget(rate, 8), waiters=600, slow=8, slow_s=3.0))
    assert sum(per_second.values()) == 600
    assert max(per_second.values()) <= rate + 1
    assert max(per_second) >= 600 / rate - 1  # and it did not send slower than it may, either


def test_the_same_check_sees_the_burst_of_booking_while_waiting():
    """The counting above is able to fail: the old budget lets expired bookings all go at once."""
    per_second = run_virtual(sends_per_second(BookingWhileWaiting(50, 8), waiters=600, slow=8, slow_s=3.0))
    assert max(per_second.values()) > 2 * 50


def test_sustained_polling_stays_at_the_rate_over_every_window():
    rate = 20
    per_second = run_virtual(sends_per_second(PollBudget(rate, 32), waiters=2000, slow=0, slow_s=0.0))
    full_seconds = [n for second, n in per_second.items() if 0 < second < max(per_second)]
    assert full_seconds
    assert all(rate - 1 <= n <= rate + 1 for n in full_seconds)
