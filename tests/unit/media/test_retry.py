"""Failure classification and the tenacity retry policy of the S3 side (``media/retry.py``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import botocore.exceptions
import httpx
import pytest

from airflow_provider_nanobanana.media.content import NotAnImageError
from airflow_provider_nanobanana.media.errors import FileHostStatus, OutputFailure
from airflow_provider_nanobanana.media.retry import call_with_retries, classify


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "transient", "reason"),
    [
        (FileHostStatus(503), True, "file host answered HTTP 503"),
        (FileHostStatus(429), True, "HTTP 429"),
        (FileHostStatus(400), False, "HTTP 400"),
        (FileHostStatus(403), False, "the output URL expired"),
        (FileHostStatus(410), False, "the output URL expired"),
        (httpx.ReadError("reset"), True, "download failed: ReadError"),
        (httpx.DecodingError("bad gzip"), False, "download failed: DecodingError"),
        (NotAnImageError("not an image"), False, "not an image"),
        (client_error("SlowDown", 503), True, "S3 error: PutObject SlowDown"),
        (client_error("InternalError", 200), True, "InternalError"),
        (client_error("AccessDenied", 403), False, "AccessDenied"),
        (client_error("NoSuchBucket", 404), False, "NoSuchBucket"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), True, "S3 unreachable"),
        (botocore.exceptions.NoCredentialsError(), False, "S3 client error: NoCredentialsError"),
        (OutputFailure("as is", transient=True), True, "as is"),
    ],
)
def test_classify(exc: BaseException, transient: bool, reason: str) -> None:
    failure = classify(exc)
    assert failure is not None
    assert failure.transient is transient
    assert reason in failure.reason


def test_unknown_errors_are_not_classified() -> None:
    assert classify(KeyError("x")) is None


def test_failure_reasons_never_quote_a_signed_url() -> None:
    exc = httpx.ConnectError("cannot reach https://u:pw@cdn/x.png?X-Amz-Signature=deadbeefcafe")
    failure = classify(exc)
    assert failure is not None
    assert "deadbeefcafe" not in failure.reason
    assert ":pw@" not in failure.reason


class Flaky:
    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_transient_failures_are_retried_then_succeed(caplog: pytest.LogCaptureFixture) -> None:
    call = Flaky(FileHostStatus(503), httpx.ReadError("reset"))
    with caplog.at_level(logging.WARNING):
        assert call_with_retries(call, "output 0", max_attempts=3, base_delay_s=0.0) == "done"
    assert call.calls == 3
    assert "output 0: file host answered HTTP 503; retrying in 0.0 s (attempt 1 of 3)" in caplog.text


def test_attempts_are_bounded_and_the_last_failure_is_raised_classified() -> None:
    call = Flaky(*[FileHostStatus(503)] * 5)
    with pytest.raises(OutputFailure, match="HTTP 503") as info:
        call_with_retries(call, "output 0", max_attempts=2, base_delay_s=0.0)
    assert call.calls == 2
    assert info.value.transient
    assert isinstance(info.value.__cause__, FileHostStatus)


def test_permanent_failures_are_not_retried() -> None:
    call = Flaky(FileHostStatus(404))
    with pytest.raises(OutputFailure, match="expired") as info:
        call_with_retries(call, "output 0", max_attempts=5, base_delay_s=0.0)
    assert call.calls == 1
    assert not info.value.transient


def test_unknown_errors_propagate_unchanged_without_a_retry() -> None:
    call = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        call_with_retries(call, "output 0", max_attempts=5, base_delay_s=0.0)
    assert call.calls == 1


def test_backoff_doubles_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # what tenacity sleeps with
    call = Flaky(*[FileHostStatus(503)] * 3)
    assert call_with_retries(call, "output 0", max_attempts=4, base_delay_s=1.0) == "done"
    assert len(slept) == 3
    for delay, nominal in zip(slept, [1.0, 2.0, 4.0], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal
