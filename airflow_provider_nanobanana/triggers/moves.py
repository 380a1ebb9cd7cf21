"""Tell a user's cancel apart from a trigger moving to another triggerer.

Airflow 3.3.2 calls ``on_kill`` for every trigger that leaves a triggerer's list, and calls that a
"user action". It is also what happens when a live triggerer loses a row to a peer: two high-availability
triggerers claiming the same row (SQLite has no row locks), or a heartbeat that lapsed past
``[triggerer] triggerer_health_check_threshold`` (apache/airflow#73454). Cancelling the queued RunComfy job
then would fail a task that another triggerer is still waiting for. A user's clear or mark moves the
task instance out of ``deferred``; a move leaves it there. So ``on_kill`` asks first.
"""

from __future__ import annotations

from typing import Any

DEFERRED = "deferred"


async def task_still_deferred(trigger: Any) -> bool | None:
    """Whether the trigger's task instance is still deferred; None when that cannot be known.

    The question goes through the triggerer's own supervisor channel (``asend`` on its loop: the
    channel must never be used from another thread). Outside a triggerer, or on an Airflow without
    that channel, the answer is None and the caller keeps its old behaviour.
    """
    ti = getattr(trigger, "task_instance", None)
    if ti is None:
        return None
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.comms import GetTaskStates

        asend = getattr(getattr(task_runner, "SUPERVISOR_COMMS", None), "asend", None)
        if asend is None:
            return None
        map_index = ti.map_index if ti.map_index is not None and ti.map_index >= 0 else None
        answer = await asend(
            GetTaskStates(dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=map_index)
        )
        states = getattr(answer, "task_states", None) or {}
        key = ti.task_id if map_index is None else f"{ti.task_id}_{map_index}"
        state = states.get(ti.run_id, {}).get(key)
    except Exception:  # noqa: BLE001 - on_kill must never fail because this question could not be asked
        return None
    if state is None:
        return False
    return str(getattr(state, "value", state)) == DEFERRED
