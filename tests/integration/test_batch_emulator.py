"""The batch operator and its trigger against the emulator (queue and faults on) and moto."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_nanobanana import queue_drain
from airflow_provider_nanobanana._compat import TaskDeferred
from airflow_provider_nanobanana.batch import BatchCheckpoint, ItemState
from airflow_provider_nanobanana.exceptions import RunComfyError, RunComfyJobFailedError
from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from airflow_provider_nanobanana.queue_drain import QueueDrain
from airflow_provider_nanobanana.triggers.batch import RunComfyBatchTrigger
from tests.conftest import png_bytes
from tests.fakes import new_context
from tests.triggering import counters, kill, until

pytestmark = pytest.mark.usefixtures("airflow_connections")


def batch_context():
    return new_context(task_id="batch", run_id="manual__1", map_index=-1)


def seed_inputs(moto_s3, bucket, n):
    s3 = moto_s3.client()
    body = png_bytes((30, 120, 200), (32, 32))
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"inputs/img_{i:04d}.png", Body=body, ContentType="image/png")
    s3.put_object(Bucket=bucket, Key="inputs/notes.txt", Body=b"not an image")


def batch_operator(bucket, **kw):
    params = {
        "task_id": "batch",
        "prompt": "Add a sunset glow to {name}",
        "input_s3_prefix": f"s3://{bucket}/inputs/",
        "output_s3_uri": f"s3://{bucket}/out/",
        "resolution": "0.5K",
        "max_in_flight": 8,
        "rate_per_s": 400,
        "poll_interval": 0.05,
        "poll_max_interval": 0.3,
        "timeout": 240,
    }
    return NanoBananaBatchEditOperator(**{**params, **kw})


async def first_event(trigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("no event")


async def run_until_jobs_then_kill(trigger, emulator, jobs):
    """Run the batch trigger until ``jobs`` paid jobs exist, then kill it as a dying triggerer would."""
    runner = asyncio.ensure_future(first_event(trigger))

    async def enough_jobs():
        return (await counters(emulator))["jobs_created"] >= jobs

    await until(enough_jobs, timeout_s=20)
    await kill(runner)


def rebuilt(trigger):
    _, kwargs = trigger.serialize()
    assert "emulator-token" not in json.dumps(kwargs)
    return RunComfyBatchTrigger(**json.loads(json.dumps(kwargs)))


def run_batch(task, context):
    try:
        return task.execute(context)
    except TaskDeferred as deferred:
        event = asyncio.run(first_event(rebuilt(deferred.trigger)))
        return task.execute_complete(context, event)


def test_a_large_prefix_with_a_queue_and_faults(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 300)
    emulator.configure(queue_s=0.05, run_s=0.1, max_running=6)
    emulator.set_faults(endpoints=["status", "result"], rate_5xx=0.05, rate_429=0.05, retry_after_s=0.02)
    result = run_batch(batch_operator(s3_bucket), batch_context())
    assert result["total"] == 300
    assert result["succeeded"] == 300
    assert result["failed"] == 0
    assert set(result) >= {"manifest", "checkpoint", "counts"}
    assert len(json.dumps(result)) < 2000  # compact: never one entry per item in XCom
    counters = emulator.counters()
    assert counters["jobs_created"] == 300  # exactly one paid job per image
    assert counters["peak_active"] <= 8  # max_in_flight held
    s3 = moto_s3.client()
    manifest = json.loads(
        s3.get_object(Bucket=s3_bucket, Key=result["manifest"].split("/", 3)[3])["Body"].read()
    )
    assert len(manifest["items"]) == 300
    assert all(item["state"] == "archived" and len(item["archived"]) == 1 for item in manifest["items"])
    first = manifest["items"][0]["archived"][0]
    assert s3.head_object(Bucket=s3_bucket, Key=first.split("/", 3)[3])["ContentType"] == "image/png"


def test_a_triggerer_restart_mid_batch_resumes_without_resubmitting(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 40)
    emulator.configure(queue_s=0.2, run_s=0.3, max_running=4)
    task, context = batch_operator(s3_bucket, max_in_flight=6, max_failed_fraction=1.0), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)

    asyncio.run(run_until_jobs_then_kill(rebuilt(deferred.value.trigger), emulator, 15))
    created_before_restart = emulator.counters()["jobs_created"]
    assert 15 <= created_before_restart < 40
    event = asyncio.run(first_event(rebuilt(deferred.value.trigger)))  # a new triggerer picks it up
    result = task.execute_complete(context, event)
    assert result["succeeded"] + result["failed"] == 40
    # A graceful stop lets submits on the wire finish and be recorded, so nothing is left
    # ambiguous: every image got exactly one paid job and completed.
    assert result["counts"].get("submit_unknown", 0) == 0
    assert result["succeeded"] == 40
    assert emulator.counters()["jobs_created"] == 40


def test_partial_failures_follow_the_policy_and_lose_nothing(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 30)
    emulator.configure(queue_s=0.05, run_s=0.1, failure_rate=0.3, seed=7)
    result = run_batch(batch_operator(s3_bucket, item_retries=0, max_failed_fraction=0.6), batch_context())
    assert 0 < result["failed"] < 30
    assert result["succeeded"] + result["failed"] == 30
    assert emulator.counters()["jobs_created"] == 30
    checkpoint = BatchCheckpoint(moto_s3.client(), s3_bucket, "out/enrich/manual__1/batch/-1")
    state = checkpoint.load()
    assert len(state.in_state(ItemState.ARCHIVED)) == result["succeeded"]


def test_any_failure_fails_the_task_by_default_after_archiving_the_rest(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 10)
    emulator.configure(queue_s=0.05, run_s=0.1, failure_rate=0.5, seed=3)
    with pytest.raises(RunComfyJobFailedError, match="items failed"):
        run_batch(batch_operator(s3_bucket, item_retries=0), batch_context())
    state = BatchCheckpoint(moto_s3.client(), s3_bucket, "out/enrich/manual__1/batch/-1").load()
    assert state.in_state(ItemState.ARCHIVED)
    assert not state.in_state(ItemState.COMPLETED)  # every completed item was archived


def test_failed_items_are_retried_within_the_bound(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 12)
    emulator.configure(queue_s=0.05, run_s=0.1, failure_rate=0.4, seed=11)
    result = run_batch(batch_operator(s3_bucket, item_retries=3, max_failed_fraction=1.0), batch_context())
    created = emulator.counters()["jobs_created"]
    assert 12 < created <= 12 * 4  # failures resubmitted, never more than 1 + item_retries per item
    assert result["succeeded"] >= 9


def test_a_lost_submit_answer_is_never_paid_twice(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 5)
    emulator.set_faults(endpoints=["submit"], rate_lost_response=1.0)
    with pytest.raises(RunComfyJobFailedError, match="5 of 5 items failed"):
        run_batch(batch_operator(s3_bucket), batch_context())
    assert emulator.counters()["jobs_created"] == 5
    emulator.set_faults()
    with pytest.raises(RunComfyJobFailedError):  # a task retry does not resend ambiguous submits
        run_batch(batch_operator(s3_bucket), batch_context())
    assert emulator.counters()["jobs_created"] == 5


def test_a_task_retry_after_success_reuses_everything(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 6)
    first = run_batch(batch_operator(s3_bucket), batch_context())
    second = run_batch(batch_operator(s3_bucket), batch_context())
    assert first["succeeded"] == second["succeeded"] == 6
    assert emulator.counters()["jobs_created"] == 6


def test_bad_items_fail_before_anything_is_submitted(emulator, s3_bucket):
    task = batch_operator(s3_bucket, input_s3_prefix=None, items=["https://x.test/a.png"], num_images=9)
    with pytest.raises(RunComfyError, match="num_images"):
        task.execute(batch_context())
    assert emulator.counters()["submits"] == 0


def test_killing_the_deferred_batch_cancels_its_queued_jobs(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 6)
    emulator.configure(max_running=1, queue_s=0.0, run_s=30.0)  # one runs, the rest stay queued
    task, context = batch_operator(s3_bucket, max_in_flight=4), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)

    asyncio.run(run_until_jobs_then_kill(rebuilt(deferred.value.trigger), emulator, 4))
    asyncio.run(rebuilt(deferred.value.trigger).on_kill())  # the user marks the task failed
    by_state = emulator.counters()["jobs_by_state"]
    assert by_state.get("cancelled") == 3  # the queued ones
    assert by_state.get("in_progress") == 1  # RunComfy cannot cancel a running job


async def both(first, second):
    return await asyncio.gather(first_event(first), first_event(second))


def test_two_copies_of_the_trigger_on_one_checkpoint_never_pay_twice(emulator, moto_s3, s3_bucket):
    """Airflow may run one trigger in two triggerers at once (HA triggerers, a reassignment after a
    missed heartbeat). Both copies race for every item; the S3 claims let exactly one POST each."""
    seed_inputs(moto_s3, s3_bucket, 40)
    emulator.configure(queue_s=0.05, run_s=0.1, max_running=16)
    task, context = batch_operator(s3_bucket, max_in_flight=10), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    one, two = rebuilt(deferred.value.trigger), rebuilt(deferred.value.trigger)
    events = asyncio.run(both(one, two))
    assert [e["status"] for e in events] == ["success", "success"]
    assert emulator.counters()["jobs_created"] == 40  # one paid job per image, not one per copy
    result = task.execute_complete(context, events[0])
    assert result["succeeded"] == 40
    assert result["counts"] == {"archived": 40}
    assert emulator.counters()["jobs_created"] == 40


def test_max_in_flight_is_reached_and_never_exceeded(emulator, moto_s3, s3_bucket):
    """Jobs that outlive several submit rounds: a trigger that ignored what is in flight would flood."""
    seed_inputs(moto_s3, s3_bucket, 24)
    emulator.configure(queue_s=0.0, run_s=1.0, max_running=100)
    result = run_batch(batch_operator(s3_bucket, max_in_flight=5), batch_context())
    assert result["succeeded"] == 24
    counters = emulator.counters()
    assert counters["jobs_created"] == 24
    assert counters["peak_active"] == 5  # the cap was reached (so an excess would show) and held


def test_a_batch_trigger_deferred_by_0_1_0_finishes_under_this_version(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 6)
    task, context = batch_operator(s3_bucket), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "airflow_provider_nanobanana.triggers.batch.RunComfyBatchTrigger"  # 0.1.0's path
    kwargs_0_1_0 = {
        k: v for k, v in kwargs.items() if k not in ("kwargs_version", "release_not_before_epoch_s")
    }
    event = asyncio.run(first_event(RunComfyBatchTrigger(**json.loads(json.dumps(kwargs_0_1_0)))))
    result = task.execute_complete(context, event)
    assert result["succeeded"] == 6
    assert emulator.counters()["jobs_created"] == 6


def test_one_item_whose_input_cannot_be_prepared_fails_alone(emulator, moto_s3, s3_bucket, monkeypatch):
    """Issue #15, point 1: an unforeseen exception preparing one item (S3 unreachable while
    pre-signing) broke the whole submit group, whose other POSTs then went unrecorded."""
    import botocore.exceptions

    from airflow_provider_nanobanana.media.inputs import InputResolver

    seed_inputs(moto_s3, s3_bucket, 8)
    real_presign = InputResolver.presign

    def flaky_presign(self, bucket, key):
        if key.endswith("img_0003.png"):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        return real_presign(self, bucket, key)

    monkeypatch.setattr(InputResolver, "presign", flaky_presign)
    task, context = batch_operator(s3_bucket, max_in_flight=8, max_failed_fraction=0.5), batch_context()
    result = run_batch(task, context)
    assert (result["succeeded"], result["failed"]) == (7, 1)
    counters = emulator.counters()
    assert counters["submits"] == counters["jobs_created"] == 7  # every POST that left is recorded
    state = BatchCheckpoint(
        moto_s3.client(), s3_bucket, result["checkpoint"].split("/", 3)[3].rsplit("/_batch", 1)[0]
    ).load()
    (failed,) = [item for item in state.items if item.state is ItemState.FAILED]
    assert "img_0003" in failed.id
    assert "EndpointConnectionError" in failed.error or "Could not connect" in failed.error


async def batch_run_of(trigger):
    """The engine ``trigger.run()`` would drive (as ``RunComfyBatchTrigger._run`` builds it), kept at hand
    so a test can hold one copy at a chosen step."""
    from airflow_provider_nanobanana.batch.run import BatchRun
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
    from airflow_provider_nanobanana.spend.budget import BudgetLimits, batch_ledger

    hook = RunComfyHook(trigger.runcomfy_conn_id, model_id=trigger.model_id)
    await hook.aget_settings()
    media = trigger._media()
    checkpoint = await trigger._checkpoint(media)
    state = await asyncio.to_thread(checkpoint.load)
    ledger = batch_ledger(checkpoint, BudgetLimits(trigger.max_paid_requests, trigger.max_spend_usd))
    return BatchRun(trigger, hook, media, checkpoint, state, ledger=ledger)


def test_a_copy_resuming_between_marking_and_claiming_never_pays_twice(
    emulator, moto_s3, s3_bucket, monkeypatch
):
    """Copy 1 has marked the item ``submitting`` (and saved that) but not yet created its claim when
    copy 2 resumes. Copy 2 must not judge the missing claim "never sent" (move the item back to
    pending, release copy 1's budget unit and POST under the next claim): copy 1 then claims and
    POSTs too, two paid jobs with one counted. It waits out the claim grace instead."""
    import threading

    seed_inputs(moto_s3, s3_bucket, 1)
    emulator.configure(queue_s=0.05, run_s=0.05)
    task, context = batch_operator(s3_bucket, max_paid_requests=5), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)

    first_claiming, let_first_claim = threading.Event(), threading.Event()
    real_claim = BatchCheckpoint.claim
    owners: dict[str, str] = {}

    def held_claim(self, generation, item, owner):  # runs in a worker thread (asyncio.to_thread)
        if owner == owners["first"]:
            first_claiming.set()
            assert let_first_claim.wait(30)
        return real_claim(self, generation, item, owner)

    monkeypatch.setattr(BatchCheckpoint, "claim", held_claim)

    async def scenario():
        first = await batch_run_of(rebuilt(deferred.value.trigger))
        owners["first"] = first.owner
        one = asyncio.ensure_future(first.run())
        await until(lambda: asyncio.sleep(0, first_claiming.is_set()))
        await first._save()  # its periodic save lands in the gap: S3 says "submitting", no claim yet
        second = await batch_run_of(rebuilt(deferred.value.trigger))
        assert second.state.items[0].state is ItemState.SUBMITTING
        two = asyncio.ensure_future(second.run())

        async def second_decided():
            return bool(second.foreign) or (await counters(emulator))["jobs_created"] > 0

        await until(second_decided)
        let_first_claim.set()
        return await asyncio.gather(one, two)

    events = asyncio.run(scenario())
    assert [e.status for e in events] == ["success", "success"]
    assert emulator.counters()["jobs_created"] == 1  # one POST, by the copy that created the claim
    result = task.execute_complete(context, events[0].model_dump(mode="json"))
    assert result["counts"] == {"archived": 1}
    from tests.integration.test_budget_emulator import ledger_of

    assert ledger_of(moto_s3, s3_bucket, result).snapshot().paid_requests() == 1


def test_the_batch_reads_the_queue_with_the_single_job_triggers_model(emulator, moto_s3, s3_bucket):
    """Its polls feed, and are planned by, the loop's shared queue model for its connection."""
    seed_inputs(moto_s3, s3_bucket, 12)
    emulator.configure(queue_s=0.0, run_s=0.3, max_running=2)  # 12 in flight, 2 run: a moving queue
    task = batch_operator(s3_bucket, max_in_flight=12)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(batch_context())
    trigger = rebuilt(deferred.value.trigger)

    async def scenario():
        # The model's constants on this test's fast clock; it starts untrained.
        drain = QueueDrain(max_wait_s=3.0, half_life_s=1.2, min_evidence_s=0.04)
        queue_drain._DRAINS[asyncio.get_running_loop()] = {trigger.runcomfy_conn_id: drain}
        return await first_event(trigger), drain

    event, drain = asyncio.run(scenario())
    assert task.execute_complete(batch_context(), event)["succeeded"] == 12
    assert drain.moved >= drain.min_moved  # positions the batch's queued jobs were seen to move
    assert drain.spent_s > 0
    assert drain.run_s is not None  # and its completed jobs' run times


def test_a_batch_past_its_deadline_fails_naming_the_plain_status(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 3)
    emulator.configure(queue_s=600, run_s=0.1, max_running=1)  # nothing finishes before the deadline
    task = batch_operator(s3_bucket, timeout=1, max_failed_fraction=1.0)
    with pytest.raises(RunComfyError, match=r"^batch ended with timeout: batch deadline passed"):
        run_batch(task, batch_context())
