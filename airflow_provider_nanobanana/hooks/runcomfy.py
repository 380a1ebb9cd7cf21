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
import math
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping
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
from airflow_provider_nanobanana.bodies import ACCEPT_ENCODING, BodyReader, BodyRefused
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
    JobState,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
    describe_error,
    validate_request_id,
)
from airflow_provider_nanobanana.redaction import REDACTED, mask_secret, redact_httpx_logs, redact_text

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
#: API answers are small JSON documents; anything larger (after decoding) is refused unread.
MAX_ANSWER_BYTES = 1 << 20

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
    #: RunComfy's own clients wait 60-120 s for a submit; giving up sooner turns a slow but
    #: successful submit into an ambiguous one (paid, id unknown).
    submit_read_timeout_s: float = 120.0
    #: Total time one status/result/cancel exchange may take, connect and every read included (a
    #: server that trickles bytes must not hold a poll for minutes). A submit gets its read timeout
    #: plus the connect timeout.
    exchange_timeout_s: float = 60.0
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
        for name in ("connect_timeout_s", "read_timeout_s", "submit_read_timeout_s", "exchange_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @classmethod
    def from_connection(cls, conn: Any) -> RunComfySettings:
        """Build settings from an Airflow connection: password = token, host = optional base URL."""
        extra = _connection_extra(conn)
        base_url = _base_url_from_connection(conn)
        known = {
            "connect_timeout_s": float,
            "read_timeout_s": float,
            "submit_read_timeout_s": float,
            "exchange_timeout_s": float,
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
    def submit_exchange_s(self) -> float:
        """The longest a submit can take before it is abandoned (and so known to be over)."""
        return self.submit_read_timeout_s + self.connect_timeout_s

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
                "Accept-Encoding": ACCEPT_ENCODING,
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


def _classify_transport_error(call: _Call, exc: BaseException) -> RunComfyAPIError:
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

    def _build(self, client: httpx.Client | httpx.AsyncClient, call: _Call) -> httpx.Request:
        timeout = client.timeout
        if call.is_submit:
            timeout = httpx.Timeout(self.settings.submit_read_timeout_s, connect=timeout.connect)
        return client.build_request(call.method, call.path, json=call.body, timeout=timeout)

    def _exchange_s(self, call: _Call) -> float:
        s = self.settings
        return s.submit_exchange_s if call.is_submit else s.exchange_timeout_s

    def _reader(self, response: httpx.Response, deadline_monotonic: float) -> BodyReader:
        encoding = response.headers.get("Content-Encoding", "")
        return BodyReader(MAX_ANSWER_BYTES, deadline_monotonic, encoding)

    @contextlib.contextmanager
    def _typed_errors(self, call: _Call, seen: _Seen) -> Iterator[None]:
        """Whatever goes wrong inside one exchange leaves it as exactly one typed error."""
        try:
            yield
        except RunComfyAPIError:
            raise
        except BodyRefused as exc:
            raise self._garbled(call, seen.status_code, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - see _classify_transport_error: any failure is typed
            raise _classify_transport_error(call, exc) from None

    # -- response interpretation ------------------------------------------------------------------
    def _interpret(self, call: _Call, response: httpx.Response, body: bytes) -> Any:
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
    def _garbled(call: _Call, code: int | None, why: str) -> RunComfyAPIError:
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
class _Seen:
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


def _error_for_code(call: _Call, answer: _Answer, payload: Mapping[str, Any]) -> RunComfyAPIError:
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


#: How long a triggerer keeps one connection's settings before reading them again (a rotated token
#: is picked up within this time).
SETTINGS_TTL_S = 300.0
#: Cleanup on kill or timeout is one best-effort exchange; it must never hang a worker or a triggerer.
CANCEL_TIMEOUT_S = 10.0

_LOOP_SETTINGS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, asyncio.Task[RunComfySettings]]]
]
_LOOP_SETTINGS = weakref.WeakKeyDictionary()


