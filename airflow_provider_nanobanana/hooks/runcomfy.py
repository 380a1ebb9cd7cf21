"""RunComfy Model API hook: one request builder and one response interpreter, two transports.

Like httpx's own ``BaseClient``, everything that does not do I/O (URLs, bodies, error mapping, the
retry policy) lives in :class:`_RunComfyProtocol`; the sync and async methods differ only in
``send`` versus ``await send``.

Retry policy, decided in exactly one place (:func:`_classify_transport_error`, :meth:`_interpret`):

* status, result and cancel are idempotent: retried on connection errors, timeouts, garbled bodies,
  408/429 and 5xx, with full-jitter exponential backoff, honouring ``Retry-After``;
* submit is retried only when the request provably did not reach the server (connect error, 429,
  503). After an ambiguous failure (read timeout, dropped connection, 500/502/504, unreadable 2xx
  body) a job may exist and be billed, so :class:`RunComfySubmitUnknownError` is raised instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from airflow.sdk import BaseHook
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from airflow_provider_nanobanana import __version__
from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyAuthError,
    RunComfyBadRequestError,
    RunComfyNotFoundError,
    RunComfyRateLimitedError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.models import (
    DEFAULT_MODEL_ID,
    CancelResponse,
    EditRequest,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
    describe_error,
    validate_request_id,
)
from airflow_provider_nanobanana.redaction import mask_secret, redact_httpx_logs

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"

_MODEL_ID_SEGMENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Endpoint(str, Enum):
    SUBMIT = "submit"
    STATUS = "status"
    RESULT = "result"
    CANCEL = "cancel"


@dataclass(frozen=True)
class RunComfySettings:
    """Everything a client needs, read once from a connection (or given directly, for scripts).

    The token is excluded from ``repr`` and equality-derived output; it only ever leaves this object
    as an ``Authorization`` header.
    """

    token: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    max_retries: int = 4
    retry_max_wait_s: float = 30.0
    retry_total_s: float = 120.0
    allow_insecure_inputs: bool = False
    verify_tls: bool = True
    output_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.token:
            raise RunComfyAuthError("no RunComfy API token: set the connection's password (API token)")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        mask_secret(self.token)

    @classmethod
    def from_connection(cls, conn: Any) -> RunComfySettings:
        """Build settings from an Airflow connection: password = token, host = optional base URL."""
        extra = _connection_extra(conn)
        base_url = _base_url_from_connection(conn)
        known = {
            "connect_timeout_s": float,
            "read_timeout_s": float,
            "max_retries": int,
            "retry_max_wait_s": float,
            "retry_total_s": float,
        }
        kwargs: dict[str, Any] = {name: cast(extra[name]) for name, cast in known.items() if name in extra}
        for flag in ("allow_insecure_inputs", "verify_tls"):
            if flag in extra:
                kwargs[flag] = _as_bool(extra[flag], flag)
        if "output_hosts" in extra:
            hosts = extra["output_hosts"]
            kwargs["output_hosts"] = tuple(hosts.split(",") if isinstance(hosts, str) else hosts)
        return cls(token=conn.password or "", base_url=base_url, **kwargs)

    @property
    def allowed_output_hosts(self) -> tuple[str, ...]:
        """Hosts outputs may be downloaded from: the API's own host, RunComfy's CDNs, and any extras."""
        api_host = urlsplit(self.base_url).hostname or ""
        return (api_host, "*.runcomfy.net", "*.runcomfy.com", *self.output_hosts)

    def client_kwargs(self) -> dict[str, Any]:
        """Shared by ``httpx.Client`` and ``httpx.AsyncClient`` so both read the settings the same way."""
        return {
            "base_url": self.base_url,
            "headers": {
                "Authorization": f"Bearer {self.token}",
                "User-Agent": f"airflow-provider-nanobanana/{__version__}",
                "Accept": "application/json",
            },
            "timeout": httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            "verify": self.verify_tls,
            "follow_redirects": False,
        }

    @property
    def cache_key(self) -> tuple[object, ...]:
        """Identity for sharing one async client; holds a digest of the token, never the token."""
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        return (self.base_url, digest, self.connect_timeout_s, self.read_timeout_s, self.verify_tls)


_UI_PREFIX = "extra__runcomfy__"


def _connection_extra(conn: Any) -> dict[str, Any]:
    """The connection's extras; keys saved by the UI form (``extra__runcomfy__x``) count as ``x``."""
    extra = getattr(conn, "extra_dejson", None)
    if extra is None:
        raw = getattr(conn, "extra", None) or "{}"
        extra = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return {key.removeprefix(_UI_PREFIX): value for key, value in extra.items() if value not in (None, "")}


