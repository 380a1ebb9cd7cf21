"""A trigger that moves between triggerers must not cancel the job its task still waits for.

Airflow 3.3.2 calls ``on_kill`` for a row lost to a peer triggerer too (seen in tests/e2e/test_triggerer_ha.py's
first version: a cancel at RunComfy, the task would have failed). The task's state tells the two apart.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import respx
from airflow.sdk.execution_time import task_runner
from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

from airflow_provider_nanobanana.triggers.moves import task_still_deferred
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

BASE = "https://api.test"
RID = "req_moved"
STATUS = f"{BASE}/v1/requests/{RID}/status"
CANCEL = f"{BASE}/v1/requests/{RID}/cancel"


class SupervisorChannel:
    """The triggerer's comms: answers GetTaskStates from a table, records what was asked."""

    def __init__(self, states: dict[str, dict[str, Any]]) -> None:
        self.states = states
        self.asked: list[GetTaskStates] = []

    async def asend(self, msg: Any) -> TaskStatesResult:
        assert isinstance(msg, GetTaskStates)
        self.asked.append(msg)
        return TaskStatesResult(task_states=self.states)


@pytest.fixture(autouse=True)
def connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps(
            {"conn_type": "runcomfy", "host": BASE, "password": "t", "extra": {"retry_max_wait_s": 0.01}}
        ),
    )


def supervisor(monkeypatch, states: dict[str, dict[str, Any]]) -> SupervisorChannel:
    channel = SupervisorChannel(states)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", channel, raising=False)
    return channel


def deferred_trigger(map_index: int = -1) -> RunComfyJobTrigger:
    t = RunComfyJobTrigger(request_id=RID, deadline_epoch_s=time.time() + 60)
    t.task_instance = SimpleNamespace(dag_id="d", task_id="edit", run_id="r1", map_index=map_index)
    return t


@pytest.mark.parametrize(
    ("states", "map_index", "expected"),
    [
        ({"r1": {"edit": "deferred"}}, -1, True),
        ({"r1": {"edit_3": "deferred"}}, 3, True),
        ({"r1": {"edit_3": "failed"}}, 3, False),
        ({"r1": {"edit": None}}, -1, False),  # cleared
        ({}, -1, False),
    ],
)
async def test_the_task_state_decides(monkeypatch, states, map_index, expected):
    channel = supervisor(monkeypatch, states)
    assert await task_still_deferred(deferred_trigger(map_index)) is expected
    (asked,) = channel.asked
    assert asked.map_index == (map_index if map_index >= 0 else None)


async def test_unknown_outside_a_triggerer(monkeypatch):
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", None, raising=False)
    assert await task_still_deferred(deferred_trigger()) is None
    assert await task_still_deferred(RunComfyJobTrigger(request_id=RID, deadline_epoch_s=1.0)) is None


@respx.mock
async def test_a_moved_trigger_leaves_its_queued_job_alone(monkeypatch):
    cancel = respx.post(CANCEL).mock(return_value=httpx.Response(200, json={"outcome": "cancelled"}))
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "in_queue"}))
    supervisor(monkeypatch, {"r1": {"edit": "deferred"}})
    await deferred_trigger().on_kill()
    assert cancel.call_count == 0
    supervisor(monkeypatch, {"r1": {"edit": "failed"}})  # the user marked it failed
    await deferred_trigger().on_kill()
    assert cancel.call_count == 1


async def test_a_moved_batch_trigger_cancels_nothing(monkeypatch):
    from airflow_provider_nanobanana.batch.trigger import RunComfyBatchTrigger

    t = RunComfyBatchTrigger(checkpoint_bucket="b", checkpoint_prefix="p", deadline_epoch_s=time.time() + 60)
    t.task_instance = SimpleNamespace(dag_id="d", task_id="edit", run_id="r1", map_index=-1)
    read: list[str] = []

    async def checkpoint(_media: Any) -> Any:
        read.append("checkpoint")
        raise RuntimeError("no S3 here")

    monkeypatch.setattr(t, "_checkpoint", checkpoint)
    monkeypatch.setattr(t, "_media", lambda: None)
    supervisor(monkeypatch, {"r1": {"edit": "deferred"}})
    await t.on_kill()
    assert read == []  # moved: not even the checkpoint is read
    supervisor(monkeypatch, {"r1": {"edit": "failed"}})
    await t.on_kill()
    assert read == ["checkpoint"]  # a user's mark goes on to cancel the queued jobs
