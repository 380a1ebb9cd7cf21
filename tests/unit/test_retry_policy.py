"""The RunComfy retry policy: one decision per error class, attached by default on Airflow 3.3+."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from airflow_provider_nanobanana import retry_policy as rp
from airflow_provider_nanobanana._compat import HAS_RETRY_POLICY
from airflow_provider_nanobanana.exceptions import (
    ArchiveError,
    BudgetExceededError,
    InvalidEditRequestError,
    RunComfyAPIError,
    RunComfyAuthError,
    RunComfyBadRequestError,
    RunComfyError,
    RunComfyJobCancelledError,
    RunComfyJobFailedError,
    RunComfyJobTimeoutError,
    RunComfyNotFoundError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.retry_policy import Choice, RunComfyRetryPolicy

FAIL, RETRY, DEFAULT = Choice.FAIL, Choice.RETRY, Choice.DEFAULT

CASES = [
    pytest.param(RunComfySubmitUnknownError("lost answer"), FAIL, id="ambiguous-submit"),
    pytest.param(InvalidEditRequestError("num_images: 1..4"), FAIL, id="invalid-input"),
    pytest.param(RunComfyBadRequestError("HTTP 422", status_code=422), FAIL, id="rejected-422"),
    pytest.param(RunComfyAuthError("HTTP 401", status_code=401), FAIL, id="auth-401"),
    pytest.param(RunComfyAuthError("HTTP 403", status_code=403), FAIL, id="auth-403"),
    pytest.param(RunComfyNotFoundError("HTTP 404", status_code=404), FAIL, id="not-found"),
    pytest.param(RunComfyRateLimitedError("HTTP 429", retry_after_s=None), RETRY, id="rate-limit"),
    pytest.param(RunComfyTransientError("HTTP 503", status_code=503), RETRY, id="transient-5xx"),
    pytest.param(httpx.ConnectError("refused"), RETRY, id="httpx-connect"),
    pytest.param(ConnectionResetError("reset"), RETRY, id="connection-reset"),
    pytest.param(TimeoutError("slow"), RETRY, id="timeout-os"),
    pytest.param(RunComfyJobTimeoutError("not done", request_id="r1"), DEFAULT, id="job-timeout"),
    pytest.param(RunComfyJobCancelledError("cancelled", request_id="r1"), FAIL, id="job-cancelled"),
    pytest.param(RunComfyJobFailedError("refused", request_id="r1"), FAIL, id="job-refused"),
    pytest.param(RunComfyAPIError("HTTP 409", status_code=409), DEFAULT, id="other-api-error"),
    pytest.param(ArchiveError("2 outputs missing"), DEFAULT, id="archive"),
    pytest.param(BudgetExceededError("projected $4.00 > max_spend_usd $1.00"), FAIL, id="budget"),
    pytest.param(RunComfyError("trigger error event"), DEFAULT, id="generic"),
    pytest.param(RuntimeError("bug"), DEFAULT, id="unknown"),
]


@pytest.mark.parametrize(("exc", "expected"), CASES)
def test_each_error_class_gets_its_decision(exc, expected):
    choice = RunComfyRetryPolicy().choose(exc)
    assert choice.action is expected
    assert choice.reason  # always explained in the task log


def test_a_rate_limit_waits_the_servers_retry_after():
    choice = RunComfyRetryPolicy().choose(RunComfyRateLimitedError("HTTP 429", retry_after_s=90.0))
    assert (choice.action, choice.delay_s) == (RETRY, 90.0)
    assert "90s" in choice.reason


def test_retry_after_is_capped_and_never_negative():
    policy = RunComfyRetryPolicy(max_retry_after_s=600)
    assert policy.choose(RunComfyRateLimitedError("x", retry_after_s=86400.0)).delay_s == 600
    assert policy.choose(RunComfyRateLimitedError("x", retry_after_s=-5.0)).delay_s == 0.0


def test_without_retry_after_the_tasks_own_delay_applies():
    assert RunComfyRetryPolicy().choose(RunComfyRateLimitedError("x")).delay_s is None
    assert RunComfyRetryPolicy().choose(RunComfyTransientError("x")).delay_s is None


def test_refused_jobs_retry_only_when_the_user_says_so():
    refused = RunComfyJobFailedError("safety filter", request_id="r9")
    assert RunComfyRetryPolicy(retry_refused_jobs=True).choose(refused).action is RETRY
    # ... and only refusals: a cancelled job or an ambiguous submit still fails.
    lenient = RunComfyRetryPolicy(retry_refused_jobs=True)
    assert lenient.choose(RunComfyJobCancelledError("c", request_id="r9")).action is FAIL
    assert lenient.choose(RunComfySubmitUnknownError("lost")).action is FAIL


def test_the_reason_names_the_request_but_never_the_servers_text():
    exc = RunComfyBadRequestError("HTTP 400: token sk-live-SECRET rejected", request_id="req-7")
    reason = RunComfyRetryPolicy().choose(exc).reason
    assert "req-7" in reason
    assert "SECRET" not in reason


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "60"])
def test_max_retry_after_is_checked_at_parse_time(bad):
    with pytest.raises(ValueError, match="max_retry_after_s"):
        RunComfyRetryPolicy(max_retry_after_s=bad)


def test_serialize_round_trips():
    policy = RunComfyRetryPolicy(retry_refused_jobs=True, max_retry_after_s=120)
    assert RunComfyRetryPolicy.deserialize(policy.serialize()) == policy
    assert "retry_refused_jobs=True" in repr(policy)


# -- Airflow 3.3+: the decision Airflow's task runner receives ----------------------------------

needs_retry_policy = pytest.mark.skipif(not HAS_RETRY_POLICY, reason="Airflow < 3.3 has no retry_policy")


@needs_retry_policy
def test_evaluate_returns_airflows_decision():
    from airflow.sdk.definitions.retry_policy import RetryAction, RetryPolicy

    policy = RunComfyRetryPolicy()
    assert isinstance(policy, RetryPolicy)
    decision = policy.evaluate(RunComfyRateLimitedError("x", retry_after_s=30), try_number=1, max_tries=3)
    assert decision.action is RetryAction.RETRY
    assert decision.retry_delay == timedelta(seconds=30)
    fail = policy.evaluate(RunComfyAuthError("401"), try_number=1, max_tries=3)
    assert (fail.action, fail.retry_delay) == (RetryAction.FAIL, None)
    assert policy.evaluate(RuntimeError(), try_number=1, max_tries=3).action is RetryAction.DEFAULT


def _edit(**kw):
    return NanoBananaEditOperator(task_id="edit", prompt="p", image_urls=["https://x/a.png"], **kw)


@needs_retry_policy
def test_the_operators_use_the_policy_by_default():
    from airflow_provider_nanobanana.batch.operator import NanoBananaBatchEditOperator

    assert isinstance(_edit().retry_policy, RunComfyRetryPolicy)
    batch = NanoBananaBatchEditOperator(
        task_id="b", prompt="p", items=["https://x/a.png"], output_s3_uri="s3://b/o/"
    )
    assert isinstance(batch.retry_policy, RunComfyRetryPolicy)


@needs_retry_policy
def test_a_users_policy_wins_even_none_and_from_default_args():
    from airflow.sdk import DAG, ExceptionRetryPolicy, RetryRule

    mine = ExceptionRetryPolicy(rules=[RetryRule(exception=ValueError)])
    assert _edit(retry_policy=mine).retry_policy is mine
    assert _edit(retry_policy=None).retry_policy is None
    assert _edit(retry_policy=RunComfyRetryPolicy(retry_refused_jobs=True)).retry_policy.retry_refused_jobs
    with DAG("d", schedule=None, default_args={"retry_policy": mine}):
        assert _edit().retry_policy is mine


def test_before_airflow_3_3_no_policy_is_attached(monkeypatch):
    """Airflow 3.1/3.2 operators take no ``retry_policy``: passing one would break the task."""
    monkeypatch.setattr(rp, "HAS_RETRY_POLICY", False)
    kwargs: dict = {"task_id": "t"}
    rp.default_retry_policy(kwargs)
    assert "retry_policy" not in kwargs
    monkeypatch.setattr(rp, "HAS_RETRY_POLICY", True)
    rp.default_retry_policy(kwargs)
    assert isinstance(kwargs["retry_policy"], RunComfyRetryPolicy)
