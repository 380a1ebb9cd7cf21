"""Operator extra link: a button in the Airflow UI that opens a page showing the request's state.

The API's own status URL cannot be the link: it answers a browser with 401 (it needs the API
token, which must never reach a URL or the UI), and RunComfy has no per-request web page. So the
link opens the provider's page in Airflow's own API server,
``/nanobanana/requests/<request id>?dag_id=...`` (:mod:`airflow_provider_nanobanana.request_page`),
which checks the viewer's Airflow access to the DAG, reads the status with the task's connection on
the server side, and shows the state without the token.

Airflow 3 computes a task's links on the worker when a try ends (or defers) and stores them in
XCom, so :meth:`RunComfyRequestLink.get_link` sees the real operator (its connection and model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, REQUEST_ID_PATTERN

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the operator stores the request's status URL right after submitting.
REQUEST_URL_XCOM_KEY = "runcomfy_request_url"
REQUEST_ID_XCOM_KEY = "runcomfy_request_id"
#: XCom key of the connection id the task submitted with: the request page reads the status with
#: this connection, never with one named in the URL (a viewer could name any connection there).
REQUEST_CONN_ID_XCOM_KEY = "runcomfy_conn_id"

#: Where the provider's plugin is mounted in the API server.
PAGE_PREFIX = "/nanobanana"


def request_page_path(
    request_id: str,
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    model_id: str = DEFAULT_MODEL_ID,
) -> str:
    """The page's path and query for one task instance's request (no host: the UI's own origin)."""
    query = urlencode(
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": map_index,
            "model_id": model_id,
        }
    )
    return f"{PAGE_PREFIX}/requests/{quote(request_id, safe='')}?{query}"


def _api_base_url() -> str:
    """``[api] base_url`` without its trailing slash; empty (a path on the UI's origin) when unset."""
    try:
        from airflow_provider_nanobanana._compat import conf

        base = conf.get("api", "base_url", fallback="") or ""
    except Exception:  # noqa: BLE001 - a link must never fail a task
        base = ""
    return base.rstrip("/")


class RunComfyRequestLink(BaseOperatorLink):
    """Opens the provider's request page for the request this task submitted (no secret in it)."""

    name = "RunComfy request"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            from airflow.sdk.execution_time.xcom import XCom

            request_id = XCom.get_value(ti_key=ti_key, key=REQUEST_ID_XCOM_KEY)
        except Exception:  # noqa: BLE001 - a missing link must never break the UI or the task
            return ""
        if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.match(request_id):
            return ""
        map_index = getattr(ti_key, "map_index", -1)
        path = request_page_path(
            request_id,
            dag_id=ti_key.dag_id,
            run_id=ti_key.run_id,
            task_id=ti_key.task_id,
            map_index=map_index if isinstance(map_index, int) else -1,
            model_id=str(getattr(operator, "model_id", "") or DEFAULT_MODEL_ID),
        )
        return _api_base_url() + path