async def _settings_of_loop(
    conn_id: str, lookup: Callable[[], Coroutine[Any, Any, RunComfySettings]]
) -> RunComfySettings:
    """One connection lookup per event loop, connection id and TTL, shared by every waiter.

    In a triggerer every lookup is a round trip through its supervisor process, which serves one
    request per loop pass; 10,000 triggers each resolving their own connection starve it. Waiters
    that arrive while a lookup is under way await that same lookup; a failed one is not kept.
    """
    loop = asyncio.get_running_loop()
    cache = _LOOP_SETTINGS.setdefault(loop, {})
    now = loop.time()
    entry = cache.get(conn_id)
    stale = entry is None or entry[0] <= now
    if entry is not None and entry[1].done() and entry[1].exception() is not None:
        stale = True
    if stale:
        cache[conn_id] = entry = (now + SETTINGS_TTL_S, loop.create_task(lookup()))
    assert entry is not None
    return await asyncio.shield(entry[1])


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
        if settings is not None:
            # Airflow masks a connection's password when it is looked up; a token handed over
            # directly has not been through that, so it is registered with the masker here.
            mask_secret(settings.token)
        self._overrides = settings_overrides
        self._settings = self._with_overrides(settings) if settings else None
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
            self._settings = self._with_overrides(RunComfySettings.from_connection(conn))
        return self._settings

    async def aget_settings(self) -> RunComfySettings:
        """Like :attr:`settings` but non-blocking, and looked up once per event loop (triggers)."""
        if self._settings is None:
            conn_id = self.runcomfy_conn_id

            async def lookup() -> RunComfySettings:
                return RunComfySettings.from_connection(await self.aget_connection(conn_id))

            self._settings = self._with_overrides(await _settings_of_loop(conn_id, lookup))
        return self._settings

    def _with_overrides(self, settings: RunComfySettings) -> RunComfySettings:
        return replace(settings, **self._overrides) if self._overrides else settings

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

    def _execute(self, call: _Call, *, total_s: float | None = None) -> Any:
        client = self.get_conn()
        for attempt in Retrying(**self._retry_kwargs(total_s)):
            with attempt:
                return self._exchange(client, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _exchange(self, client: httpx.Client, call: _Call) -> Any:
        """One request and its whole answer, streamed raw through a :class:`BodyReader`."""
        deadline = time.monotonic() + self._exchange_s(call)
        seen = _Seen()
        with self._typed_errors(call, seen):
            response = client.send(self._build(client, call), stream=True)
            seen.status_code = response.status_code
            try:
                reader = self._reader(response, deadline)
                for chunk in response.iter_raw():
                    reader.feed(chunk)
                body = reader.finish()
            finally:
                response.close()
            return self._interpret(call, response, body)

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
                return await self._aexchange(client, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _aexchange(self, client: httpx.AsyncClient, call: _Call) -> Any:
        """:meth:`_exchange` on the event loop, where the deadline is exact (``wait_for``)."""
        deadline = time.monotonic() + self._exchange_s(call)
        seen = _Seen()

        async def send_and_read() -> Any:
            response = await client.send(self._build(client, call), stream=True)
            seen.status_code = response.status_code
            try:
                reader = self._reader(response, deadline)
                async for chunk in response.aiter_raw():
                    reader.feed(chunk)
                body = reader.finish()
            finally:
                await response.aclose()
            return self._interpret(call, response, body)

        with self._typed_errors(call, seen):
            return await asyncio.wait_for(send_and_read(), deadline - time.monotonic())

    # -- cleanup ----------------------------------------------------------------------------------
    def cancel_if_queued(self, request_id: str) -> bool:
        """Best-effort, time-bounded cancel of a job that is still queued; True if it was cancelled.

        RunComfy can only cancel queued jobs; a running one finishes (and is billed) regardless.
        Failures are logged, never raised: this runs on kill and after a timeout.
        """
        try:
            status = self._execute(self._status_call(request_id), total_s=CANCEL_TIMEOUT_S)
            if not self._should_cancel(request_id, status):
                return False
            return self._cancelled(
                request_id, self._execute(self._cancel_call(request_id), total_s=CANCEL_TIMEOUT_S)
            )
        except RunComfyAPIError as exc:
            self.log.warning("Could not cancel RunComfy request %s: %s", request_id, exc)
            return False

    async def acancel_if_queued(self, request_id: str) -> bool:
        """:meth:`cancel_if_queued` for the event loop (trigger ``on_kill``)."""

        async def attempt() -> bool:
            if not self._should_cancel(request_id, await self.aget_status(request_id)):
                return False
            return self._cancelled(request_id, await self.acancel(request_id))

        try:
            return await asyncio.wait_for(attempt(), CANCEL_TIMEOUT_S)
        except (RunComfyAPIError, asyncio.TimeoutError) as exc:
            self.log.warning("Could not cancel RunComfy request %s: %s", request_id, exc or "timed out")
            return False

    def _should_cancel(self, request_id: str, status: StatusResponse) -> bool:
        if status.status is JobState.IN_QUEUE:
            return True
        self.log.info("Not cancelling %s: it is %s", request_id, status.status_text or status.status.value)
        return False

    def _cancelled(self, request_id: str, response: CancelResponse) -> bool:
        self.log.info("Cancel of %s: %s", request_id, response.outcome.value)
        return response.cancelled

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
