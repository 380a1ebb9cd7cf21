"""RunComfyJobSensor waits on a request submitted elsewhere, deferred or poking, and never cancels it."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_nanobanana._compat import TaskDeferred
from airflow_provider_nanobanana.exceptions import RunComfyJobCancelledError, RunComfyJobFailedError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import EditRequest
from airflow_provider_nanobanana.sensors.runcomfy import RunComfyJobSensor
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

pytestmark = pytest.mark.usefixtures("airflow_connections")


def submit_elsewhere(emulator, url):
    hook = RunComfyHook(token=emulator.token, base_url=emulator.base_url)
    request = EditRequest.build(prompt="x", image_urls=[url], allow_insecure_inputs=True)
    return hook.submit(request).request_id


def sensor(request_id, **kw):
    return RunComfyJobSensor(task_id="wait", request_id=request_id, poll_interval=0.1, timeout=60, **kw)


def run_deferred(task):
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    trigger = deferred.value.trigger
    assert trigger.serialize()[1]["cancel_on_kill"] is False  # a sensor never cancels foreign jobs
    rebuilt = RunComfyJobTrigger(**json.loads(json.dumps(trigger.serialize()[1])))

    async def first():
        async for event in rebuilt.run():
            return event.payload
        raise AssertionError("no event")

    return task.execute_complete({}, asyncio.run(first()))


def test_deferred_sensor_returns_the_outcome(emulator, presigned_input):
    rid = submit_elsewhere(emulator, presigned_input)
    result = run_deferred(sensor(rid))
    assert result["request_id"] == rid
    assert result["status"] == "completed"
    assert len(result["images"]) == 1
    assert emulator.counters()["jobs_created"] == 1
    assert emulator.counters()["result_polls"] == 1


def test_deferred_sensor_fails_on_a_failed_job(emulator, presigned_input):
    emulator.configure(failure_rate=1.0)
    with pytest.raises(RunComfyJobFailedError):
        run_deferred(sensor(submit_elsewhere(emulator, presigned_input)))


def test_poking_sensor(emulator, presigned_input):
    emulator.configure(queue_s=0.5, run_s=0.5)
    rid = submit_elsewhere(emulator, presigned_input)
    task = sensor(rid, deferrable=False)
    assert not task.poke({})
    for _ in range(100):
        if (done := task.poke({})).is_done:
            break
        asyncio.run(asyncio.sleep(0.1))
    else:
        raise AssertionError("the job never completed")
    assert done.xcom_value["request_id"] == rid
    assert len(done.xcom_value["images"]) == 1
    assert emulator.counters()["result_polls"] == 1  # pokes read the status; the result once


def test_poking_sensor_raises_when_cancelled_from_outside(emulator, presigned_input):
    emulator.configure(max_running=0)
    rid = submit_elsewhere(emulator, presigned_input)
    emulator.force_cancel(rid)
    with pytest.raises(RunComfyJobCancelledError):
        sensor(rid, deferrable=False).poke({})
