"""API faults against the real operator, trigger and hook: the emulator misbehaves, S3 is moto.

Every case asserts the outcome, that completed work is archived (or the failure says what is missing)
and, from the emulator's counters, that no paid submit was duplicated.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import respx
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_nanobanana.exceptions import (
    RunComfyJobCancelledError,
    RunComfyJobFailedError,
    RunComfyJobTimeoutError,
    RunComfyRateLimitedError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.media import OutputsNotArchivedError
from airflow_provider_nanobanana.models import EditRequest
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
from tests.reliability.conftest import defer, edit_operator, new_context, rebuild, run_deferred, run_trigger

pytestmark = pytest.mark.usefixtures("airflow_connections")


def objects(moto_s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def assert_archived(result: dict[str, Any], moto_s3: Any, bucket: str, count: int = 2) -> None:
    assert result["status"] == "completed"
    assert len(result["archived"]) == count
    keys = objects(moto_s3, bucket)
    for uri in [*result["archived"], result["manifest"]]:
        assert uri.removeprefix(f"s3://{bucket}/") in keys


def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    """Wait for a condition the test drives (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not reached within {timeout_s} s")
        time.sleep(0.02)


# -- 429 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after_s", [0.05, None], ids=["with-retry-after", "without-retry-after"])
def test_429_storm_on_submit_is_retried_and_pays_once(
    emulator, moto_s3, input_image, s3_bucket, context, retry_after_s
):
    emulator.set_faults(endpoints=["submit"], rate_429=0.6, retry_after_s=retry_after_s)
    result = run_deferred(edit_operator(input_image, s3_bucket), context)
    assert_archived(result, moto_s3, s3_bucket)
    counters = emulator.counters()
    assert counters["faults_injected"].get("429", 0) >= 1
    assert counters["submits"] > 1
    assert counters["jobs_created"] == 1


def test_429_on_every_submit_fails_clearly_without_any_job(emulator, input_image, s3_bucket, context):
    emulator.set_faults(endpoints=["submit"], rate_429=1.0, retry_after_s=0.01)
    with pytest.raises(RunComfyRateLimitedError, match="HTTP 429"):
        edit_operator(input_image, s3_bucket).execute(context)
    counters = emulator.counters()
    assert counters["submits"] == 5  # max_retries=4: bounded, then a clear failure
    assert counters["jobs_created"] == 0
    assert "runcomfy_request_id" not in context["ti"].xcom


def test_retry_after_is_honoured_between_status_retries(emulator, airflow_connections, monkeypatch):
    hook = RunComfyHook("runcomfy_default", max_retries=2, retry_max_wait_s=5.0)
    rid = hook.submit(EditRequest.build(prompt="x", image_urls=["https://example.com/a.png"])).request_id
    emulator.set_faults(endpoints=["status"], rate_429=1.0, retry_after_s=0.3)
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)  # tenacity's sleep: the waits, not wall time
    with pytest.raises(RunComfyRateLimitedError) as info:
        hook.get_status(rid)
    assert waits == [pytest.approx(0.3), pytest.approx(0.3)]  # two waits of exactly Retry-After
    assert info.value.retry_after_s == pytest.approx(0.3)
    assert emulator.counters()["status_polls"] == 3


def test_429_and_5xx_storms_while_waiting(emulator, moto_s3, input_image, s3_bucket, context):
    emulator.set_faults(endpoints=["status", "result"], rate_429=0.3, retry_after_s=0.02, rate_5xx=0.3)
    result = run_deferred(edit_operator(input_image, s3_bucket), context)
    assert_archived(result, moto_s3, s3_bucket)
    counters = emulator.counters()
    assert counters["faults_injected"].get("429", 0) + counters["faults_injected"].get("5xx", 0) >= 2
    assert counters["jobs_created"] == 1


# -- 5xx and broken connections on submit: ambiguous ones are never resubmitted ----------------


@pytest.mark.parametrize("status", [500, 502, 504])
def test_ambiguous_5xx_on_submit_fails_without_resubmitting(
    emulator, input_image, s3_bucket, context, status
):
    emulator.set_faults(endpoints=["submit"], rate_5xx=1.0, status_5xx=status)
    with pytest.raises(AirflowFailException, match=f"HTTP {status}.*not resubmitted"):
        edit_operator(input_image, s3_bucket).execute(context)
    assert emulator.counters()["submits"] == 1