def _base_url_from_connection(conn: Any) -> str:
    host = (conn.host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" in host:
        return host
    scheme = conn.schema or "https"
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def _as_bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"connection extra {name!r} must be true or false, got {value!r}")


def model_path(model_id: str) -> str:
    """``/v1/models/{model_id}``; the id keeps its slashes but no segment may be empty or ``..``."""
    segments = model_id.split("/")
    if not all(s and s not in (".", "..") and set(s) <= _MODEL_ID_SEGMENT for s in segments):
        raise ValueError(f"model_id {model_id!r} is not a RunComfy model id like {DEFAULT_MODEL_ID!r}")
    return "/v1/models/" + "/".join(quote(s) for s in segments)


@dataclass(frozen=True)
class _Call:
    """One logical API call: what to send and how a response is to be read."""

    endpoint: Endpoint
    method: str
    path: str
    response_model: type[BaseModel]
    body: Mapping[str, Any] | None = None
    request_id: str | None = None

    @property
    def is_submit(self) -> bool:
        return self.endpoint is Endpoint.SUBMIT


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (RunComfyTransientError, RunComfyRateLimitedError)) and not isinstance(
        exc, RunComfySubmitUnknownError
    )


def _classify_transport_error(call: _Call, exc: httpx.HTTPError) -> RunComfyAPIError:
    """Map an httpx failure to a typed error; decides whether a submit may have reached the server."""
    never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    what = f"{call.method} {call.path}: {type(exc).__name__}"
    if call.is_submit and not never_sent:
        return RunComfySubmitUnknownError(
            f"{what} after the request was sent; a job may have been created and billed, so it is not "
            "resubmitted automatically. Check your RunComfy requests before running this again."
        )
    return RunComfyTransientError(what, request_id=call.request_id)


class _RunComfyProtocol:
    """Request building, response interpretation and retry policy; no I/O."""

    settings: RunComfySettings

    # -- request building -------------------------------------------------------------------------
    def _submit_call(self, request: EditRequest, model_id: str) -> _Call:
        body = request.model_dump(mode="json")
        return _Call(Endpoint.SUBMIT, "POST", model_path(model_id), SubmitResponse, body=body)

    def _status_call(self, request_id: str) -> _Call:
        return self._request_call(Endpoint.STATUS, "GET", request_id, StatusResponse)

    def _result_call(self, request_id: str) -> _Call:
        return self._request_call(Endpoint.RESULT, "GET", request_id, ResultResponse)

    def _cancel_call(self, request_id: str) -> _Call:
        return self._request_call(Endpoint.CANCEL, "POST", request_id, CancelResponse)

    @staticmethod
    def _request_call(endpoint: Endpoint, method: str, request_id: str, model: type[BaseModel]) -> _Call:
        rid = validate_request_id(request_id)
        return _Call(endpoint, method, f"/v1/requests/{rid}/{endpoint.value}", model, request_id=rid)

    @staticmethod
    def _build(client: httpx.Client | httpx.AsyncClient, call: _Call) -> httpx.Request:
        return client.build_request(call.method, call.path, json=call.body)

    # -- response interpretation ------------------------------------------------------------------
    def _interpret(self, call: _Call, response: httpx.Response) -> Any:
        """Turn a response into the call's model, or raise the one error type that fits it."""
        code = response.status_code
        payload = _json_or_none(response)
        if 200 <= code < 300:
            if not isinstance(payload, Mapping):
                raise self._garbled(call, code, "the response body is not a JSON object")
            if payload.get("error_code") not in (None, 0, "0", ""):
                # Some RunComfy endpoints report errors with HTTP 200 and a top-level error_code.
                raise _error_for_code(call, code, payload)
            try:
                return call.response_model.model_validate(dict(payload))
            except ValidationError as exc:
                fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors(include_url=False))
                raise self._garbled(call, code, f"unexpected response shape ({fields})") from None
        raise _error_for_code(call, code, payload if isinstance(payload, Mapping) else {}, response)

    @staticmethod
    def _garbled(call: _Call, code: int, why: str) -> RunComfyAPIError:
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
    def _retry_kwargs(self) -> dict[str, Any]:
        s = self.settings
        backoff = wait_random_exponential(multiplier=0.5, max=s.retry_max_wait_s)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is not None:
                return min(float(retry_after), s.retry_max_wait_s)
            return float(backoff(state))

        return {
            "retry": retry_if_exception(_retryable),
            "stop": stop_after_attempt(s.max_retries + 1) | stop_after_delay(s.retry_total_s),
            "wait": wait,
            "reraise": True,
        }


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None


