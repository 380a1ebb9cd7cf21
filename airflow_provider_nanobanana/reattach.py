"""Remembering which RunComfy request a task instance submitted, across task tries.

Airflow clears a task's XComs when a new try starts, so XCom cannot tell a retry which paid job
the previous try created. Airflow 3.3's task state store (AIP-103) can; on older 3.x a Variable
keyed by the task instance does the same job. The record carries a fingerprint of the work (prompt,
parameters and *unsigned* inputs) so a cleared task whose parameters changed submits anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

STATE_KEY = "runcomfy_request"


class _Store(Protocol):
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...


def fingerprint(parameters: Mapping[str, Any]) -> str:
    """Stable digest of the work a request does; input URLs must be the unsigned ones."""
    blob = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class _TaskStateStore:
    """Airflow >= 3.3: ``context["task_state_store"]``, scoped to the task instance by Airflow."""

    def __init__(self, accessor: Any) -> None:
        self._accessor = accessor

    def get(self, key: str) -> Any:
        return self._accessor.get(key)

    def set(self, key: str, value: Any) -> None:
        self._accessor.set(key, value)

    def delete(self, key: str) -> None:
        self._accessor.delete(key)


class _VariableStore:
    """Airflow < 3.3: an Airflow Variable named after the task instance, deleted after success."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        self._name = f"nanobanana__{ti.dag_id}__{ti.task_id}__{ti.run_id}__{map_index}"

    def get(self, key: str) -> Any:
        from airflow.sdk import Variable

        raw = Variable.get(f"{self._name}__{key}", default=None)
        return json.loads(raw) if raw else None

    def set(self, key: str, value: Any) -> None:
        from airflow.sdk import Variable

        Variable.set(f"{self._name}__{key}", json.dumps(value), description="airflow-provider-nanobanana")

    def delete(self, key: str) -> None:
        from airflow.sdk import Variable

        Variable.delete(f"{self._name}__{key}")


class JobLedger:
    """Records the submitted request id before the task waits; recalls it on the next try."""

    def __init__(self, store: _Store | None) -> None:
        self._store = store

    @classmethod
    def for_context(cls, context: Mapping[str, Any]) -> JobLedger:
        accessor = context.get("task_state_store")
        if accessor is not None:
            return cls(_TaskStateStore(accessor))
        if context.get("ti") is not None:
            return cls(_VariableStore(context))
        return cls(None)

    def recall(self, work: str) -> str | None:
        """The request id an earlier try submitted for the same work, if any."""
        return self.recall_paid(work)[0]

    def recall_paid(self, work: str) -> tuple[str | None, int]:
        """The earlier try's request id for the same work and how many requests that work paid for.

        The paid count lets a retry keep counting quality-gate resubmits where the last try stopped
        (records written before it was kept count as 1).
        """
        record = self._safe(lambda s: s.get(STATE_KEY))
        if isinstance(record, Mapping) and record.get("fingerprint") == work:
            request_id = record.get("request_id")
            paid = record.get("paid_requests", 1)
            paid = paid if isinstance(paid, int) and not isinstance(paid, bool) and paid >= 1 else 1
            return (request_id, paid) if isinstance(request_id, str) else (None, 1)
        return None, 1

    def record(self, request_id: str, work: str, paid_requests: int = 1) -> None:
        value = {"request_id": request_id, "fingerprint": work, "paid_requests": paid_requests}
        self._safe(lambda s: s.set(STATE_KEY, value))

    def forget(self) -> None:
        self._safe(lambda s: s.delete(STATE_KEY))

    def _safe(self, action: Any) -> Any:
        if self._store is None:
            return None
        try:
            return action(self._store)
        except Exception as exc:  # noqa: BLE001 - losing the ledger must not fail an otherwise good task
            log.warning("RunComfy job ledger unavailable (%s); a retry could not re-attach", exc)
            return None