def test_503_on_submit_is_retried_because_nothing_was_accepted(
    emulator, moto_s3, input_image, s3_bucket, context
):
    emulator.set_faults(endpoints=["submit"], rate_5xx=0.6, status_5xx=503)
    result = run_deferred(edit_operator(input_image, s3_bucket), context)
    assert_archived(result, moto_s3, s3_bucket)
    counters = emulator.counters()
    assert counters["faults_injected"]["5xx"] >= 1
    assert counters["jobs_created"] == 1


@pytest.mark.parametrize("drop_mode", ["no_response", "truncated"])
def test_connection_reset_on_submit_is_not_resubmitted(emulator, input_image, s3_bucket, context, drop_mode):
    emulator.set_faults(endpoints=["submit"], rate_drop=1.0, drop_mode=drop_mode)
    with pytest.raises(AirflowFailException, match="not resubmitted automatically"):
        edit_operator(input_image, s3_bucket).execute(context)
    assert emulator.counters()["submits"] == 1


def test_lost_submit_response_never_pays_twice(emulator, input_image, s3_bucket, context):
    """The job exists and is billed, but the answer was lost: fail, do not retry, say so."""
    emulator.set_faults(endpoints=["submit"], rate_lost_response=1.0)
    with pytest.raises(AirflowFailException, match="may have been created and billed"):
        edit_operator(input_image, s3_bucket).execute(context)
    counters = emulator.counters()
    assert counters["submits"] == 1
    assert counters["jobs_created"] == 1


def test_read_timeout_on_submit_is_not_resubmitted(emulator, make_conn, input_image, s3_bucket, context):
    conn = make_conn("runcomfy_impatient", submit_read_timeout_s=0.3)
    emulator.set_faults(endpoints=["submit"], latency_s=1.0)
    with pytest.raises(AirflowFailException, match=r"ReadTimeout.*not resubmitted"):
        edit_operator(input_image, s3_bucket, runcomfy_conn_id=conn).execute(context)
    # The call has returned: one POST reached the server and none followed it. (Whether the emulator
    # created the job depends on when it noticed the hang-up; a real server may well have.)
    assert emulator.counters()["submits"] == 1


def test_read_timeout_on_status_is_transient_and_bounded(emulator, make_conn):
    conn = make_conn("runcomfy_impatient", read_timeout_s=0.2)
    hook = RunComfyHook(conn, max_retries=1)
    rid = hook.submit(EditRequest.build(prompt="x", image_urls=["https://example.com/a.png"])).request_id
    emulator.set_faults(endpoints=["status"], latency_s=0.6)
    with pytest.raises(RunComfyTransientError, match="ReadTimeout"):
        hook.get_status(rid)
    assert emulator.counters()["status_polls"] == 2


@pytest.mark.parametrize("fault", ["rate_malformed", "rate_html"])
def test_garbled_submit_answer_is_not_resubmitted(emulator, input_image, s3_bucket, context, fault):
    emulator.set_faults(endpoints=["submit"], **{fault: 1.0})
    with pytest.raises(AirflowFailException, match="not resubmitted"):
        edit_operator(input_image, s3_bucket).execute(context)
    assert emulator.counters()["submits"] == 1


@pytest.mark.parametrize("fault", ["rate_malformed", "rate_html", "rate_drop"])
def test_garbled_or_dropped_polls_are_survived(emulator, moto_s3, input_image, s3_bucket, context, fault):
    emulator.set_faults(endpoints=["status", "result"], **{fault: 0.4})
    result = run_deferred(edit_operator(input_image, s3_bucket), context)
    assert_archived(result, moto_s3, s3_bucket)
    counters = emulator.counters()
    assert counters["faults_total"] >= 1
    assert counters["jobs_created"] == 1


# -- job outcomes ----------------------------------------------------------------------------------


