"""RunComfy Model API hook: the connection, and the sync and async sends of one protocol.

Request building, answer reading and the retry policy live in
:mod:`~airflow_provider_nanobanana.hooks.protocol`; the settings a connection is read into in
:mod:`~airflow_provider_nanobanana.hooks.settings`; what one event loop shares (a client, a
connection lookup) in :mod:`~airflow_provider_nanobanana.hooks.per_loop`. This module is the part
Airflow sees: the hook class and its sends.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import httpx
from airflow.sdk import BaseHook
from tenacity import AsyncRetrying, Retrying

from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfyAuthError,
    RunComfyNotFoundError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.per_loop import SETTINGS_TTL_S, settings_of_loop, shared_async_client
from airflow_provider_nanobanana.hooks.protocol import (
    MAX_ANSWER_BYTES,
    Call,
    Endpoint,
    RunComfyProtocol,
    Seen,
)
from airflow_provider_nanobanana.hooks.settings import DEFAULT_BASE_URL, RunComfySettings, model_path
from airflow_provider_nanobanana.models import (
    DEFAULT_MODEL_ID,
    CancelResponse,
    EditRequest,
    JobState,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
    validate_request_id,
)
from airflow_provider_nanobanana.redaction import mask_secret, redact_httpx_logs
from airflow_provider_nanobanana.spend.pricing import BalanceResponse, ModelInfo

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_ANSWER_BYTES",
    "SETTINGS_TTL_S",
    "Endpoint",
    "RunComfyHook",
    "RunComfySettings",
    "model_path",
    "shared_async_client",
]

#: Cleanup on kill or timeout is one best-effort exchange; it must never hang a worker or a triggerer.
CANCEL_TIMEOUT_S = 10.0


class RunComfyHook(BaseHook, RunComfyProtocol):
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

            self._settings = self._with_overrides(await settings_of_loop(conn_id, lookup))
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

    def get_model(self) -> ModelInfo:
        """The model's metadata; only its list price is read (budget pre-flight)."""
        return self._execute(self._model_call(self.model_id))

    def get_balance(self) -> BalanceResponse | None:
        """The account balance from the core API; None when the connection sets no ``balance_url``."""
        call = self._balance_call()
        return None if call is None else self._execute(call)

    def _execute(self, call: Call, *, total_s: float | None = None) -> Any:
        client = self.get_conn()
        for attempt in Retrying(**self._retry_kwargs(total_s)):
            with attempt:
                return self._exchange(client, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _exchange(self, client: httpx.Client, call: Call) -> Any:
        """One request and its whole answer, streamed raw through a :class:`BodyReader`."""
        deadline = time.monotonic() + self._exchange_s(call)
        seen = Seen()
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

    async def aget_model(self) -> ModelInfo:
        return await self._aexecute(self._model_call(self.model_id))

    async def aget_balance(self) -> BalanceResponse | None:
        await self.aget_settings()
        call = self._balance_call()
        return None if call is None else await self._aexecute(call)

    async def _aexecute(self, call: Call) -> Any:
        await self.aget_settings()
        # GETs (idempotent) go through the cheaper aiohttp transport, POSTs never do (per_loop.py).
        client = await shared_async_client(self.settings, method=call.method)
        async for attempt in AsyncRetrying(**self._retry_kwargs()):
            with attempt:
                return await self._aexchange(client, call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _aexchange(self, client: httpx.AsyncClient, call: Call) -> Any:
        """:meth:`_exchange` on the event loop, where the deadline is exact (``wait_for``)."""
        deadline = time.monotonic() + self._exchange_s(call)
        seen = Seen()

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
