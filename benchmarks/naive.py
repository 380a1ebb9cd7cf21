"""The naive alternatives the provider is measured against. Never used outside benchmarks.

* :class:`ClientPerPollTrigger`: the trigger people write first: a fresh ``httpx.AsyncClient`` for
  every poll (new SSL context and connection pool each time) and no process-wide poll budget.
* :class:`FixedIntervalTrigger`: the provider's own shared client, but a fixed poll interval; isolates
  the cost of the polling *policy* from the cost of the client.
* :func:`requests_sleep_wait`: a ``PythonOperator`` body with ``requests`` and ``time.sleep``.

Each is bounded by the deadline it is given; the callers also cap N and wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import requests
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import JobState
from airflow_provider_nanobanana.polling import PollPolicy

TERMINAL = frozenset({"completed", "failed", "cancelled"})


class ClientPerPollTrigger(BaseTrigger):
    """Same schedule as the real trigger (PollPolicy), but a new client per poll and no budget."""

    def __init__(
        self,
        *,
        request_id: str,
        deadline_epoch_s: float,
        poll_interval_s: float = 2.0,
        poll_max_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.deadline_epoch_s = deadline_epoch_s
        self.policy = PollPolicy(initial_s=poll_interval_s, max_s=max(poll_max_s, poll_interval_s))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"request_id": self.request_id})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = await RunComfyHook().aget_settings()
        step = 0
        while time.time() < self.deadline_epoch_s:
            try:
                async with httpx.AsyncClient(**settings.client_kwargs()) as client:
                    status = (await client.get(f"/v1/requests/{self.request_id}/status")).json()
                    if status.get("status") in TERMINAL:
                        result = (await client.get(f"/v1/requests/{self.request_id}/result")).json()
                        ok = result.get("status") == JobState.COMPLETED.value
                        yield TriggerEvent(
                            {"status": "success" if ok else "failed", "request_id": self.request_id}
                        )
                        return
            except httpx.HTTPError as exc:
                yield TriggerEvent({"status": "error", "request_id": self.request_id, "message": str(exc)})
                return
            await asyncio.sleep(self.policy.delay(step))
            step += 1
        yield TriggerEvent({"status": "timeout", "request_id": self.request_id})


class FixedIntervalTrigger(BaseTrigger):
    """The provider's hook and shared client, polled every ``interval_s`` (no backoff, no budget)."""

    def __init__(
        self,
        *,
        request_id: str,
        deadline_epoch_s: float,
        interval_s: float = 5.0,
        conn_id: str = "runcomfy_default",
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.request_id = request_id
        self.deadline_epoch_s = deadline_epoch_s
        self.interval_s = interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"request_id": self.request_id})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = RunComfyHook(self.conn_id)
        while time.time() < self.deadline_epoch_s:
            status = await hook.aget_status(self.request_id)
            if status.status.is_terminal:
                result = await hook.aget_result(self.request_id)
                ok = result.status is JobState.COMPLETED
                yield TriggerEvent({"status": "success" if ok else "failed", "request_id": self.request_id})
                return
            await asyncio.sleep(self.interval_s)
        yield TriggerEvent({"status": "timeout", "request_id": self.request_id})


def requests_sleep_wait(
    base_url: str, token: str, body: dict[str, Any], *, poll_s: float, timeout_s: float
) -> dict[str, Any]:
    """What a ``PythonOperator`` would do: submit, then ``requests.get`` + ``time.sleep`` until done."""
    headers = {"Authorization": f"Bearer {token}"}
    with requests.Session() as session:
        submit = session.post(
            f"{base_url}/v1/models/google/nano-banana-2/edit", json=body, headers=headers, timeout=30
        )
        submit.raise_for_status()
        request_id = submit.json()["request_id"]
        deadline = time.monotonic() + timeout_s
        polls = 0
        while time.monotonic() < deadline:
            status = session.get(f"{base_url}/v1/requests/{request_id}/status", headers=headers, timeout=30)
            polls += 1
            if status.json().get("status") in TERMINAL:
                result = session.get(
                    f"{base_url}/v1/requests/{request_id}/result", headers=headers, timeout=30
                )
                return {"request_id": request_id, "status": result.json().get("status"), "polls": polls}
            time.sleep(poll_s)
    return {"request_id": request_id, "status": "timeout", "polls": polls}
