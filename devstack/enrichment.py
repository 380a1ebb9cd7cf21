"""Driving ``nanobanana_s3_enrichment`` on a running :class:`~devstack.services.LocalStack`.

Shared by the demo and the end-to-end test, so both trigger, watch and read the run the same way.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devstack.airflow_api import AirflowClient, TaskInstanceState
from devstack.seed import read_object

DAG_ID = "nanobanana_s3_enrichment"
EDIT_TASK_ID = "edit_image"
LIST_TASK_ID = "list_input_images"
SUMMARY_TASK_ID = "summarize"
DEFAULT_BUCKET = "nanobanana-demo"
INPUT_PREFIX = "inputs/"
OUTPUT_PREFIX = "outputs/"


@dataclass(frozen=True)
class EditResult:
    """The XCom return value of one mapped edit task, with the manifest it points at."""

    map_index: int
    request_id: str
    archived: list[str]
    manifest_uri: str | None
    xcom: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def input_uris(self) -> list[str]:
        """Inputs as recorded in the manifest (``s3://`` URIs, never the pre-signed URLs)."""
        return [str(u) for u in self.manifest.get("inputs", [])]


def format_states(tis: list[TaskInstanceState]) -> str:
    """``list_input_images: success | edit_image: 2 deferred, 4 success | summarize: -``."""
    by_task: dict[str, Counter[str]] = {}
    for ti in tis:
        by_task.setdefault(ti.task_id, Counter())[ti.state or "none"] += 1
    parts = []
    for task_id, counts in by_task.items():
        parts.append(f"{task_id}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return " | ".join(parts) or "no task instances yet"


def format_emulator(counters: dict[str, Any]) -> str:
    jobs = counters.get("jobs_by_state", {})
    return "emulator jobs: " + ", ".join(f"{state} {n}" for state, n in jobs.items() if n) if jobs else ""


def trigger_enrichment(client: AirflowClient, conf: dict[str, Any], *, alive: Callable[[], None]) -> str:
    """Wait until the DAG is parsed, make sure it is unpaused, trigger it; returns the run id."""
    client.wait_for_dag(DAG_ID, timeout_s=120, alive=alive)
    client.unpause(DAG_ID)
    return client.trigger(DAG_ID, conf=conf)


def collect_edit_results(client: AirflowClient, run_id: str, s3: Any) -> list[EditResult]:
    """Every mapped edit task's return value (by map index) and the manifest it names."""
    edit_tis = sorted(
        (ti for ti in client.task_instances(DAG_ID, run_id) if ti.task_id == EDIT_TASK_ID),
        key=lambda ti: ti.map_index,
    )
    results = []
    for ti in edit_tis:
        value = client.xcom(DAG_ID, run_id, EDIT_TASK_ID, map_index=ti.map_index)
        manifest_uri = value.get("manifest")
        manifest = json.loads(read_object(s3, manifest_uri)) if manifest_uri else {}
        results.append(
            EditResult(
                map_index=ti.map_index,
                request_id=str(value.get("request_id")),
                archived=list(value.get("archived") or []),
                manifest_uri=manifest_uri,
                xcom=value,
                manifest=manifest,
            )
        )
    return results


class ProgressPrinter:
    """An ``on_poll`` callback that prints one status line every ``every_s`` seconds (and at the end)."""

    def __init__(
        self, emit: Callable[[str], None], counters: Callable[[], dict[str, Any]], every_s: float = 3.0
    ):
        self._emit = emit
        self._counters = counters
        self._every_s = every_s
        self._t0 = time.monotonic()
        self._last = -every_s

    def __call__(self, run_state: str, tis: list[TaskInstanceState]) -> None:
        elapsed = time.monotonic() - self._t0
        if elapsed - self._last < self._every_s and run_state not in ("success", "failed"):
            return
        self._last = elapsed
        try:
            emulator = format_emulator(self._counters())
        except Exception as exc:  # noqa: BLE001 - progress output must never fail the run
            emulator = f"emulator unreachable ({exc.__class__.__name__})"
        self._emit(f"[{elapsed:5.0f}s] run {run_state} | {format_states(tis)} | {emulator}")
