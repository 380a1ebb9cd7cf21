"""The "RunComfy request" link: a page in Airflow's API server, never the token-only API URL."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_nanobanana import links
from airflow_provider_nanobanana.get_provider_info import get_provider_info
from airflow_provider_nanobanana.links import RunComfyRequestLink

TI_KEY = SimpleNamespace(
    dag_id="enrich", run_id="manual__2026-12-01T10:00:00+00:00", task_id="edit", map_index=2
)
OPERATOR = SimpleNamespace(runcomfy_conn_id="runcomfy_prod", model_id="google/nano-banana-2/edit")


def _link(monkeypatch, value, base_url=""):
    from airflow.sdk.execution_time import xcom

    monkeypatch.setattr(xcom.XCom, "get_value", staticmethod(lambda *, ti_key, key: value))
    monkeypatch.setattr(links, "_api_base_url", lambda: base_url)
    return RunComfyRequestLink().get_link(OPERATOR, ti_key=TI_KEY)  # type: ignore[arg-type]


def test_the_link_opens_the_request_page_for_this_task_instance(monkeypatch):
    url = _link(monkeypatch, "req_123")
    parts = urlsplit(url)
    assert parts.path == "/nanobanana/requests/req_123"
    assert not parts.netloc  # the UI's own origin
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "dag_id": "enrich",
        "run_id": "manual__2026-12-01T10:00:00+00:00",
        "task_id": "edit",
        "map_index": "2",
        "model_id": "google/nano-banana-2/edit",
    }
    assert "/v1/requests/" not in url  # not the API's status URL a browser cannot open
    assert "conn_id" not in url  # the page reads the connection the task recorded, not the URL's


def test_a_configured_api_base_url_makes_it_absolute(monkeypatch):
    url = _link(monkeypatch, "req_123", base_url="https://airflow.example.com/prefix")
    assert url.startswith("https://airflow.example.com/prefix/nanobanana/requests/req_123?")


@pytest.mark.parametrize("value", [None, "", "../etc", 42, "a" * 129])
def test_no_valid_request_id_no_link(monkeypatch, value):
    assert _link(monkeypatch, value) == ""


def test_the_page_plugin_is_registered_with_airflow():
    plugins = get_provider_info()["plugins"]
    assert plugins == [
        {"name": "nanobanana", "plugin-class": "airflow_provider_nanobanana.request_page.NanoBananaPlugin"}
    ]
    from airflow_provider_nanobanana.request_page import NanoBananaPlugin

    (app,) = NanoBananaPlugin.fastapi_apps
    assert app["url_prefix"] == links.PAGE_PREFIX
