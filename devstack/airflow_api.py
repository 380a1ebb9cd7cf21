"""A small client for the Airflow 3 REST API (``/api/v2``), enough to drive and watch a DAG run.

Authentication is the simple auth manager's: ``POST /auth/token`` with the admin password Airflow
generated into ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``. The generated password
is used rather than ``simple_auth_manager_all_admins`` so the stack behaves like a default install.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TERMINAL_RUN_STATES = frozenset({"success", "failed"})


class AirflowAPIError(RuntimeError):
    """An API call failed; the message carries the method, path, status and body."""


@dataclass(frozen=True)
class TaskInstanceState:
    """One (possibly mapped) task instance as seen at one poll."""

    task_id: str
    map_index: int
    state: str | None
    try_number: int
    #: The label from the task's ``map_index_template`` (``None`` until rendered, or unmapped).
    rendered_map_index: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.map_index)


def read_admin_password(password_file: Path, username: str = "admin") -> str:
    """The password the simple auth manager generated for ``username`` (a JSON object of them)."""
    passwords: dict[str, str] = json.loads(password_file.read_text())
    return passwords[username]


class AirflowClient:
    """Thin wrapper over ``httpx.Client`` with a bearer token; every method is one API call."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout_s,
        )

    @classmethod
    def login(cls, base_url: str, *, password_file: Path, username: str = "admin") -> AirflowClient:
        password = read_admin_password(password_file, username)
        response = httpx.post(
            f"{base_url.rstrip('/')}/auth/token",
            json={"username": username, "password": password},
            timeout=30,
        )
        if response.status_code >= 400:
            raise AirflowAPIError(f"POST /auth/token -> {response.status_code}: {response.text[:500]}")
        return cls(base_url, response.json()["access_token"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, f"/api/v2{path}", **kwargs)
        if response.status_code >= 400:
            raise AirflowAPIError(f"{method} /api/v2{path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    # -- DAGs -----------------------------------------------------------------------------------------
    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG's record, or ``None`` while the dag-processor has not serialized it yet."""
        try:
            result: dict[str, Any] = self._call("GET", f"/dags/{dag_id}")
        except AirflowAPIError as exc:
            if "-> 404" in str(exc):
                return None
            raise
        return result

    def task(self, dag_id: str, task_id: str) -> dict[str, Any]:
        """``GET /dags/{dag}/tasks/{task}``: the task as the scheduler sees it (``retries``...)."""
        result: dict[str, Any] = self._call("GET", f"/dags/{dag_id}/tasks/{task_id}")
        return result

    def import_errors(self) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = self._call("GET", "/importErrors")["import_errors"]
        return errors

    def wait_for_dag(
        self, dag_id: str, *, timeout_s: float = 90.0, alive: Callable[[], None] | None = None
    ) -> None:
        """Until the dag-processor has serialized ``dag_id``; a timeout reports the import errors."""
        deadline = time.monotonic() + timeout_s
        while self.get_dag(dag_id) is None:
            if alive is not None:
                alive()
            if time.monotonic() >= deadline:
                errors = json.dumps(self.import_errors(), indent=1)[:4000]
                raise AirflowAPIError(
                    f"DAG {dag_id} did not appear within {timeout_s:.0f}s; import errors: {errors}"
                )
            time.sleep(1.0)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    # -- runs -----------------------------------------------------------------------------------------
    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Start a manual run now; returns its ``dag_run_id``."""
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        run: dict[str, Any] = self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        run: dict[str, Any] = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return str(run["state"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """``GET /dags/{dag}/dagRuns/{run}``: state, ``start_date``, ``end_date``..."""
        run: dict[str, Any] = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return run

    def task_instance_tries(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> list[dict[str, Any]]:
        """Every try of one task instance, oldest first (``.../{task}/{map_index}/tries``).

        In Airflow 3 a try resumed after a deferral keeps its ``start_date``, so a try's ``duration``
        includes the time it spent deferred: it is not the time the try held a worker slot.
        """
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        tries: list[dict[str, Any]] = self._call("GET", path)["task_instances"]
        return sorted(tries, key=lambda t: int(t["try_number"]))

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskInstanceState]:
        """Every task instance of the run, mapped ones included (one entry per map index)."""
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return [
            TaskInstanceState(
                task_id=ti["task_id"],
                map_index=int(ti.get("map_index", -1)),
                state=ti.get("state"),
                try_number=ti["try_number"],
                rendered_map_index=ti.get("rendered_map_index"),
            )
            for ti in body["task_instances"]
        ]

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """An XCom value as JSON data (decoded if the API hands it back as a JSON string)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self._call("GET", path, params={"map_index": map_index})["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    # -- human in the loop (Airflow 3.1+) and assets ------------------------------------------------
    def _hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """What a human-in-the-loop task asks (``subject``, ``body``, ``options``) and any response."""
        detail: dict[str, Any] = self._call("GET", self._hitl_path(dag_id, run_id, task_id, map_index))
        return detail

    def respond_hitl(
        self, dag_id: str, run_id: str, task_id: str, chosen_options: list[str], map_index: int = -1
    ) -> dict[str, Any]:
        """Answer a waiting human-in-the-loop task, as a person would in the UI."""
        path = self._hitl_path(dag_id, run_id, task_id, map_index)
        answer: dict[str, Any] = self._call("PATCH", path, json={"chosen_options": chosen_options})
        return answer

    def asset_events(self, **filters: str) -> list[dict[str, Any]]:
        """``GET /assets/events`` filtered, e.g. ``source_dag_id=..., source_run_id=...``."""
        events: list[dict[str, Any]] = self._call("GET", "/assets/events", params=filters)["asset_events"]
        return events

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout_s: float,
        on_poll: Callable[[str, list[TaskInstanceState]], None] | None = None,
        interval_s: float = 1.0,
    ) -> str:
        """Poll the run (and its task instances) until it is ``success`` or ``failed``.

        ``on_poll`` sees every observation, which is how callers print progress or catch a task
        instance in a short-lived state such as ``deferred``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.run_state(dag_id, run_id)
            if on_poll is not None:
                on_poll(state, self.task_instances(dag_id, run_id))
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} still {state!r} after {timeout_s:.0f}s")
            time.sleep(interval_s)
