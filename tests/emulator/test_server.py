from __future__ import annotations

import re

import httpx
import pytest

from airflow_provider_nanobanana.emulator import EmulatorConfig, EmulatorServer, FaultConfig, create_app
from airflow_provider_nanobanana.emulator.server import bind_socket, url_for


def test_servers_pick_free_ports_and_stop_cleanly() -> None:
    with (
        EmulatorServer(EmulatorConfig(token="t1")) as first,
        EmulatorServer(EmulatorConfig(token="t2")) as second,
    ):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", first.base_url)
        assert first.base_url != second.base_url
        assert httpx.get(first.url("/_emulator/health"), trust_env=False).json() == {"ok": True}
        assert first.auth_headers == {"Authorization": "Bearer t1"}
        status = httpx.get(second.url("/v1/requests/x/status"), headers=first.auth_headers, trust_env=False)
        assert status.status_code == 401  # each server has its own token
        url = first.base_url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_emulator/health", trust_env=False)
    with pytest.raises(RuntimeError, match="not running"):
        first.counters()


def test_stop_is_idempotent_and_start_returns_the_server() -> None:
    server = EmulatorServer()
    assert server.start() is server
    assert server.start() is server
    server.stop()
    server.stop()


def test_set_faults_replaces_the_whole_fault_set(emu_server: EmulatorServer) -> None:
    try:
        emu_server.set_faults(rate_429=1.0, latency_s=0.1)
        emu_server.set_faults(FaultConfig(rate_html=0.5))
        faults = emu_server.get_config()["faults"]
        assert (faults["rate_429"], faults["latency_s"], faults["rate_html"]) == (0.0, 0.0, 0.5)
    finally:
        emu_server.set_faults()
    assert emu_server.get_config()["faults"] == FaultConfig().model_dump(mode="json")


def test_create_app_exposes_its_emulator() -> None:
    app = create_app(EmulatorConfig(seed=9))
    assert app.state.emulator.config.seed == 9


def test_bind_socket_and_urls() -> None:
    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] > 0
    assert url_for("127.0.0.1", 80) == "http://127.0.0.1:80"
    assert url_for("::1", 80) == "http://[::1]:80"
