"""The hook against mocked HTTP (respx): status-code paths, retries, submit safety, parsing."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import respx

from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyAuthError,
    RunComfyBadRequestError,
    RunComfyNotFoundError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook, RunComfySettings, model_path
from airflow_provider_nanobanana.models import EditRequest, JobState

BASE = "https://api.test"
TOKEN = "tok-SECRET-123"
RID = "req_123"
SUBMIT = f"{BASE}/v1/models/google/nano-banana-2/edit"
STATUS = f"{BASE}/v1/requests/{RID}/status"
RESULT = f"{BASE}/v1/requests/{RID}/result"
CANCEL = f"{BASE}/v1/requests/{RID}/cancel"


@pytest.fixture
def hook():
    h = RunComfyHook(token=TOKEN, base_url=BASE, retry_max_wait_s=0.01, max_retries=3)
    yield h
    h.close()


@pytest.fixture
def request_():
    return EditRequest.build(prompt="add a hat", image_urls=["https://img.test/a.png"], num_images=2)


def submitted(rid=RID):
    return httpx.Response(200, json={"request_id": rid, "status_url": STATUS, "result_url": RESULT})


@respx.mock
def test_submit_sends_the_model_input_with_bearer_auth(hook, request_):
    route = respx.post(SUBMIT).mock(return_value=submitted())
    response = hook.submit(request_)
    assert response.request_id == RID
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.content) == request_.model_dump(mode="json")


@respx.mock
def test_status_result_cancel_parse(hook):
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json={"request_id": RID, "status": "in_queue", "queue_position": 2})
    )
    respx.get(RESULT).mock(
        return_value=httpx.Response(
            200,
            json={
                "request_id": RID,
                "status": "completed",
                "output": {"images": ["https://cdn.runcomfy.net/1.png"]},
            },
        )
    )
    respx.post(CANCEL).mock(
        return_value=httpx.Response(
            200, json={"request_id": RID, "status": "in_progress", "outcome": "not_cancellable"}
        )
    )
    status = hook.get_status(RID)
    assert status.status is JobState.IN_QUEUE
    assert status.queue_position == 2
    assert hook.get_result(RID).images == ["https://cdn.runcomfy.net/1.png"]
    assert not hook.cancel(RID).cancelled


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, RunComfyBadRequestError),
        (422, RunComfyBadRequestError),
        (401, RunComfyAuthError),
        (403, RunComfyAuthError),
        (404, RunComfyNotFoundError),
        (402, RunComfyBadRequestError),
    ],
)
@respx.mock
def test_permanent_errors_fail_at_once_with_the_server_message(hook, code, error):
    route = respx.get(STATUS).mock(
        return_value=httpx.Response(
            code, json={"error_code": code * 1000 + 1, "error_message": "nope: field x"}
        )
    )
    with pytest.raises(error, match="nope: field x") as info:
        hook.get_status(RID)
    assert info.value.status_code == code
    assert route.call_count == 1


@respx.mock
def test_transient_errors_are_retried_then_succeed(hook):
    route = respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(502, text="<html>bad gateway</html>"),
            httpx.ConnectError("refused"),
            httpx.Response(200, json={"status": "in_progress"}),
        ]
    )
    assert hook.get_status(RID).status is JobState.IN_PROGRESS
    assert route.call_count == 4


@respx.mock
def test_read_timeouts_and_garbled_bodies_are_retried_for_gets(hook):
    route = respx.get(STATUS).mock(
        side_effect=[
            httpx.ReadTimeout("slow"),
            httpx.Response(200, text='{"status": "in_pr'),
            httpx.Response(200, json={"status": "completed"}),
        ]
    )
    assert hook.get_status(RID).status is JobState.COMPLETED
    assert route.call_count == 3


@respx.mock
def test_retries_are_bounded(hook):
    route = respx.get(STATUS).mock(return_value=httpx.Response(504))
    with pytest.raises(RunComfyTransientError, match="HTTP 504"):
        hook.get_status(RID)
    assert route.call_count == 4  # first try + max_retries=3


@respx.mock
@pytest.mark.parametrize(("header", "expected"), [("0.4", 0.4), ("3", 3.0), ("120", 5.0)])
def test_retry_after_is_honoured_up_to_the_wait_cap(monkeypatch, header, expected):
    hook = RunComfyHook(token=TOKEN, base_url=BASE, retry_max_wait_s=5, max_retries=1)
    respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": header}),
            httpx.Response(200, json={"status": "in_queue"}),
        ]
    )
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)  # tenacity sleeps through time.sleep
    hook.get_status(RID)
    assert waits == [pytest.approx(expected)]


@respx.mock
def test_rate_limit_error_after_budget_carries_retry_after(hook):
    respx.get(STATUS).mock(return_value=httpx.Response(429, headers={"Retry-After": "0"}))
    with pytest.raises(RunComfyRateLimitedError) as info:
        hook.get_status(RID)
    assert info.value.retry_after_s == 0.0


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("peer closed"),
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(504),
        httpx.Response(200, text="{not json"),
        httpx.Response(200, json={"no_request_id": True}),
    ],
)
@respx.mock
def test_submit_is_never_retried_after_an_ambiguous_failure(hook, request_, failure):
    route = respx.post(SUBMIT).mock(side_effect=[failure, submitted()])
    with pytest.raises(RunComfySubmitUnknownError, match="not resubmitted"):
        hook.submit(request_)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("syn lost"),
        httpx.Response(429),
        httpx.Response(503),
    ],
)
@respx.mock
def test_submit_is_retried_when_it_provably_did_not_reach_the_server(hook, request_, failure):
    route = respx.post(SUBMIT).mock(side_effect=[failure, submitted()])
    assert hook.submit(request_).request_id == RID
    assert route.call_count == 2


@respx.mock
def test_submit_4xx_is_a_clear_permanent_error(hook, request_):
    respx.post(SUBMIT).mock(
        return_value=httpx.Response(
            422, json={"detail": [{"loc": ["body", "seed"]}], "error_message": "seed: bad"}
        )
    )
    with pytest.raises(RunComfyBadRequestError, match="seed: bad"):
        hook.submit(request_)


@respx.mock
def test_error_code_in_a_2xx_body_is_an_error(hook):
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json={"error_code": 404001, "error_message": "ResourceNotFound"})
    )
    with pytest.raises(RunComfyNotFoundError, match="ResourceNotFound"):
        hook.get_status(RID)


@respx.mock
def test_unknown_states_are_not_crashes(hook):
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "defrosting", "extra": {"x": 1}}))
    status = hook.get_status(RID)
    assert status.status is JobState.UNKNOWN
    assert status.status_text == "defrosting"


@respx.mock
async def test_async_twins_share_the_same_behaviour(request_):
    hook = RunComfyHook(token=TOKEN, base_url=BASE, retry_max_wait_s=0.01)
    respx.post(SUBMIT).mock(return_value=submitted())
    respx.get(STATUS).mock(
        side_effect=[httpx.Response(503), httpx.Response(200, json={"status": "in_queue"})]
    )
    respx.get(RESULT).mock(
        return_value=httpx.Response(
            200, json={"status": "failed", "error": {"type": "model_error", "message": "boom"}}
        )
    )
    respx.post(CANCEL).mock(return_value=httpx.Response(200, json={"outcome": "cancelled"}))
    assert (await hook.asubmit(request_)).request_id == RID
    assert (await hook.aget_status(RID)).status is JobState.IN_QUEUE
    assert (await hook.aget_result(RID)).error_message == "model_error: boom"
    assert (await hook.acancel(RID)).cancelled
    respx.post(SUBMIT).mock(side_effect=httpx.ReadTimeout("lost"))
    with pytest.raises(RunComfySubmitUnknownError):
        await hook.asubmit(request_)


async def test_one_async_client_is_shared_per_loop_and_settings():
    from airflow_provider_nanobanana.hooks.runcomfy import shared_async_client

    a = RunComfySettings(token="t1", base_url=BASE)
    assert await shared_async_client(a) is await shared_async_client(
        RunComfySettings(token="t1", base_url=BASE)
    )
    assert await shared_async_client(a) is not await shared_async_client(
        RunComfySettings(token="t2", base_url=BASE)
    )


@respx.mock
def test_the_token_never_appears_in_reprs_errors_or_logs(hook, request_, caplog):
    caplog.set_level(logging.DEBUG)
    respx.get(STATUS).mock(return_value=httpx.Response(401, json={"error_message": "bad token"}))
    respx.post(SUBMIT).mock(side_effect=httpx.ReadTimeout("lost"))
    errors = []
    for call in (lambda: hook.get_status(RID), lambda: hook.submit(request_)):
        with pytest.raises(RunComfyAPIError) as info:
            call()
        errors.append(info.value)
    seen = " ".join(
        [repr(hook), str(hook), repr(hook.settings), caplog.text, *map(str, errors), *map(repr, errors)]
    )
    assert TOKEN not in seen


def test_connection_settings_from_an_airflow_connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RC_TEST",
        json.dumps(
            {
                "conn_type": "runcomfy",
                "host": "http://127.0.0.1:9999",
                "password": TOKEN,
                "extra": {"allow_insecure_inputs": "true", "read_timeout_s": 5, "max_retries": 2},
            }
        ),
    )
    settings = RunComfyHook("rc_test").settings
    assert settings.base_url == "http://127.0.0.1:9999"
    assert settings.allow_insecure_inputs is True
    assert settings.read_timeout_s == 5.0
    assert settings.max_retries == 2
    assert settings.token == TOKEN


def test_connection_without_host_uses_the_public_api(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RC_PLAIN", json.dumps({"conn_type": "runcomfy", "password": TOKEN}))
    settings = RunComfyHook("rc_plain").settings
    assert settings.base_url == "https://model-api.runcomfy.net"
    assert settings.allow_insecure_inputs is False
    assert settings.verify_tls is True


def test_missing_token_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RC_EMPTY", json.dumps({"conn_type": "runcomfy"}))
    with pytest.raises(RunComfyAuthError, match="password"):
        _ = RunComfyHook("rc_empty").settings


@pytest.mark.parametrize("bad", ["../../etc", "google//edit", "google/nano banana", ""])
def test_model_ids_cannot_escape_the_models_path(bad):
    with pytest.raises(ValueError, match="model_id"):
        model_path(bad)


@respx.mock
def test_test_connection_tells_bad_token_from_unreachable_and_never_submits(hook):
    submit = respx.post(SUBMIT).mock(return_value=submitted())
    probe = respx.get(url__regex=rf"{BASE}/v1/requests/[^/]+/status")
    probe.mock(return_value=httpx.Response(404, json={"error_message": "ResourceNotFound"}))
    assert hook.test_connection()[0] is True
    probe.mock(return_value=httpx.Response(401, json={"error_message": "UserAccountError"}))
    ok, message = hook.test_connection()
    assert not ok
    assert "token was rejected" in message
    probe.mock(side_effect=httpx.ConnectError("refused"))
    ok, message = hook.test_connection()
    assert not ok
    assert "Cannot reach" in message
    assert submit.call_count == 0


def test_a_token_given_directly_is_registered_with_the_secrets_masker(monkeypatch):
    """A connection's password is masked by Airflow's lookup; a token handed over directly is not,
    unless the hook registers it."""
    masked: list[str] = []
    monkeypatch.setattr("airflow_provider_nanobanana.hooks.runcomfy.mask_secret", masked.append)
    RunComfyHook(token="direct-token-1", base_url=BASE)
    RunComfyHook(settings=RunComfySettings(token="direct-token-2", base_url=BASE))
    assert masked == ["direct-token-1", "direct-token-2"]
