"""The request page over real HTTP to the emulator: the state a person sees, never the token."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana import request_page
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import EditRequest

pytestmark = pytest.mark.usefixtures("airflow_connections")

TI = ("enrich", "manual__1", "edit", 0)


def _submit(emulator, monkeypatch, image_url, *, queue_s, run_s):
    """A real request at the emulator, recorded (as XCom would) for the task instance ``TI``."""
    emulator.configure(queue_s=queue_s, run_s=run_s)
    request = EditRequest.build(prompt="p", image_urls=[image_url], allow_insecure_inputs=True)
    request_id = RunComfyHook().submit(request).request_id
    record(monkeypatch, request_id)
    return request_id


def record(monkeypatch, request_id, conn_id=None):
    """What the task instance ``TI`` pushed to XCom at submit (no connection id: an older provider)."""
    values = {"runcomfy_request_id": request_id} | ({"runcomfy_conn_id": conn_id} if conn_id else {})
    monkeypatch.setattr(request_page, "recorded_request", lambda *ti: values if ti == TI else {})


@pytest.fixture
def submitted(emulator, monkeypatch, presigned_input):
    return _submit(emulator, monkeypatch, presigned_input, queue_s=30, run_s=1)


def _render(request_id, model_id="google/nano-banana-2/edit", ti=TI):
    return request_page.render_request(request_id, ti=ti, model_id=model_id)


def test_a_queued_request_shows_its_state_and_refreshes(emulator, submitted):
    code, body = _render(submitted)
    assert code == 200
    assert "<strong>in_queue</strong>" in body
    assert submitted in body
    assert 'http-equiv="refresh"' in body  # still waiting: the page reloads itself
    assert "https://www.runcomfy.com/models/google/nano-banana-2/edit/api" in body
    assert emulator.token not in body


def test_a_finished_request_stops_refreshing(emulator, monkeypatch, presigned_input):
    request_id = _submit(emulator, monkeypatch, presigned_input, queue_s=0, run_s=0)
    code, body = _render(request_id)
    assert code == 200
    assert "<strong>completed</strong>" in body
    assert 'http-equiv="refresh"' not in body
    assert emulator.token not in body


def test_a_request_this_task_did_not_submit_is_not_looked_up(emulator, submitted):
    polls = emulator.counters()["status_polls"]
    code, body = _render(submitted, ti=("other", "r", "t", 0))
    assert code == 404
    assert "did not submit" in body
    assert emulator.counters()["status_polls"] == polls  # nothing was asked with the token


def test_a_wrong_token_is_a_page_without_any_token(emulator, submitted, monkeypatch):
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_BAD",
        json.dumps({"conn_type": "runcomfy", "host": emulator.base_url, "password": "wrong-secret-token"}),
    )
    record(monkeypatch, submitted, "runcomfy_bad")
    code, body = _render(submitted)
    assert code == 502
    assert "refused the token" in body
    assert "wrong-secret-token" not in body
    assert emulator.token not in body


@pytest.mark.parametrize("request_id", ["../x", "<script>"])
def test_a_malformed_link_is_refused_before_any_call(emulator, request_id):
    code, body = _render(request_id)
    assert code == 400
    assert "<script>" not in body


@pytest.fixture
def foreign_server(monkeypatch):
    """A server standing in for wherever a non-runcomfy connection points; records Authorization."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization", ""))
            body = json.dumps({"request_id": "x", "status": "in_queue"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "host": url,
                "password": "aws-secret-key",
                "extra": {"allow_insecure_inputs": True},
            }
        ),
    )
    yield seen
    server.shutdown()
    server.server_close()


def test_a_recorded_connection_that_is_not_runcomfy_is_refused(
    emulator, submitted, monkeypatch, foreign_server
):
    record(monkeypatch, submitted, "aws_default")
    code, body = _render(submitted)
    assert code == 403
    assert "is not a &#x27;runcomfy&#x27; connection" in body
    assert "aws-secret-key" not in body
    assert foreign_server == []  # its password never left the server


def test_a_conn_id_in_the_url_is_ignored(emulator, submitted, monkeypatch, foreign_server):
    """``&conn_id=aws_default`` in the link does not choose the connection: the task's record does."""
    from airflow.api_fastapi.core_api import security
    from fastapi.testclient import TestClient

    monkeypatch.setattr(security, "requires_access_dag", lambda *a, **k: lambda: None)  # a reader
    polls = emulator.counters()["status_polls"]
    with TestClient(request_page.build_app()) as client:
        response = client.get(
            f"/requests/{submitted}",
            params={
                "dag_id": TI[0],
                "run_id": TI[1],
                "task_id": TI[2],
                "map_index": TI[3],
                "conn_id": "aws_default",
            },
        )
    assert response.status_code == 200
    assert "<strong>in_queue</strong>" in response.text
    assert foreign_server == []  # the aws connection's password was never sent anywhere
    assert emulator.counters()["status_polls"] == polls + 1  # asked with the recorded (default) connection


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.resetdb()


def test_airflows_api_server_mounts_the_page_behind_its_login(airflow_db, emulator, submitted):
    """The real API server app (plugins loaded as ``airflow api-server`` does): no login, no page."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    polls = emulator.counters()["status_polls"]
    with TestClient(create_app("all"), raise_server_exceptions=False) as client:
        response = client.get(
            f"/nanobanana/requests/{submitted}",
            params={"dag_id": TI[0], "run_id": TI[1], "task_id": TI[2], "map_index": TI[3]},
        )
    assert response.status_code == 401  # Airflow's auth, not the UI's catch-all page
    assert response.json() == {"detail": "Not authenticated"}
    assert emulator.counters()["status_polls"] == polls
