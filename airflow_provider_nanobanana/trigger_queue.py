"""Running a task's polling on a triggerer of its own (Airflow 3.2+ trigger queues).

With ``[triggerer] queues_enabled = True`` Airflow stores a deferred task's trigger with a queue, and
``airflow triggerer --queues a,b`` runs only the triggers of those queues. Airflow has no queue of
the trigger's own for task deferrals: its task runner reads the *task's* ``queue`` on the worker at
the moment the task defers (``_defer_task``; 3.2 to 3.4). The provider's ``triggerer_queue``
parameter sets that attribute right before deferring, so the image polling moves to the named
triggerer while the task itself keeps running on the workers of its own ``queue`` (the scheduler
and executors route by the serialized DAG, which this never changes).

On Airflow 3.1 there are no trigger queues: the parameter changes nothing and every triggerer may
run the trigger. See docs/trigger.md.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

#: Queue names as Airflow's CLI takes them (comma-separated, so no commas or spaces).
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@/-]{1,256}$")


def check_triggerer_queue(name: Any) -> str | None:
    """``None`` (the task's own queue, Airflow's behaviour), or a name ``--queues`` can list."""
    if name is None:
        return None
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ValueError(
            f"triggerer_queue must be None or a queue name of letters, digits and _.:@/- "
            f"(no commas or spaces, as `airflow triggerer --queues` takes them), got {name!r}"
        )
    return name


def queues_enabled() -> bool:
    """Whether this Airflow gives triggers a queue at all (3.2+ with ``[triggerer] queues_enabled``)."""
    from airflow_provider_nanobanana._compat import conf

    try:
        return conf.getboolean("triggerer", "queues_enabled", fallback=False)
    except Exception:  # noqa: BLE001 - Airflow 3.1 has no such option; routing must never fail a task
        return False


def route_deferral(operator: Any, triggerer_queue: str | None) -> None:
    """Make the coming deferral's trigger row carry ``triggerer_queue`` (no-op for ``None``)."""
    if triggerer_queue is None:
        return
    if not queues_enabled():
        log.warning(
            "triggerer_queue=%r has no effect: [triggerer] queues_enabled is off (or this Airflow "
            "predates 3.2); any triggerer may run this trigger",
            triggerer_queue,
        )
        return
    operator.queue = triggerer_queue
