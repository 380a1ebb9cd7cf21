"""Airflow-side faults: a triggerer killed mid-wait, a worker killed after submitting, a task killed
while deferred, a long outage of scheduler/triggerer. Same request id, one paid job per item."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_nanobanana.batch import BatchCheckpoint, BatchState
from airflow_provider_nanobanana.exceptions import RunComfyJobFailedError, RunComfyJobTimeoutError
from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from tests.conftest import png_bytes
from tests.reliability.conftest import (
    defer,
    edit_operator,
    first_event,
    new_context,
    rebuild,
    run_deferred,
    run_trigger,
)
from tests.triggering import counters, kill, until

pytestmark = pytest.mark.usefixtures("airflow_connections")
REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerKilled(BaseException):
    """Stands in for SIGKILL: not an Exception, so no provider code can catch and handle it."""


# -- triggerer restart -----------------------------------------------------------------------------


def test_triggerer_killed_mid_wait_resumes_the_same_request(
    emulator, moto_s3, input_image, s3_bucket, context
):
    emulator.configure(max_running=0)  # the job waits in the queue until the test lets it run
    deferred = defer(edit_operator(input_image, s3_bucket), context)
    rid = context["ti"].xcom["runcomfy_request_id"]

    async def kill_while_polling() -> None:
        polls = (await counters(emulator))["status_polls"]
        runner = asyncio.create_task(first_event(rebuild(deferred.trigger)))

        async def polled_twice() -> bool:
            return (await counters(emulator))["status_polls"] >= polls + 2

        await until(polled_twice)
        await kill(runner)

    asyncio.run(kill_while_polling())
    emulator.configure(max_running=4)
    restarted = rebuild(deferred.trigger)
    assert restarted.serialize() == deferred.trigger.serialize()
    event = run_trigger(restarted)
    assert (event["status"], event["request_id"]) == ("success", rid)
    # A new worker process runs execute_complete on a fresh operator: state comes from the event.
    result = edit_operator(input_image, s3_bucket).execute_complete(context, event)
    assert result["request_id"] == rid
    assert len(result["archived"]) == 2
    c = emulator.counters()
    assert (c["submits"], c["jobs_created"]) == (1, 1)


def batch_operator(bucket: str, inputs: list[str], **kw: Any) -> NanoBananaBatchEditOperator:
    params: dict[str, Any] = {
        "task_id": "batch",
        "prompt": "make {name} look like a postcard",
        "items": inputs,
        "output_s3_uri": f"s3://{bucket}/out/",
        "max_in_flight": 2,
        "rate_per_s": 50.0,
        "poll_interval": 0.1,
        "poll_max_interval": 0.3,
        "timeout": 60,
    }
    return NanoBananaBatchEditOperator(**{**params, **kw})


@pytest.fixture
def batch_inputs(moto_s3: Any, s3_bucket: str) -> list[str]:
    s3 = moto_s3.client()
    uris = []
    for i in range(4):
        s3.put_object(
            Bucket=s3_bucket, Key=f"in/{i}.png", Body=png_bytes((60 * i, 90, 30)), ContentType="image/png"
        )
        uris.append(f"s3://{s3_bucket}/in/{i}.png")
    return uris


def checkpoint_state(moto_s3: Any, trigger: Any) -> BatchState | None:
    _path, kwargs = trigger.serialize()
    return BatchCheckpoint(moto_s3.client(), kwargs["checkpoint_bucket"], kwargs["checkpoint_prefix"]).load()


def test_batch_triggerer_killed_mid_batch_resumes_with_one_job_per_item(
    emulator, moto_s3, s3_bucket, batch_inputs, context
):
    emulator.configure(max_running=0)
    deferred = defer(batch_operator(s3_bucket, batch_inputs), context)

    async def kill_mid_batch() -> None:
        runner = asyncio.create_task(first_event(rebuild(deferred.trigger)))

        async def two_submitted_and_saved() -> bool:
            state = await asyncio.to_thread(checkpoint_state, moto_s3, deferred.trigger)
            return state is not None and state.counts() == {"pending": 2, "active": 2}

        await until(two_submitted_and_saved)
        await kill(runner)

    asyncio.run(kill_mid_batch())
    assert emulator.counters()["jobs_created"] == 2
    emulator.configure(max_running=4)
    event = run_trigger(rebuild(deferred.trigger))
    assert event["status"] == "success", event
    result = batch_operator(s3_bucket, batch_inputs).execute_complete(context, event)
    assert (result["total"], result["succeeded"], result["failed"]) == (4, 4, 0)
    state = checkpoint_state(moto_s3, deferred.trigger)
    assert state is not None
    assert len({item.request_id for item in state.items}) == 4
    assert all(len(item.archived) == 1 and item.manifest for item in state.items)
    c = emulator.counters()
    assert (c["submits"], c["jobs_created"]) == (4, 4)


def test_batch_triggerer_killed_mid_submit_never_resends_those_items(
    emulator, moto_s3, s3_bucket, batch_inputs, context, monkeypatch
):
    """A real SIGKILL of the process running the batch trigger, after two POSTs were answered but
    before either answer was recorded: those items may exist (and be billed) at RunComfy, so the
    trigger that takes over reports them, never resends them."""
    connection = json.loads(os.environ["AIRFLOW_CONN_RUNCOMFY_DEFAULT"])
    # A short submit deadline makes the survivor's wait for the dead writer's claims short.
    connection["extra"].update(submit_read_timeout_s=1, connect_timeout_s=1)
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(connection))
    deferred = defer(batch_operator(s3_bucket, batch_inputs), context)
    _path, kwargs = deferred.trigger.serialize()
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.batch_child", json.dumps(kwargs)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    posted: list[str] = []
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            if line.startswith("POSTED "):
                posted.append(line)
            if len(posted) == 2:
                break
        assert len(posted) == 2, "the child died before two submits were answered"
    finally:
        child.kill()  # SIGKILL: no finally block, no drain, no save runs in the child
        child.wait(timeout=30)
    submits_before = emulator.counters()["submits"]
    assert submits_before == 2

    event = run_trigger(rebuild(deferred.trigger))
    state = checkpoint_state(moto_s3, deferred.trigger)
    assert state is not None
    assert state.counts() == {"completed": 2, "submit_unknown": 2}
    with pytest.raises(RunComfyJobFailedError, match=r"2 of 4 items failed.*not resubmitted"):
        batch_operator(s3_bucket, batch_inputs).execute_complete(context, event)
    assert emulator.counters()["submits"] == submits_before + 2  # only the 2 never-sent items


# -- worker killed after submit, before deferral -------------------------------------------------


@pytest.mark.parametrize("dies_in", ["_publish", "_defer"])
def test_worker_killed_after_submit_retry_reattaches(
    emulator, moto_s3, input_image, s3_bucket, context, monkeypatch, all_logs, dies_in
):
    def die(*_args: Any, **_kwargs: Any) -> None:
        raise WorkerKilled

    with monkeypatch.context() as patch:
        patch.setattr(NanoBananaEditOperator, dies_in, die)
        with pytest.raises(WorkerKilled):
            edit_operator(input_image, s3_bucket).execute(context)
    assert emulator.counters()["jobs_created"] == 1
    retry = new_context(store=context["task_state_store"])  # new try: XCom gone, state store kept
    result = run_deferred(edit_operator(input_image, s3_bucket), retry)
    assert len(result["archived"]) == 2
    assert "Re-attaching to" in all_logs.text
    c = emulator.counters()
    assert (c["submits"], c["jobs_created"]) == (1, 1)
    assert retry["task_state_store"] == {}  # forgotten once archived: a later clear starts afresh


def test_changed_parameters_on_retry_submit_new_work(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)
    defer(edit_operator(input_image, s3_bucket), context)
    retry = new_context(store=context["task_state_store"])
    defer(edit_operator(input_image, s3_bucket, prompt="a different edit"), retry)
    assert emulator.counters()["jobs_created"] == 2


# -- task cleared / marked failed while deferred: Airflow >= 3.3 calls trigger.on_kill() -------


def test_on_kill_cancels_a_queued_job(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)
    deferred = defer(edit_operator(input_image, s3_bucket), context)
    asyncio.run(rebuild(deferred.trigger).on_kill())
    c = emulator.counters()
    assert c["cancels"] == 1
    assert c["jobs_by_state"]["cancelled"] == 1


def test_on_kill_leaves_a_running_job_alone(emulator, input_image, s3_bucket, context):
    emulator.configure(queue_s=0.0, run_s=30.0)
    deferred = defer(edit_operator(input_image, s3_bucket), context)
    assert emulator.counters()["jobs_by_state"]["in_progress"] == 1
    asyncio.run(rebuild(deferred.trigger).on_kill())
    c = emulator.counters()
    assert c["cancels"] == 0  # RunComfy cannot cancel a running job; no pointless call
    assert c["jobs_by_state"]["in_progress"] == 1


def test_on_kill_respects_cancel_on_kill_false(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)
    deferred = defer(edit_operator(input_image, s3_bucket, cancel_on_kill=False), context)
    polls = emulator.counters()["status_polls"]
    asyncio.run(rebuild(deferred.trigger).on_kill())
    c = emulator.counters()
    assert (c["cancels"], c["status_polls"]) == (0, polls)


def test_on_kill_with_the_api_down_is_bounded_and_never_raises(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)
    deferred = defer(edit_operator(input_image, s3_bucket), context)
    emulator.set_faults(endpoints=["status", "cancel"], rate_5xx=1.0, status_5xx=503)
    polls = emulator.counters()["status_polls"]
    asyncio.run(rebuild(deferred.trigger).on_kill())  # returns; raises nothing
    c = emulator.counters()
    assert c["status_polls"] - polls <= 5  # bounded: the hook's retries, then it gives up
    assert c["cancels"] == 0
    assert c["jobs_by_state"]["in_queue"] == 1


# -- scheduler / triggerer outage: the deadline is an epoch in the trigger row --------------------


def test_trigger_rebuilt_after_an_outage_keeps_its_deadline_and_times_out_at_once(
    emulator, input_image, s3_bucket, context
):
    emulator.configure(max_running=0)
    deferred = defer(edit_operator(input_image, s3_bucket, timeout=0.5), context)
    deadline = deferred.trigger.serialize()[1]["deadline_epoch_s"]
    while time.time() <= deadline:  # the outage outlasts the task's timeout
        time.sleep(0.05)
    restarted = rebuild(deferred.trigger)
    assert restarted.deadline_epoch_s == deadline  # not re-extended by the restart
    polls = emulator.counters()["status_polls"]
    event = run_trigger(restarted)
    assert event["status"] == "timeout"
    assert emulator.counters()["status_polls"] == polls
    with pytest.raises(RunComfyJobTimeoutError):
        edit_operator(input_image, s3_bucket).execute_complete(context, event)
    c = emulator.counters()
    assert (c["cancels"], c["jobs_by_state"]["cancelled"], c["jobs_created"]) == (1, 1, 1)
