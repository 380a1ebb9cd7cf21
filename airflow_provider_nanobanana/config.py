"""The ``[nanobanana]`` options of ``airflow.cfg``, read in one place.

Every option is also an environment variable (``AIRFLOW__NANOBANANA__<OPTION>``) and is declared,
with its default, in :mod:`airflow_provider_nanobanana.get_provider_info`. Reading never fails: a
missing or unreadable option falls back to its default, because configuration must not stop a poll
loop or a task that is about to defer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)

SECTION = "nanobanana"


@dataclass(frozen=True)
class Option:
    """One float option: its name, default and the smallest value that makes sense."""

    name: str
    default: float
    minimum: float = 0.0

    def resolve(self, override: float | None) -> float:
        """An operator's own value when it set one, else the configured one."""
        return self.get() if override is None else override

    def get(self) -> float:
        try:
            from airflow_provider_nanobanana._compat import conf

            value = conf.getfloat(SECTION, self.name, fallback=self.default)
        except Exception as exc:  # noqa: BLE001 - a bad option must never stop a waiter
            log.warning("[%s] %s is unreadable (%s); using %s", SECTION, self.name, exc, self.default)
            return self.default
        if value is None or not math.isfinite(value) or value < self.minimum:
            return self.default
        return float(value)


@dataclass(frozen=True)
class Choice:
    """One option that takes one of a few words; anything else falls back to the default."""

    name: str
    default: str
    choices: tuple[str, ...]

    def get(self) -> str:
        try:
            from airflow_provider_nanobanana._compat import conf

            value = str(conf.get(SECTION, self.name, fallback=self.default)).strip().lower()
        except Exception as exc:  # noqa: BLE001 - a bad option must never stop a waiter
            log.warning("[%s] %s is unreadable (%s); using %s", SECTION, self.name, exc, self.default)
            return self.default
        if value not in self.choices:
            log.warning("[%s] %s must be one of %s; using %s", SECTION, self.name, self.choices, self.default)
            return self.default
        return value


#: Most status/result polls per second across all RunComfy waiters of one triggerer. 400/s costs the
#: CPU the 0.1.x default (150/s through httpx's transport, ~2.9 ms a poll) did: ~0.4 of a core at
#: ~1 ms a poll through the aiohttp transport (docs/trigger.md#poll-budget has the derivation).
POLL_RATE_PER_S = Option("poll_rate_per_s", 400.0, minimum=0.001)
#: Most RunComfy polls in flight at once per triggerer.
POLL_MAX_IN_FLIGHT = Option("poll_max_in_flight", 32.0, minimum=1.0)
#: Longest sleep, in seconds, of a queued job whose wait the loop can predict from RunComfy's
#: ``queue_position`` (0: never predict; poll by backoff alone, capped by ``poll_max_interval``).
POLL_QUEUE_MAX_S = Option("poll_queue_max_s", 300.0)
#: Which HTTP transport sends the event loop's status/result GETs: ``aiohttp`` (httpx-aiohttp, about
#: a third of the CPU per poll) or ``httpx`` (httpx's own). Submit and cancel POSTs always use httpx's own,
#: which tells a failure before sending from one after.
POLL_TRANSPORT = Choice("poll_transport", "aiohttp", ("aiohttp", "httpx"))
#: Seconds the worker keeps polling after submitting before it defers (most edits finish in seconds;
#: a job that ends in this window never defers, so Airflow's defer-exit race cannot hit it).
WAIT_BEFORE_DEFER_S = Option("wait_before_defer_s", 10.0)
#: Seconds after a deferral began before its trigger may fire: long enough for the scheduler to
#: drain the executor event of the worker's exit after ``defer()`` (apache/airflow#67287, #71580).
MIN_DEFERRAL_S = Option("min_deferral_s", 15.0)
