"""The page behind the "RunComfy request" link: a request's state, readable by a person.

An Airflow plugin (registered through the provider's ``plugins`` entry) mounts a small FastAPI app
at ``/nanobanana`` in the API server. ``GET /nanobanana/requests/<id>?dag_id=&run_id=&task_id=
&map_index=&model_id=`` (the URL :mod:`~airflow_provider_nanobanana.links` builds):

1. checks the viewer against Airflow's own auth (the UI's session cookie or a Bearer token) for
   read access to the DAG's task instances; anyone else gets 401/403;
2. checks that this task instance really recorded this request id (XCom), so the page cannot be
   used to look up arbitrary requests with a deployment's token;
3. reads the status on the server with the connection the task recorded beside the request id
   (never one named in the URL: a viewer could name any connection, e.g. ``aws_default``, and its
   password would go to RunComfy), refusing any connection whose type is not ``runcomfy``, and
   renders a tiny HTML page: state, queue position, and links to the task and the model's page.

The FastAPI app is built on first request, so loading plugins in other Airflow processes (workers,
scheduler) imports nothing of the API server.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_nanobanana.links import PAGE_PREFIX, REQUEST_CONN_ID_XCOM_KEY, REQUEST_ID_XCOM_KEY
from airflow_provider_nanobanana.models import REQUEST_ID_PATTERN, JobState

_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
#: The connection a task that recorded no connection id (an older provider) submitted with.
DEFAULT_CONN_ID = "runcomfy_default"
_MODEL_ID = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,4}$")
#: A page for a job still waiting refreshes itself this often (seconds).
REFRESH_S = 10


class _LazyApp:
    """An ASGI app that builds the FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = build_app()
        await self._app(scope, receive, send)


def build_app() -> Any:
    """The FastAPI app: one route, behind Airflow's DAG-level authorization."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, Query
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="RunComfy requests", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(
        "/requests/{request_id}",
        response_class=HTMLResponse,
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))],
    )
    def request_page(
        request_id: str,
        dag_id: str = Query(...),
        run_id: str = Query(...),
        task_id: str = Query(...),
        map_index: int = Query(-1),
        model_id: str = Query(""),
    ) -> HTMLResponse:
        # No conn_id parameter on purpose: the connection comes from the task's own XCom.
        code, body = render_request(request_id, ti=(dag_id, run_id, task_id, map_index), model_id=model_id)
        return HTMLResponse(body, status_code=code, headers={"Cache-Control": "no-store"})

    return app


def render_request(request_id: str, *, ti: tuple[str, str, str, int], model_id: str) -> tuple[int, str]:
    """(HTTP status, HTML) for one request; every error is a page too, never a secret."""
    if not REQUEST_ID_PATTERN.match(request_id):
        return 400, _page(request_id, "bad link", "The request id in this link is malformed.")
    if model_id and not _MODEL_ID.match(model_id):
        model_id = ""
    recorded = recorded_request(*ti)
    if recorded.get(REQUEST_ID_XCOM_KEY) != request_id:
        return 404, _page(request_id, "unknown", "This task instance did not submit this request.")
    conn_id = recorded.get(REQUEST_CONN_ID_XCOM_KEY) or DEFAULT_CONN_ID
    if not isinstance(conn_id, str) or not _CONN_ID.match(conn_id):
        return 400, _page(request_id, "bad record", "The task recorded a malformed connection id.")
    from airflow_provider_nanobanana.exceptions import (
        RunComfyAuthError,
        RunComfyError,
        RunComfyNotFoundError,
    )
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook

    try:
        conn_type = RunComfyHook.get_connection(conn_id).conn_type
    except Exception as exc:  # noqa: BLE001 - e.g. a missing connection: a page, not a stack trace
        return 502, _page(
            request_id, "unavailable", f"The connection could not be read ({type(exc).__name__})."
        )
    if conn_type != RunComfyHook.conn_type:
        # Its password would go to RunComfy as a Bearer token: only a runcomfy connection may.
        return 403, _page(
            request_id, "refused", f"Connection {conn_id!r} is not a {RunComfyHook.conn_type!r} connection."
        )
    try:
        status = RunComfyHook(conn_id, max_retries=1).get_status(request_id)
    except RunComfyNotFoundError:
        return 404, _page(
            request_id, "not found", "RunComfy no longer knows this request (expired or deleted)."
        )
    except RunComfyAuthError:
        return 502, _page(request_id, "unavailable", f"RunComfy refused the token of connection {conn_id!r}.")
    except RunComfyError as exc:
        return 502, _page(request_id, "unavailable", f"RunComfy could not be asked ({type(exc).__name__}).")
    except Exception as exc:  # noqa: BLE001 - e.g. a missing connection: a page, not a stack trace
        return 502, _page(request_id, "unavailable", f"The status could not be read ({type(exc).__name__}).")
    facts = [("Queue position", str(status.queue_position))] if status.queue_position is not None else []
    if status.status is JobState.FAILED:
        facts.append(("Error", status.error_message[:500]))
    return 200, _page(
        request_id,
        status.status.value if status.status is not JobState.UNKNOWN else status.status_text or "unknown",
        "",
        facts=facts,
        ti=ti,
        model_id=model_id,
        refresh=not status.status.is_terminal,
    )


def recorded_request(dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
    """What this task instance pushed to XCom at submit (request id, connection id), from the database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key.in_((REQUEST_ID_XCOM_KEY, REQUEST_CONN_ID_XCOM_KEY)),
            )
        ).all()
        values = {row.key: XComModel.deserialize_value(row) for row in rows}
    return {key: value for key, value in values.items() if isinstance(value, str)}


def _page(
    request_id: str,
    state: str,
    note: str,
    *,
    facts: list[tuple[str, str]] | None = None,
    ti: tuple[str, str, str, int] | None = None,
    model_id: str = "",
    refresh: bool = False,
) -> str:
    e = html.escape
    rows = [("State", f"<strong>{e(state)}</strong>"), *((k, e(v)) for k, v in facts or [])]
    if ti is not None:
        dag_id, run_id, task_id, map_index = ti
        where = f"{dag_id} / {run_id} / {task_id}" + (f" [{map_index}]" if map_index >= 0 else "")
        rows.append(("Task", e(where)))
    if model_id:
        url = f"https://www.runcomfy.com/models/{model_id}/api"
        rows.append(("Model", f'<a href="{e(url)}" rel="noreferrer">{e(model_id)}</a> on RunComfy'))
    checked = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows.append(("Checked", checked))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}'
        f"<title>RunComfy request {e(request_id)}: {e(state)}</title>"
        "<style>body{font:15px system-ui,sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
        "td,th{padding:.25em .5em .25em 0}</style></head><body>"
        f"<h1>RunComfy request <code>{e(request_id)}</code></h1>"
        + (f"<p>{e(note)}</p>" if note else "")
        + f"<table>{table}</table></body></html>"
    )


class NanoBananaPlugin(AirflowPlugin):
    """Mounts the request page in the API server (Airflow 3.1+)."""

    name = "nanobanana"
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": PAGE_PREFIX, "name": "RunComfy requests"}]
