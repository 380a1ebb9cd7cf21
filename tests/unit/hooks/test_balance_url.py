"""``balance_url`` carries the API token: https only, unless the connection allows a local test server."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana.hooks.settings import RunComfySettings


def test_a_clear_text_balance_url_is_refused():
    with pytest.raises(ValueError, match="balance_url must be https"):
        RunComfySettings(token="t", balance_url="http://api.runcomfy.net")


def test_https_or_an_explicitly_insecure_connection_is_accepted():
    assert RunComfySettings(token="t", balance_url="https://api.runcomfy.net/").balance_url == (
        "https://api.runcomfy.net"
    )
    local = RunComfySettings(token="t", balance_url="http://127.0.0.1:9", allow_insecure_inputs=True)
    assert local.balance_url == "http://127.0.0.1:9"
