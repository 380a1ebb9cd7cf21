"""The edit operator and its trigger over real HTTP (emulator) and a real S3 API (moto server)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from PIL import Image

from airflow_provider_nanobanana._compat import TaskDeferred
from airflow_provider_nanobanana.exceptions import RunComfyJobFailedError, RunComfyJobTimeoutError
from airflow_provider_nanobanana.models import JobState
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
from tests.fakes import TI, new_context

pytestmark = pytest.mark.usefixtures("airflow_connections")


@pytest.fixture
def context():
    return new_context()


def operator(input_uri, bucket, **kw):
    params = {
        "task_id": "edit",
        "prompt": "turn the sky purple",
        "image_urls": [input_uri],
        "num_images": 2,
        "output_s3_uri": f"s3://{bucket}/edited/",
        "poll_interval": 0.1,
        "poll_max_interval": 0.5,
        "timeout": 60,
    }
    return NanoBananaEditOperator(**{**params, **kw})


def run_deferred(task, context):
    """execute → TaskDeferred → the real trigger on an event loop → execute_complete."""
    try:
        return task.execute(context)
    except TaskDeferred as deferred:
        trigger = deferred.trigger
        _path, kwargs = trigger.serialize()
        rebuilt = RunComfyJobTrigger(**json.loads(json.dumps(kwargs)))  # as the triggerer would

        async def first_event():
            async for event in rebuilt.run():
                return event.payload
            raise AssertionError("the trigger ended without an event")

        return getattr(task, deferred.method_name)(context, asyncio.run(first_event()))


def test_s3_in_s3_out_through_a_real_deferral(emulator, moto_s3, input_image, s3_bucket, context):
    emulator.configure(queue_s=0.5, run_s=0.5)
    result = run_deferred(operator(input_image, s3_bucket), context)
    assert result["status"] == JobState.COMPLETED.value
    assert len(result["images"]) == 2
    assert len(result["archived"]) == 2
    assert context["ti"].xcom["runcomfy_request_id"] == result["request_id"]
    s3 = moto_s3.client()
    for uri in result["archived"]:
        bucket, _, key = uri[5:].partition("/")
        assert key.startswith("edited/enrich/manual__2026-11-27/edit/0/")
        obj = s3.get_object(Bucket=bucket, Key=key)
        assert obj["ContentType"] == "image/png"
        assert obj["Metadata"]
        import io

        Image.open(io.BytesIO(obj["Body"].read())).verify()
    manifest_bucket, _, manifest_key = result["manifest"][5:].partition("/")
    manifest = json.loads(s3.get_object(Bucket=manifest_bucket, Key=manifest_key)["Body"].read())
    assert manifest["request_id"] == result["request_id"]
    assert "X-Amz-Signature" not in json.dumps(manifest)
    assert "sig=" not in json.dumps(manifest).replace("sig=***", "")
    counters = emulator.counters()
    assert counters["jobs_created"] == 1
    # A deferred edit costs 1 POST, its status polls, 1 result GET and its downloads: nothing twice.
    assert counters["submits"] == 1
    assert counters["result_polls"] == 1
    assert counters["file_requests"] == 2


def test_a_job_that_ends_while_the_worker_waits_is_finished_without_deferring(
    emulator, input_image, s3_bucket, context
):
    emulator.configure(queue_s=0.2, run_s=0.3)
    result = operator(input_image, s3_bucket, wait_before_defer=30).execute(context)  # no TaskDeferred
    assert result["status"] == "completed"
    counters = emulator.counters()
    assert counters["submits"] == counters["jobs_created"] == 1
    assert counters["status_polls"] >= 2  # it did wait on the worker
    assert counters["result_polls"] == 1


def test_a_retry_reattaches_and_never_pays_twice(emulator, input_image, s3_bucket, context):
    emulator.configure(queue_s=1.0, run_s=0.5)
    first = operator(input_image, s3_bucket)
    with pytest.raises(TaskDeferred):
        first.execute(context)  # the worker dies here, after the submit
    context["ti"] = TI()  # the retry: XCom cleared, the task state store kept
    result = run_deferred(operator(input_image, s3_bucket), context)
    assert result["status"] == "completed"
    assert emulator.counters()["jobs_created"] == 1
    assert emulator.counters()["result_polls"] == 1


def test_a_retry_that_finds_its_job_done_fetches_the_result_once(emulator, input_image, s3_bucket, context):
    emulator.configure(queue_s=0.2, run_s=0.2)
    with pytest.raises(TaskDeferred):
        operator(input_image, s3_bucket).execute(context)
    polls_before = emulator.counters()["status_polls"]
    while emulator.counters()["jobs_by_state"].get("completed") != 1:
        asyncio.run(asyncio.sleep(0.05))
    context["ti"] = TI()
    result = operator(input_image, s3_bucket).execute(context)  # re-attaches, finds it done
    assert result["status"] == "completed"
    counters = emulator.counters()
    assert counters["jobs_created"] == 1
    assert counters["status_polls"] == polls_before + 1  # the re-attach's look is the only one
    assert counters["result_polls"] == 1


def test_non_deferrable_runs_the_same_flow_on_the_worker(emulator, input_image, s3_bucket, context):
    result = operator(input_image, s3_bucket, deferrable=False).execute(context)
    assert len(result["archived"]) == 2
    assert emulator.counters()["jobs_created"] == 1
    assert emulator.counters()["result_polls"] == 1


def test_a_failed_job_fails_the_task_with_the_server_message(emulator, input_image, s3_bucket, context):
    emulator.configure(failure_rate=1.0)
    with pytest.raises(RunComfyJobFailedError, match="failed"):
        run_deferred(operator(input_image, s3_bucket), context)


def test_a_stuck_job_times_out_and_is_cancelled(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)  # nothing ever leaves the queue
    with pytest.raises(RunComfyJobTimeoutError):
        run_deferred(operator(input_image, s3_bucket, timeout=1.5), context)
    counters = emulator.counters()
    assert counters["cancels"] == 1
    assert counters["jobs_by_state"].get("cancelled") == 1


def test_storms_of_429_and_5xx_while_waiting(emulator, input_image, s3_bucket, context):
    emulator.set_faults(endpoints=["status", "result"], rate_429=0.3, retry_after_s=0.05, rate_5xx=0.3)
    result = run_deferred(operator(input_image, s3_bucket), context)
    assert result["status"] == "completed"
    assert emulator.counters()["jobs_created"] == 1


def test_archived_outputs_are_an_asset_event_and_openlineage_datasets(
    emulator, input_image, s3_bucket, context
):
    from airflow.sdk import Asset

    from tests.fakes import OutletEvents

    task = operator(input_image, s3_bucket)
    asset = Asset(uri=f"s3://{s3_bucket}/edited/")
    assert task.outlets == [asset]  # a literal output prefix is declared as the task's Asset
    context["outlet_events"] = OutletEvents()
    result = run_deferred(task, context)
    assert context["outlet_events"][asset].extra == {
        "request_id": result["request_id"],
        "archived": result["archived"],
        "manifest": result["manifest"],
    }
    lineage = task.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(f"s3://{s3_bucket}", "inputs/cat.png")]
    assert sorted(f"{d.namespace}/{d.name}" for d in lineage.outputs) == sorted(result["archived"])


def test_a_templated_output_prefix_declares_no_asset(input_image, s3_bucket):
    assert operator(input_image, s3_bucket, output_s3_uri="{{ params.out }}").outlets == []


def test_on_kill_cancels_a_queued_job_and_leaves_a_running_one(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)  # stays queued
    queued = operator(input_image, s3_bucket)
    with pytest.raises(TaskDeferred):
        queued.execute(context)
    queued.on_kill()
    assert emulator.counters()["cancels"] == 1
    assert emulator.counters()["jobs_by_state"].get("cancelled") == 1

    emulator.configure(max_running=4, queue_s=0.0, run_s=30.0)  # starts at once, runs long
    running, context2 = operator(input_image, s3_bucket), new_context()
    with pytest.raises(TaskDeferred):
        running.execute(context2)
    while emulator.counters()["jobs_by_state"].get("in_progress") != 1:
        asyncio.run(asyncio.sleep(0.05))
    running.on_kill()  # RunComfy cannot cancel a running job: not even asked
    assert emulator.counters()["cancels"] == 1
    operator(input_image, s3_bucket, cancel_on_kill=False).on_kill()  # nothing submitted: no call
    assert emulator.counters()["cancels"] == 1


def test_a_trigger_deferred_by_0_1_0_finishes_under_this_version(emulator, input_image, s3_bucket, context):
    """The kwargs exactly as 0.1.0 serialized them (no kwargs_version, no release time), still in a
    trigger row during an upgrade: the trigger builds, runs to its event, and the task completes."""
    task = operator(input_image, s3_bucket)
    with pytest.raises(TaskDeferred):
        task.execute(context)
    kwargs_0_1_0 = {
        "request_id": context["ti"].xcom["runcomfy_request_id"],
        "deadline_epoch_s": time.time() + 60,
        "runcomfy_conn_id": "runcomfy_default",
        "poll_interval_s": 0.1,
        "poll_max_s": 0.5,
        "cancel_on_kill": True,
    }
    trigger = RunComfyJobTrigger(**json.loads(json.dumps(kwargs_0_1_0)))

    async def first_event():
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    event = asyncio.run(first_event())
    event_0_1_0 = {**event, "images": ["https://cdn.runcomfy.net/x.png?sig=***"]}  # 0.1.0's shape
    result = operator(input_image, s3_bucket).execute_complete(context, event_0_1_0)
    assert result["status"] == "completed"
    assert len(result["archived"]) == 2
    assert emulator.counters()["jobs_created"] == 1