def test_unknown_job_state_waits_until_the_deadline_and_names_the_state(monkeypatch, context):
    base = "https://api.fake-runcomfy.test"
    conn = {
        "conn_type": "runcomfy",
        "host": base,
        "password": "tok-unknown",
        "extra": {"retry_max_wait_s": 0.01},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_FAKE", json.dumps(conn))
    rid = "req-unknown-1"
    with respx.mock(base_url=base, assert_all_called=False) as api:
        status = api.get(f"/v1/requests/{rid}/status").mock(
            return_value=httpx.Response(200, json={"request_id": rid, "status": "paused_for_review"})
        )
        cancel = api.post(f"/v1/requests/{rid}/cancel")
        trigger = RunComfyJobTrigger(
            request_id=rid,
            # Generous against a loaded CI machine: at 0.1 s per poll, 3 s leaves room for many polls.
            deadline_epoch_s=time.time() + 3.0,
            runcomfy_conn_id="runcomfy_fake",
            poll_interval_s=0.1,
            poll_max_s=0.1,
        )
        event = run_trigger(trigger)
        assert event["status"] == "timeout"
        assert "paused_for_review" in event["message"]
        assert status.call_count >= 3  # it kept polling an unknown state instead of giving up
        op = edit_operator("https://example.com/a.png", None, runcomfy_conn_id="runcomfy_fake")
        with pytest.raises(RunComfyJobTimeoutError, match=f"{rid}.*paused_for_review"):
            op.execute_complete(context, event)
        assert not cancel.called  # only a job known to be queued is cancelled


def test_failed_job_fails_the_task_with_the_server_message(
    emulator, moto_s3, input_image, s3_bucket, context
):
    emulator.configure(max_running=0)
    task = edit_operator(input_image, s3_bucket)
    deferred = defer(task, context)
    rid = context["ti"].xcom["runcomfy_request_id"]
    emulator.force_fail(rid, "the safety filter rejected the prompt")
    event = run_trigger(rebuild(deferred.trigger))
    with pytest.raises(RunComfyJobFailedError, match=f"{rid}.*safety filter rejected the prompt"):
        task.execute_complete(context, event)
    assert objects(moto_s3, s3_bucket) == ["inputs/cat.png"]
    assert emulator.counters()["jobs_created"] == 1


@pytest.mark.parametrize("while_state", ["in_queue", "in_progress"])
def test_job_cancelled_from_outside_fails_the_task_and_a_retry_submits_fresh(
    emulator, moto_s3, input_image, s3_bucket, context, while_state
):
    if while_state == "in_queue":
        emulator.configure(max_running=0)
    else:
        emulator.configure(queue_s=0.0, run_s=30.0)
    task = edit_operator(input_image, s3_bucket)
    deferred = defer(task, context)
    rid = context["ti"].xcom["runcomfy_request_id"]
    wait_for(lambda: emulator.counters()["jobs_by_state"][while_state] == 1)
    emulator.force_cancel(rid)
    with pytest.raises(RunComfyJobCancelledError, match=f"{rid} was cancelled"):
        task.execute_complete(context, run_trigger(rebuild(deferred.trigger)))
    # The next try does not re-attach to a cancelled request: it submits exactly one new job.
    emulator.configure(queue_s=0.1, run_s=0.1, max_running=4)
    retry = new_context(store=context["task_state_store"])
    result = run_deferred(edit_operator(input_image, s3_bucket), retry)
    assert result["request_id"] != rid
    assert_archived(result, moto_s3, s3_bucket)
    assert emulator.counters()["jobs_created"] == 2


def test_job_stuck_in_queue_times_out_and_is_cancelled(emulator, input_image, s3_bucket, context):
    emulator.configure(max_running=0)
    with pytest.raises(RunComfyJobTimeoutError, match="last state: in_queue"):
        run_deferred(edit_operator(input_image, s3_bucket, timeout=1.0), context)
    counters = emulator.counters()
    assert counters["cancels"] == 1
    assert counters["jobs_by_state"]["cancelled"] == 1
    assert counters["jobs_created"] == 1


def test_expired_output_urls_fail_naming_each_output_and_a_retry_archives_them(
    emulator, moto_s3, input_image, s3_bucket, context
):
    emulator.set_faults(expire_outputs=True)
    with pytest.raises(OutputsNotArchivedError) as info:
        run_deferred(edit_operator(input_image, s3_bucket), context)
    message = str(info.value)
    assert "2 of 2 outputs" in message
    assert "output 0" in message
    assert "output 1" in message
    assert "expired" in message
    assert objects(moto_s3, s3_bucket) == ["inputs/cat.png"]  # nothing half-written, no manifest
    # A retry (fresh URLs now) re-attaches to the completed request and archives: nothing lost, paid once.
    emulator.set_faults()
    retry = new_context(store=context["task_state_store"])
    result = run_deferred(edit_operator(input_image, s3_bucket), retry)
    assert result["request_id"] == info.value.request_id
    assert_archived(result, moto_s3, s3_bucket)
    assert emulator.counters()["jobs_created"] == 1
