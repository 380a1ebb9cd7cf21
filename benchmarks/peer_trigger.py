"""The baseline for the real-triggerer benchmark: a trigger written the way the official providers'
triggers are (e.g. Databricks, dbt Cloud, Google Cloud Run). Never used outside benchmarks.

Per poll it looks the connection up with ``BaseHook.aget_connection`` (in a triggerer: a round trip
through the supervisor process, plus secret-masking messages), opens a new HTTP client, asks once,
closes the client and sleeps a fixed interval. Errors end the wait with an ``error`` event. The
triggerer imports it from ``benchmarks.peer_trigger``, so the benchmark puts the repository root on
the triggerer's ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_BASE_URL = "https://model-api.runcomfy.net"


class PeerStyleTrigger(BaseTrigger):
    """Fixed-interval polling with a connection lookup and a new ``httpx.AsyncClient`` per poll."""

    def __init__(
        self,
        *,
        request_id: str,
        deadline_epoch_s: float,
        conn_id: str = "runcomfy_default",
        poll_interval_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.deadline_epoch_s = float(deadline_epoch_s)
        self.conn_id = conn_id
        self.poll_interval_s = float(poll_interval_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "deadline_epoch_s": self.deadline_epoch_s,
                "conn_id": self.conn_id,
                "poll_interval_s": self.poll_interval_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            while time.time() < self.deadline_epoch_s:
                conn = await BaseHook.aget_connection(self.conn_id)
                host = (conn.host or "").rstrip("/") or DEFAULT_BASE_URL
                headers = {"Authorization": f"Bearer {conn.password}", "Accept": "application/json"}
                async with httpx.AsyncClient(base_url=host, headers=headers, timeout=30.0) as client:
                    response = await client.get(f"/v1/requests/{self.request_id}/status")
                    response.raise_for_status()
                    state = str(response.json().get("status"))
                if state in TERMINAL:
                    ok = state == "completed"
                    yield TriggerEvent(
                        {
                            "status": "success" if ok else state,
                            "request_id": self.request_id,
                            "job_state": state,
                        }
                    )
                    return
                self.log.info(
                    "Request %s is %s; sleeping %.0f s", self.request_id, state, self.poll_interval_s
                )
                await asyncio.sleep(self.poll_interval_s)
            yield TriggerEvent({"status": "timeout", "request_id": self.request_id})
        except Exception as exc:  # noqa: BLE001 - the official triggers end with an error event
            message = f"{type(exc).__name__}: {exc}"
            yield TriggerEvent({"status": "error", "request_id": self.request_id, "message": message})
