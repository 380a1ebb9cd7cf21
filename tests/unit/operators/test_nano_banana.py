"""The operator's decisions against mocked HTTP: validate, re-attach or submit once, defer, finish."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from airflow_provider_nanobanana._compat import AirflowFailException, TaskDeferred
from airflow_provider_nanobanana.exceptions import (
    InvalidEditRequestError,
    RunComfyJobCancelledError,
    RunComfyJobFailedError,
    RunComfyJobTimeoutError,
)
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
from tests.fakes import TI, install_clock, new_context

BASE = "https://api.test"
SUBMIT = f"{BASE}/v1/models/google/nano-banana-2/edit"
IMG = "https://img.test/in.png"


def urls(rid):
    return (
        f"{BASE}/v1/requests/{rid}/status",
        f"{BASE}/v1/requests/{rid}/result",
        f"{BASE}/v1/requests/{rid}/cancel",
    )


@pytest.fixture(autouse=True)
def connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps(
            {
                "conn_type": "runcomfy",
                "host": BASE,
                "password": "op-token",
                "extra": {"retry_max_wait_s": 0.01},
            }
        ),
    )


@pytest.fixture
def context():
    return new_context()


def op(**kw):
    params = {
        "task_id": "edit",
        "prompt": "add a hat",
        "image_urls": [IMG],
        "poll_interval": 0.01,
        "timeout": 30,
    }
    return NanoBananaEditOperator(**{**params, **kw})


def job_routes(rid, states, result):
    """Mocked status (answering ``states`` in turn), result and cancel routes of one job."""
    status, res, cancel = urls(rid)
    return (
        respx.get(status).mock(
            side_effect=[httpx.Response(200, json={"request_id": rid, "status": s}) for s in states]
        ),
        respx.get(res).mock(return_value=httpx.Response(200, json={"request_id": rid, **result})),
        respx.post(cancel).mock(
            return_value=httpx.Response(200, json={"status": "cancelled", "outcome": "cancelled"})
        ),
    )


def mock_job(rid, states, result):
    return job_routes(rid, states, result)[2]


DONE = {"status": "completed", "output": {"images": ["https://cdn.runcomfy.net/o1.png?sig=abc"]}}


@respx.mock
def test_submits_once_publishes_the_id_and_defers(context):
    submit = respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r1"}))
    mock_job("r1", ["in_queue"], DONE)
    with pytest.raises(TaskDeferred) as deferred:
        op().execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, RunComfyJobTrigger)
    assert trigger.request_id == "r1"
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout.total_seconds() > 30  # the trigger's own timeout event comes first
    assert submit.call_count == 1
    assert context["ti"].xcom["runcomfy_request_id"] == "r1"
    assert context["ti"].xcom["runcomfy_request_url"] == f"{BASE}/v1/requests/r1/status"
    assert context["task_state_store"]["runcomfy_request"]["request_id"] == "r1"


@respx.mock
def test_a_job_that_ends_while_the_worker_waits_never_defers(context, monkeypatch):
    clock = install_clock(monkeypatch)
    respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r2"}))
    status, result, _ = job_routes("r2", ["in_queue", "in_progress", "in_progress", "completed"], DONE)
    returned = op(wait_before_defer=20, poll_interval=2, poll_max_interval=2).execute(context)
    assert returned["status"] == "completed"
    assert status.call_count == 4  # status polls at 0, 2, 4 and 6 s (clock seconds)
    assert sum(clock.sleeps) == pytest.approx(6, rel=0.25)  # jittered 2 s waits
    assert result.call_count == 1  # the result is fetched once


@respx.mock
def test_a_job_still_running_after_the_wait_defers_with_a_held_release(context, monkeypatch):
    clock = install_clock(monkeypatch)
    respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r2b"}))
    mock_job("r2b", ["in_queue"] * 10, DONE)
    with pytest.raises(TaskDeferred) as deferred:
        op(wait_before_defer=5, min_deferral=12, poll_interval=1, poll_max_interval=1).execute(context)
    assert clock.now - 1_800_000_000.0 == pytest.approx(5)
    assert deferred.value.trigger.release_not_before_epoch_s == pytest.approx(clock.now + 12)


def test_the_defer_race_guards_come_from_the_nanobanana_section(monkeypatch):
    monkeypatch.setenv("AIRFLOW__NANOBANANA__WAIT_BEFORE_DEFER_S", "7")
    monkeypatch.setenv("AIRFLOW__NANOBANANA__MIN_DEFERRAL_S", "11")
    assert op()._wait_before_defer() == 7
    assert op().min_deferral_s() == 11
    assert op(wait_before_defer=0, min_deferral=3).min_deferral_s() == 3
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError, match="min_deferral"):
            op(min_deferral=bad)


@respx.mock
def test_a_job_already_done_is_finished_without_deferring(context):
    respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r2"}))
    _, result_route, _ = job_routes("r2", ["completed"], DONE)
    result = op().execute(context)
    assert result == {
        "request_id": "r2",
        "status": "completed",
        "model_id": "google/nano-banana-2/edit",
        "images": ["https://cdn.runcomfy.net/o1.png?sig=***"],
        "archived": [],
        "manifest": None,
    }
    assert "runcomfy_request" not in context["task_state_store"]  # forgotten after success
    assert result_route.call_count == 1  # one result fetch, to archive


@respx.mock
def test_a_retry_that_finds_its_job_done_reads_status_and_result_once_each(context):
    submit = respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r2c"}))
    status, result, _ = job_routes("r2c", ["in_queue", "completed"], DONE)
    with pytest.raises(TaskDeferred):
        op().execute(context)
    context["ti"] = TI()
    assert op().execute(context)["request_id"] == "r2c"
    assert submit.call_count == 1
    assert status.call_count == 2  # one look per try: the re-attach's look is the wait's
    assert result.call_count == 1


@respx.mock
def test_execute_complete_maps_every_outcome(context):
    mock_job("r3", [], DONE)
    task = op()
    assert (
        task.execute_complete(context, {"status": "success", "request_id": "r3", "images": []})["request_id"]
        == "r3"
    )
    with pytest.raises(RunComfyJobFailedError, match="model said no"):
        task.execute_complete(context, {"status": "failed", "request_id": "r3", "message": "model said no"})
    with pytest.raises(RunComfyJobCancelledError):
        task.execute_complete(context, {"status": "cancelled", "request_id": "r3"})
    with pytest.raises(Exception, match="outcome is unknown"):
        task.execute_complete(context, None)
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic names the bad status
        task.execute_complete(context, {"status": "partying", "request_id": "r3"})


@respx.mock
def test_timeout_cancels_a_queued_job_and_fails(context):
    status, _, cancel_url = urls("r4")
    respx.get(status).mock(return_value=httpx.Response(200, json={"status": "in_queue"}))
    cancel = respx.post(cancel_url).mock(return_value=httpx.Response(200, json={"outcome": "cancelled"}))
    with pytest.raises(RunComfyJobTimeoutError, match="not finished"):
        op().execute_complete(
            context, {"status": "timeout", "request_id": "r4", "message": "job not finished after 30s"}
        )
    assert cancel.call_count == 1


@respx.mock
def test_retry_reattaches_to_a_live_job_instead_of_paying_again(context):
    submit = respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r5"}))
    mock_job("r5", ["in_queue", "in_progress", "in_progress"], DONE)
    with pytest.raises(TaskDeferred):
        op().execute(context)
    context["ti"] = TI()  # a new try: XCom is cleared, the state store is not
    with pytest.raises(TaskDeferred) as deferred:
        op().execute(context)
    assert deferred.value.trigger.request_id == "r5"
    assert submit.call_count == 1


@respx.mock
def test_retry_after_a_failed_job_submits_anew(context):
    submit = respx.post(SUBMIT).mock(
        side_effect=[
            httpx.Response(200, json={"request_id": "r6"}),
            httpx.Response(200, json={"request_id": "r7"}),
        ]
    )
    mock_job("r6", ["in_queue", "failed"], {"status": "failed"})
    mock_job("r7", ["in_queue"], DONE)
    with pytest.raises(TaskDeferred):
        op().execute(context)
    with pytest.raises(TaskDeferred) as deferred:
        op().execute(context)
    assert deferred.value.trigger.request_id == "r7"
    assert submit.call_count == 2


@respx.mock
def test_changed_parameters_are_new_work(context):
    submit = respx.post(SUBMIT).mock(
        side_effect=[
            httpx.Response(200, json={"request_id": "r8"}),
            httpx.Response(200, json={"request_id": "r9"}),
        ]
    )
    mock_job("r8", ["in_queue", "in_queue"], DONE)
    mock_job("r9", ["in_queue"], DONE)
    with pytest.raises(TaskDeferred):
        op().execute(context)
    with pytest.raises(TaskDeferred):
        op(prompt="a different edit").execute(context)
    assert submit.call_count == 2


@respx.mock
def test_an_ambiguous_submit_fails_without_retry(context):
    submit = respx.post(SUBMIT).mock(side_effect=httpx.ReadTimeout("answer lost"))
    with pytest.raises(AirflowFailException, match="not resubmitted"):
        op().execute(context)
    assert submit.call_count == 1


@respx.mock
def test_bad_input_fails_before_any_network_call(context):
    route = respx.route()
    for bad in (
        {"num_images": 9},
        {"image_urls": []},
        {"aspect_ratio": "1:9"},
        {"image_urls": ["http://plain.test/a.png"]},
    ):
        with pytest.raises(InvalidEditRequestError):
            op(**bad).execute(context)
    assert route.call_count == 0


@respx.mock
def test_non_deferrable_waits_in_place_with_the_same_policy(context):
    respx.post(SUBMIT).mock(return_value=httpx.Response(200, json={"request_id": "r10"}))
    mock_job("r10", ["in_queue", "in_progress", "completed"], DONE)
    result = op(deferrable=False).execute(context)
    assert result["status"] == "completed"
    assert result["request_id"] == "r10"


def test_bad_timing_parameters_are_refused_at_parse_time():
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            op(timeout=bad)
    with pytest.raises(ValueError, match="poll_interval"):
        op(poll_interval=0)


# -- parse-time checks of what needs an archive (before any network call) -------------------------

_OK_IMAGE = "https://images.example.com/cat.png"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"on_bad_output": "keep"}, "on_bad_output"),
        ({"on_bad_output": "resubmit"}, "on_bad_output"),
        ({"reuse_outputs": True}, "reuse_outputs"),
        ({"max_paid_requests": 1, "budget_s3_uri": "bucket/prefix/"}, "budget_s3_uri"),
        ({"max_paid_requests": 1, "budget_s3_uri": "s3://Bad_Bucket/x/"}, "budget_s3_uri"),
    ],
)
def test_settings_that_need_an_archive_or_a_ledger_are_refused_at_parse_time(changes, field):
    with pytest.raises(ValueError, match=field) as info:
        NanoBananaEditOperator(task_id="t", prompt="p", image_urls=[_OK_IMAGE], **changes)
    assert "output_s3_uri" in str(info.value) or field == "budget_s3_uri"


@pytest.mark.parametrize(
    "changes",
    [
        {"on_bad_output": "keep", "output_s3_uri": "{{ var.value.out }}"},  # rendered later
        {"reuse_outputs": True, "output_s3_uri": "s3://bucket/out/"},
        {"on_bad_output": "resubmit", "output_s3_uri": "s3://bucket/out/"},
        {"max_paid_requests": 1, "budget_s3_uri": "s3://bucket/ledger/"},
    ],
)
def test_settings_with_their_archive_or_ledger_are_accepted(changes):
    NanoBananaEditOperator(task_id="t", prompt="p", image_urls=[_OK_IMAGE], **changes)


def test_the_job_ledger_keeps_the_paid_count_and_reads_records_written_before_it():
    from airflow_provider_nanobanana.reattach import STATE_KEY, JobLedger
    from tests.fakes import StateStore

    store = StateStore()
    ledger = JobLedger.for_context(new_context(store))
    ledger.record("req-2", "work", paid_requests=2)
    assert ledger.recall_paid("work") == ("req-2", 2)
    assert ledger.recall_paid("other work") == (None, 1)
    store[STATE_KEY] = {"request_id": "req-1", "fingerprint": "work"}  # a 0.1.x record
    assert ledger.recall_paid("work") == ("req-1", 1)
    assert ledger.recall("work") == "req-1"
