"""The emulated RunComfy Model API as a Starlette (ASGI) application.

Paths, status codes and bodies follow what is known of the real service from its docs and from
RunComfy's own open-source clients: submit under ``/v1/models/{model_id}``,
then status, result and cancel under ``/v1/requests/{request_id}``, bearer auth on all of them,
and outputs as public pre-signed links under ``/files``. ``/_emulator/*`` is the test harness's
own control surface (counters, reset, runtime config, outside cancel/fail) and needs no token.

Per-request work is a dict lookup plus a heap step, and nothing is logged per request: benchmarks
poll thousands of jobs at hundreds of requests per second.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from airflow_provider_nanobanana.emulator import billing
from airflow_provider_nanobanana.emulator.bad_outputs import BadOutputs
from airflow_provider_nanobanana.emulator.config import EmulatorConfig, FaultEndpoint
from airflow_provider_nanobanana.emulator.connections import ConnectionRegistry
from airflow_provider_nanobanana.emulator.counters import Counters
from airflow_provider_nanobanana.emulator.faults import (
    DroppedConnection,
    FaultInjector,
    FaultKind,
    SlowBody,
    fault_response,
)
from airflow_provider_nanobanana.emulator.images import (
    FILE_EXTENSIONS,
    FORMAT_BY_EXTENSION,
    MEDIA_TYPES,
    PaddedFile,
    RenderCache,
    RenderSpec,
    output_size,
)
from airflow_provider_nanobanana.emulator.inputs import InputLoader
from airflow_provider_nanobanana.emulator.jobs import Job, JobStore
from airflow_provider_nanobanana.emulator.signing import UrlSigner, Verdict
from airflow_provider_nanobanana.models import EditRequest, JobState, describe_validation_error

Handler = Callable[[Request], Awaitable[Response]]

_FILE_NAME = re.compile(r"^(\d{1,2})\.([a-z]{3,4})$")
_TRUE = frozenset({"1", "true", "yes", "on"})


def error_body(status: int, code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error_code": code, "error_message": message, **extra}, status_code=status)


def _not_found(what: str) -> JSONResponse:
    return error_body(404, 404001, f"ResourceNotFound: {what}")


class Emulator:
    """One emulated service: settings, jobs, counters and fault state behind the routes."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.connections = ConnectionRegistry()
        self.injector = FaultInjector(config.seed)
        self.signer = UrlSigner()
        self.renders = RenderCache()
        self.bad_outputs = BadOutputs()
        self.store = JobStore(config)
        self.loader: InputLoader | None = None

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(trust_env=False, follow_redirects=True, limits=limits) as client:
            self.loader = InputLoader(client)
            self.store.loader = self.loader
            self.store.start()
            try:
                yield
            finally:
                await self.store.aclose()

    def apply_config(self, config: EmulatorConfig) -> None:
        """Swap settings on the running server; jobs already scheduled keep their due times."""
        if config.faults != self.config.faults:
            self.bad_outputs.issued = 0  # ``bad_output_jobs`` counts from the change
        self.config = config
        self.store.config = config
        self.store.wake()

    def reset(self) -> None:
        self.store.reset()
        self.counters = Counters()
        self.injector.reseed(self.config.seed)
        self.renders.clear()
        self.bad_outputs.reset()
        if self.loader is not None:
            self.loader.fetches = self.loader.failures = 0

    def counter_snapshot(self) -> dict[str, Any]:
        self.store.advance()
        snapshot = self.counters.snapshot()
        snapshot.update(self.store.stats())
        snapshot["input_fetches"] = self.loader.fetches if self.loader else 0
        snapshot["input_fetch_failures"] = self.loader.failures if self.loader else 0
        return snapshot

    # --- plumbing shared by the API endpoints ------------------------------------------------

    def endpoint(self, name: FaultEndpoint, handler: Handler) -> Handler:
        """Wrap ``handler`` with counting and the faults configured for ``name``."""

        async def run(request: Request) -> Response:
            self.counters.count_request(name)
            config = self.config
            faults = config.faults
            applies = name in faults.endpoints
            if applies and faults.latency_s > 0:
                self.counters.count_fault(FaultKind.LATENCY.value)
                await asyncio.sleep(config.scaled(faults.latency_s))
            fault = self.injector.decide(faults, name)
            if fault is not None and fault.kind is not FaultKind.LOST_RESPONSE:
                self.counters.count_fault(fault.kind.value)
                return fault_response(fault, faults, self.connections, self.counters.faults_total)
            response = await handler(request)
            if fault is not None and response.status_code == 200:
                # The job exists now; the client is left not knowing it.
                self.counters.count_fault(fault.kind.value)
                return DroppedConnection(
                    self.connections, no_response=fault.no_response, body=bytes(response.body)
                )
            if applies and faults.slow_body_s > 0 and not isinstance(response, StreamingResponse):
                self.counters.count_fault(FaultKind.SLOW_BODY.value)
                return SlowBody(response, config.scaled(faults.slow_body_s))
            return response

        return run

    def deny(self, request: Request) -> Response | None:
        """The 401 answer for a request without the right bearer token; None when it may pass."""
        return self._denied(request)

    def _denied(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.config.token.encode()
        ):
            return None
        self.counters.auth_failures += 1
        message = "UserAccountError: API token missing, invalid or expired"
        response = error_body(401, 400004, message)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def _links(self, base: str, request_id: str) -> dict[str, str]:
        prefix = f"{base}/v1/requests/{request_id}"
        return {"status_url": f"{prefix}/status", "result_url": f"{prefix}/result"}

    def _status_body(self, job: Job, base: str) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": job.request_id, "status": job.state.value}
        body.update(self._links(base, job.request_id))
        position = self.store.queue_position(job)
        if position is not None:
            body["queue_position"] = position
        return body

    def _output_urls(self, job: Job, base: str) -> list[str]:
        if self.config.faults.expire_outputs:
            self.counters.count_fault(FaultKind.EXPIRED_OUTPUTS.value)
            expires = int(time.time()) - 1
        else:
            expires = int((job.finished_at or time.time()) + self.config.output_ttl_s)
        ext = FILE_EXTENSIONS[job.request.output_format]
        paths = (f"/files/{job.request_id}/{index}.{ext}" for index in range(job.request.num_images))
        urls = [f"{base}{path}?{self.signer.query(path, expires)}" for path in paths]
        return self.bad_outputs.output_urls(job.request_id, urls)

    # --- the API ------------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        model_id = request.path_params["model_id"]
        self.counters.count_model(model_id)
        if model_id not in self.config.models:
            return error_body(400, 400001, f"InvalidResourceIdentifier: unknown model_id {model_id!r}")
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": str(exc)}]
            return error_body(422, 422001, f"request body is not valid JSON: {exc}", detail=detail)
        if not isinstance(body, dict):
            detail = [{"type": "model_type", "loc": ["body"], "msg": "Input should be a JSON object"}]
            return error_body(422, 422001, "request body must be a JSON object", detail=detail)
        try:
            edit = EditRequest.model_validate(body, context={"allow_insecure_inputs": True})
        except ValidationError as exc:
            detail = json.loads(exc.json(include_url=False, include_input=False))
            return error_body(422, 422001, describe_validation_error(exc), detail=detail)
        job = self.store.submit(model_id, edit)
        self.counters.jobs_created += 1
        faults = self.config.faults
        bad = self.bad_outputs.decide(job.request_id, edit.prompt, faults.bad_output, faults.bad_output_jobs)
        if bad is not None:
            self.counters.count_fault(f"bad_output_{bad.value}")
        billing.charge(self, edit)
        base = _base_url(request)
        links = self._links(base, job.request_id)
        return JSONResponse(
            {
                "request_id": job.request_id,
                **links,
                "cancel_url": f"{base}/v1/requests/{job.request_id}/cancel",
            }
        )

    async def status(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        job = self.store.get(request.path_params["request_id"])
        if job is None:
            return _not_found("no request with this request_id")
        return JSONResponse(self._status_body(job, _base_url(request)))

    async def result(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        job = self.store.get(request.path_params["request_id"])
        if job is None:
            return _not_found("no request with this request_id")
        base = _base_url(request)
        body = self._status_body(job, base)
        if job.state.is_terminal:
            body.update(model_id=job.model_id, created_at=job.created_iso, finished_at=job.finished_iso)
        if job.state is JobState.COMPLETED:
            body["output"] = {"images": self._output_urls(job, base)}
        elif job.state is JobState.FAILED:
            body["error"] = job.error
        if job.state.is_terminal and request.query_params.get("include_cost", "").lower() in _TRUE:
            billing.add_cost(self, job, body)
        return JSONResponse(body)

    async def cancel(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        outcome = self.store.cancel(request.path_params["request_id"])
        if outcome is None:
            return _not_found("no request with this request_id")
        job, result = outcome
        return JSONResponse(
            {"request_id": job.request_id, "status": job.state.value, "outcome": result.value}
        )

    async def file(self, request: Request) -> Response:
        request_id, name = request.path_params["request_id"], request.path_params["filename"]
        verdict = self.signer.verify(
            f"/files/{request_id}/{name}",
            request.query_params.get("expires"),
            request.query_params.get("sig"),
        )
        if verdict is Verdict.EXPIRED:
            return error_body(403, 403002, "AccessDenied: this output URL has expired")
        if verdict is not Verdict.OK:
            return error_body(403, 403003, "AccessDenied: missing or invalid signature")
        match = _FILE_NAME.match(name)
        job = self.store.get(request_id)
        if match is None or job is None or job.state is not JobState.COMPLETED:
            return _not_found("no such output file")
        index, fmt = int(match.group(1)), FORMAT_BY_EXTENSION.get(match.group(2))
        if index >= job.request.num_images or fmt != job.request.output_format:
            return _not_found("no such output file")
        width, height = output_size(job.request.aspect_ratio, job.request.resolution, job.first_input_size)
        spec = RenderSpec(
            width=width,
            height=height,
            seed=job.request.seed,
            index=index,
            prompt=job.request.prompt,
            output_format=fmt,
            source=self.store.source(job),
        )
        data = await self.renders.get(spec)
        if self.bad_outputs.spoils(request_id, index):
            bad = self.bad_outputs.file_bytes
            data = await asyncio.to_thread(bad, request_id, index, data, fmt, (width, height))
        media_type = MEDIA_TYPES[fmt]
        if self.config.output_pad_bytes > len(data):
            padded = PaddedFile(data, fmt, self.config.output_pad_bytes)
            headers = {"Content-Length": str(padded.length)}
            return StreamingResponse(self._stream(padded), media_type=media_type, headers=headers)
        self.counters.files_served += 1
        self.counters.bytes_served += len(data)
        return Response(data, media_type=media_type)

    async def _stream(self, padded: PaddedFile) -> AsyncIterator[bytes]:
        for chunk in padded.chunks():
            self.counters.bytes_served += len(chunk)
            yield chunk
        self.counters.files_served += 1

    # --- the harness's control surface ---------------------------------------------------------

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def get_counters(self, _request: Request) -> Response:
        return JSONResponse(self.counter_snapshot())

    async def post_reset(self, _request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def config_endpoint(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                changes = json.loads(await request.body())
            except ValueError as exc:
                return error_body(422, 422001, f"request body is not valid JSON: {exc}")
            if not isinstance(changes, dict) or "token" in changes:
                return error_body(
                    422, 422001, "expected a JSON object of settings; the token cannot be changed"
                )
            current = self.config.model_dump()  # "faults", when given, replaces the whole fault set
            try:
                self.apply_config(EmulatorConfig.model_validate({**current, **changes}))
            except ValidationError as exc:
                detail = json.loads(exc.json(include_url=False, include_input=False))
                return error_body(422, 422001, str(exc).splitlines()[0], detail=detail)
        return JSONResponse(self.config.public_view())

    async def force_cancel(self, request: Request) -> Response:
        job = self.store.force_cancel(request.path_params["request_id"])
        if job is None:
            return _not_found("no request with this request_id")
        return JSONResponse({"request_id": job.request_id, "status": job.state.value})

    async def force_fail(self, request: Request) -> Response:
        raw = await request.body()
        try:
            options = json.loads(raw) if raw.strip() else {}
        except ValueError:
            options = None
        if not isinstance(options, dict):
            return error_body(422, 422001, 'expected an optional JSON object {"message": ..., "type": ...}')
        message = str(options.get("message") or "failed from outside (emulated)")
        job = self.store.force_fail(
            request.path_params["request_id"], message, str(options.get("type") or "model_error")
        )
        if job is None:
            return _not_found("no request with this request_id")
        return JSONResponse({"request_id": job.request_id, "status": job.state.value, "error": job.error})

    def _billing(self, handler: Callable[[Emulator, Request], Awaitable[Response]]) -> Handler:
        async def run(request: Request) -> Response:
            return await handler(self, request)

        return run

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models/{model_id:path}", self.endpoint("submit", self.submit), methods=["POST"]),
            Route("/v1/models/{model_id:path}", self._billing(billing.model_info), methods=["GET"]),
            Route("/balance", self._billing(billing.balance), methods=["GET"]),
            Route("/v1/requests/{request_id}/status", self.endpoint("status", self.status), methods=["GET"]),
            Route("/v1/requests/{request_id}/result", self.endpoint("result", self.result), methods=["GET"]),
            Route("/v1/requests/{request_id}/cancel", self.endpoint("cancel", self.cancel), methods=["POST"]),
            Route("/files/{request_id}/{filename}", self.endpoint("files", self.file), methods=["GET"]),
            Route("/_emulator/health", self.health, methods=["GET"]),
            Route("/_emulator/counters", self.get_counters, methods=["GET"]),
            Route("/_emulator/reset", self.post_reset, methods=["POST"]),
            Route("/_emulator/config", self.config_endpoint, methods=["GET", "PUT"]),
            Route("/_emulator/requests/{request_id}/force_cancel", self.force_cancel, methods=["POST"]),
            Route("/_emulator/requests/{request_id}/fail", self.force_fail, methods=["POST"]),
        ]


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _not_found("no such endpoint")
    return error_body(exc.status_code, exc.status_code * 1000 + 1, str(exc.detail))


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """A fresh emulator; its :class:`Emulator` is at ``app.state.emulator``.

    Input fetching and the background ticker start in the app's lifespan. Under an ASGI transport
    that skips the lifespan, jobs still advance whenever they are polled, but no inputs are fetched.
    """
    emulator = Emulator(config or EmulatorConfig())
    app = Starlette(
        routes=emulator.routes(),
        lifespan=emulator.lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.emulator = emulator
    return app