def _retry_after_s(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
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


def _error_for_code(
    call: _Call, code: int, payload: Mapping[str, Any], response: httpx.Response | None = None
) -> RunComfyAPIError:
    message = _server_message(payload) or (response.reason_phrase if response is not None else "")
    where = f"{call.endpoint.value}" + (f" {call.request_id}" if call.request_id else "")
    text = f"RunComfy {where} failed: HTTP {code}" + (f": {message}" if message else "")
    error_code = str(payload.get("error_code") or "")
    status = int(error_code[:3]) if error_code[:3].isdigit() and code < 300 else code
    if status == 429:
        return RunComfyRateLimitedError(
            text, retry_after_s=_retry_after_s(response), status_code=code, request_id=call.request_id
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
            return describe_error(payload[key])[:500]
    return ""


# One AsyncClient per (event loop, settings): thousands of triggers in one triggerer share a
# connection pool and SSL context instead of paying ~32 ms CPU and ~0.85 MB each for their own.
_ASYNC_CLIENTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], httpx.AsyncClient]
]
_ASYNC_CLIENTS = weakref.WeakKeyDictionary()


def shared_async_client(settings: RunComfySettings) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    clients = _ASYNC_CLIENTS.setdefault(loop, {})
    client = clients.get(settings.cache_key)
    if client is None or client.is_closed:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        redact_httpx_logs()
        client = clients[settings.cache_key] = httpx.AsyncClient(limits=limits, **settings.client_kwargs())
    return client


