"""The RunComfy API without I/O: what to send, how to read the answer, what to retry.

Like httpx's own ``BaseClient``, everything that does not do I/O (URLs, bodies, error mapping, the
retry policy) lives in :class:`RunComfyProtocol`; the hook's sync and async methods differ only in
``send`` versus ``await send``.

Retry policy, decided in exactly one place (:func:`classify_transport_error`, :meth:`_interpret`):

* status, result and cancel are idempotent: retried on connection errors, timeouts, garbled bodies,
  408/429 and 5xx, with full-jitter exponential backoff, honouring ``Retry-After``;
* submit is retried only when the request provably did not reach the server (connect error, 429,
  503). After an ambiguous failure (read timeout, dropped connection, 500/502/504, unreadable 2xx
  body, any exception nobody foresaw) a job may exist and be billed, so
  :class:`RunComfySubmitUnknownError` is raised instead.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from airflow_provider_nanobanana.bodies import BodyReader, BodyRefused
from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyAuthError,
    RunComfyBadRequestError,
    RunComfyNotFoundError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.settings import RunComfySettings, model_path
from airflow_provider_nanobanana.models import (
    CancelResponse,
    EditRequest,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
    describe_error,
    validate_request_id,
)
from airflow_provider_nanobanana.redaction import REDACTED, redact_text
from airflow_provider_nanobanana.spend.pricing import BalanceResponse, ModelInfo

#: API answers are small JSON documents; anything larger (after decoding) is refused unread.
MAX_ANSWER_BYTES = 1 << 20


class Endpoint(str, Enum):
    SUBMIT = "submit"
    STATUS = "status"
    RESULT = "result"
    CANCEL = "cancel"
    #: ``GET /v1/models/{id}`` (the list price) and ``GET {balance_url}/balance``: budget pre-flight.
    MODEL = "model"
    BALANCE = "balance"


@dataclass(frozen=True)
class Call:
    """One logical API call: what to send and how a response is to be read."""

    endpoint: Endpoint
    method: str
    path: str
    response_model: type[BaseModel]
    body: Mapping[str, Any] | None = None
    request_id: str | None = None
    params: Mapping[str, str] | None = None

    @property
    def is_submit(self) -> bool:
        return self.endpoint is Endpoint.SUBMIT


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RunComfyTransientError, RunComfyRateLimitedError)) and not isinstance(
        exc, RunComfySubmitUnknownError
    )


def classify_transport_error(call: Call, exc: BaseException) -> RunComfyAPIError:
    """Map any failure of an exchange to a typed error; decides whether a submit may have reached
    the server. Only a connection that was never made proves it did not: after a POST has left the
    process, *any* exception (a timeout, a reset, a parser crash nobody foresaw) is ambiguous."""
    never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    what = f"{call.method} {call.path}: {type(exc).__name__}"
    if call.is_submit and not never_sent:
        return RunComfySubmitUnknownError(
            f"{what} after the request was sent; a job may have been created and billed, so it is not "
            "resubmitted automatically. Check your RunComfy requests before running this again."
        )
    return RunComfyTransientError(what, request_id=call.request_id)


class RunComfyProtocol:
    """Request building, response interpretation and retry policy; no I/O."""

    settings: RunComfySettings

    # -- request building -------------------------------------------------------------------------
    def _submit_call(self, request: EditRequest, model_id: str) -> Call:
        body = request.model_dump(mode="json")
        return Call(Endpoint.SUBMIT, "POST", model_path(model_id), SubmitResponse, body=body)

    def _status_call(self, request_id: str) -> Call:
        return self._request_call(Endpoint.STATUS, "GET", request_id, StatusResponse)

    def _result_call(self, request_id: str) -> Call:
        # ``include_cost``: the answer adds ``cost`` (USD), recorded in manifests and the spend ledger.
        call = self._request_call(Endpoint.RESULT, "GET", request_id, ResultResponse)
        return replace(call, params={"include_cost": "true"})

    def _model_call(self, model_id: str) -> Call:
        return Call(Endpoint.MODEL, "GET", model_path(model_id), ModelInfo)

    def _balance_call(self) -> Call | None:
        """``GET {balance_url}/balance`` on RunComfy's core API; None when no ``balance_url`` is set."""
        url = self.settings.balance_url
        return None if url is None else Call(Endpoint.BALANCE, "GET", f"{url}/balance", BalanceResponse)

    def _cancel_call(self, request_id: str) -> Call:
        return self._request_call(Endpoint.CANCEL, "POST", request_id, CancelResponse)

    @staticmethod
    def _request_call(endpoint: Endpoint, method: str, request_id: str, model: type[BaseModel]) -> Call:
        rid = validate_request_id(request_id)
        return Call(endpoint, method, f"/v1/requests/{rid}/{endpoint.value}", model, request_id=rid)

    def _build(self, client: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        timeout = client.timeout
        if call.is_submit:
            timeout = httpx.Timeout(self.settings.submit_read_timeout_s, connect=timeout.connect)
        return client.build_request(
            call.method, call.path, json=call.body, params=call.params, timeout=timeout
        )

    def _exchange_s(self, call: Call) -> float:
        s = self.settings
        return s.submit_exchange_s if call.is_submit else s.exchange_timeout_s

    def _reader(self, response: httpx.Response, deadline_monotonic: float) -> BodyReader:
        encoding = response.headers.get("Content-Encoding", "")
        return BodyReader(MAX_ANSWER_BYTES, deadline_monotonic, encoding)

    @contextlib.contextmanager
    def _typed_errors(self, call: Call, seen: Seen) -> Iterator[None]:
        """Whatever goes wrong inside one exchange leaves it as exactly one typed error."""
        try:
            yield
        except RunComfyAPIError:
            raise
        except BodyRefused as exc:
            raise self._garbled(call, seen.status_code, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - see classify_transport_error: any failure is typed
            raise classify_transport_error(call, exc) from None

    # -- response interpretation ------------------------------------------------------------------
    def _interpret(self, call: Call, response: httpx.Response, body: bytes) -> Any:
        """Turn an answer into the call's model, or raise the one error type that fits it."""
        code = response.status_code
        payload = _json_or_none(body)
        answer = _Answer(code, response.reason_phrase, response.headers.get("Retry-After"), self._scrub)
        if 200 <= code < 300:
            if not isinstance(payload, Mapping):
                raise self._garbled(call, code, "the response body is not a JSON object")
            if payload.get("error_code") not in (None, 0, "0", ""):
                # Some RunComfy endpoints report errors with HTTP 200 and a top-level error_code.
                raise _error_for_code(call, answer, payload)
            try:
                return call.response_model.model_validate(dict(payload))
            except ValidationError as exc:
                fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors(include_url=False))
                raise self._garbled(call, code, f"unexpected response shape ({fields[:300]})") from None
        raise _error_for_code(call, answer, payload if isinstance(payload, Mapping) else {})

    def _scrub(self, text: str) -> str:
        """Server text as it may be shown: credentials blanked, and this hook's token never echoed."""
        token = self.settings.token
        return redact_text(text.replace(token, REDACTED) if token else text)

    @staticmethod
    def _garbled(call: Call, code: int | None, why: str) -> RunComfyAPIError:
        if call.is_submit:
            return RunComfySubmitUnknownError(
                f"submit answered HTTP {code} but {why}; a job may exist and be billed, so it is not "
                "resubmitted automatically",
                status_code=code,
            )
        return RunComfyTransientError(
            f"{call.endpoint.value} answered HTTP {code} but {why}",
            status_code=code,
            request_id=call.request_id,
        )

    # -- retry policy -----------------------------------------------------------------------------
    def _retry_kwargs(self, total_s: float | None = None) -> dict[str, Any]:
        s = self.settings
        total_s = s.retry_total_s if total_s is None else min(total_s, s.retry_total_s)
        backoff = wait_random_exponential(multiplier=0.5, max=s.retry_max_wait_s)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is not None:
                return min(float(retry_after), s.retry_max_wait_s)
            return float(backoff(state))

        return {
            "retry": retry_if_exception(_retryable),
            "stop": stop_after_attempt(s.max_retries + 1) | stop_after_delay(total_s),
            "wait": wait,
            "reraise": True,
        }


def _json_or_none(body: bytes) -> Any:
    """The decoded JSON, or None for anything that is not JSON (whatever the parser raises: a deeply
    nested body raises ``RecursionError``, not a decode error)."""
    try:
        return json.loads(body)
    except Exception:  # noqa: BLE001 - an unreadable answer is garbled, never a crash
        return None


@dataclass(frozen=True)
class _Answer:
    """What error mapping needs from a response besides its body."""

    status_code: int
    reason_phrase: str
    retry_after: str | None
    scrub: Callable[[str], str]


@dataclass
class Seen:
    """The status of the answer being read, for an error raised while its body streams in."""

    status_code: int | None = None


def _retry_after_s(raw: str | None) -> float | None:
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(raw)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    from email.utils import parsedate_to_datetime

    with contextlib.suppress(TypeError, ValueError):
        import datetime as dt

        return max(0.0, (parsedate_to_datetime(raw) - dt.datetime.now(dt.timezone.utc)).total_seconds())
    return None


_PERMANENT_BY_STATUS: dict[int, type[RunComfyAPIError]] = {
    400: RunComfyBadRequestError,
    402: RunComfyBadRequestError,
    401: RunComfyAuthError,
    403: RunComfyAuthError,
    404: RunComfyNotFoundError,
    410: RunComfyNotFoundError,
    422: RunComfyBadRequestError,
}


def _error_for_code(call: Call, answer: _Answer, payload: Mapping[str, Any]) -> RunComfyAPIError:
    code = answer.status_code
    message = answer.scrub(_server_message(payload) or answer.reason_phrase)[:500]
    where = f"{call.endpoint.value}" + (f" {call.request_id}" if call.request_id else "")
    text = f"RunComfy {where} failed: HTTP {code}" + (f": {message}" if message else "")
    error_code = str(payload.get("error_code") or "")
    status = int(error_code[:3]) if error_code[:3].isdigit() and code < 300 else code
    if status == 429:
        return RunComfyRateLimitedError(
            text,
            retry_after_s=_retry_after_s(answer.retry_after),
            status_code=code,
            request_id=call.request_id,
        )
    if status in _PERMANENT_BY_STATUS:
        return _PERMANENT_BY_STATUS[status](text, status_code=code, request_id=call.request_id)
    if call.is_submit and (status >= 500 or code < 300) and status != 503:
        return RunComfySubmitUnknownError(
            text + "; a job may have been created and billed, so it is not resubmitted automatically",
            status_code=code,
        )
    if status == 408 or status >= 500 or code < 300:
        return RunComfyTransientError(text, status_code=code, request_id=call.request_id)
    return RunComfyAPIError(text, status_code=code, request_id=call.request_id)


def _server_message(payload: Mapping[str, Any]) -> str:
    for key in ("error_message", "message", "error", "detail"):
        if payload.get(key):
            return describe_error(payload[key])[:2000]
    return ""