class RunComfyHook(BaseHook, _RunComfyProtocol):
    """Talks to RunComfy's Model API with the ``runcomfy`` connection (password = API token).

    :param runcomfy_conn_id: connection id; ignored when ``token`` is given.
    :param token: API token, for use without an Airflow connection (scripts, tests).
    :param base_url: API base URL when used without a connection.
    :param model_id: model to submit to.
    """

    conn_name_attr = "runcomfy_conn_id"
    default_conn_name = "runcomfy_default"
    conn_type = "runcomfy"
    hook_name = "RunComfy"

    def __init__(
        self,
        runcomfy_conn_id: str = default_conn_name,
        *,
        token: str | None = None,
        base_url: str | None = None,
        model_id: str = DEFAULT_MODEL_ID,
        settings: RunComfySettings | None = None,
        **settings_overrides: Any,
    ) -> None:
        super().__init__()
        self.runcomfy_conn_id = runcomfy_conn_id
        self.model_id = model_id
        model_path(model_id)
        if settings is None and token is not None:
            settings = RunComfySettings(token=token, base_url=base_url or DEFAULT_BASE_URL)
        self._settings = replace(settings, **settings_overrides) if settings else None
        self._overrides = settings_overrides
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(runcomfy_conn_id={self.runcomfy_conn_id!r}, model_id={self.model_id!r})"
        )

    # -- settings ---------------------------------------------------------------------------------
    @property
    def settings(self) -> RunComfySettings:  # type: ignore[override]
        if self._settings is None:
            conn = self.get_connection(self.runcomfy_conn_id)
            self._settings = replace(RunComfySettings.from_connection(conn), **self._overrides)
        return self._settings

    async def aget_settings(self) -> RunComfySettings:
        """Like :attr:`settings` but with the non-blocking connection lookup, for triggers."""
        if self._settings is None:
            conn = await self.aget_connection(self.runcomfy_conn_id)
            self._settings = replace(RunComfySettings.from_connection(conn), **self._overrides)
        return self._settings

    def get_conn(self) -> httpx.Client:
        """The pooled sync client (created on first use, closed by :meth:`close`)."""
        if self._client is None or self._client.is_closed:
            redact_httpx_logs()
            self._client = httpx.Client(**self.settings.client_kwargs())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def request_url(self, request_id: str, endpoint: Endpoint = Endpoint.STATUS) -> str:
        """Public URL of a request's endpoint (for links and logs; carries no secret)."""
        return f"{self.settings.base_url}/v1/requests/{validate_request_id(request_id)}/{endpoint.value}"

    # -- sync API ---------------------------------------------------------------------------------
    def submit(self, request: EditRequest) -> SubmitResponse:
        return self._execute(self._submit_call(request, self.model_id))

    def get_status(self, request_id: str) -> StatusResponse:
        return self._execute(self._status_call(request_id))

    def get_result(self, request_id: str) -> ResultResponse:
        return self._execute(self._result_call(request_id))

    def cancel(self, request_id: str) -> CancelResponse:
        return self._execute(self._cancel_call(request_id))

    def _execute(self, call: _Call) -> Any:
        client = self.get_conn()
        for attempt in Retrying(**self._retry_kwargs()):
            with attempt:
                try:
                    response = client.send(self._build(client, call))
                except httpx.HTTPError as exc:
                    raise _classify_transport_error(call, exc) from None
                return self._interpret(call, response)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    # -- async API --------------------------------------------------------------------------------
    async def asubmit(self, request: EditRequest) -> SubmitResponse:
        return await self._aexecute(self._submit_call(request, self.model_id))

    async def aget_status(self, request_id: str) -> StatusResponse:
        return await self._aexecute(self._status_call(request_id))

    async def aget_result(self, request_id: str) -> ResultResponse:
        return await self._aexecute(self._result_call(request_id))

    async def acancel(self, request_id: str) -> CancelResponse:
        return await self._aexecute(self._cancel_call(request_id))

    async def _aexecute(self, call: _Call) -> Any:
        await self.aget_settings()
        client = shared_async_client(self.settings)
        async for attempt in AsyncRetrying(**self._retry_kwargs()):
            with attempt:
                try:
                    response = await client.send(self._build(client, call))
                except httpx.HTTPError as exc:
                    raise _classify_transport_error(call, exc) from None
                return self._interpret(call, response)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    # -- connection test --------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """Check host and token with a status lookup of a request id that cannot exist.

        No job is submitted, so testing a connection never costs money. A 404 means the server
        accepted the token and simply knows no such request.
        """
        probe = "airflow-connection-test"
        try:
            self.get_status(probe)
        except RunComfyNotFoundError:
            return True, f"Connected to {self.settings.base_url}; the API token was accepted."
        except RunComfyAuthError as exc:
            return (
                False,
                f"The API token was rejected (HTTP {exc.status_code}). Check the connection password.",
            )
        except RunComfyTransientError as exc:
            return False, f"Cannot reach {self.settings.base_url}: {exc}"
        except RunComfyAPIError as exc:
            return False, f"Unexpected answer from {self.settings.base_url}: {exc}"
        except ValueError as exc:
            return False, str(exc)
        return True, f"Connected to {self.settings.base_url}; the API token was accepted."
