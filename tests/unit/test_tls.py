"""``tls.py``: the file-host clients share one CA-verifying context instead of loading certifi per call."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_nanobanana import tls
from airflow_provider_nanobanana.media.archiver import OutputArchiver
from airflow_provider_nanobanana.spend.fingerprint import InputHasher


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ssl.SSLContext]]:
    """Every context ``httpx.create_ssl_context`` builds, from a cold cache."""
    contexts: list[ssl.SSLContext] = []
    real = httpx.create_ssl_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        contexts.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return contexts[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    tls.verified_context.cache_clear()  # a context built by an earlier test would hide the count
    yield contexts
    tls.verified_context.cache_clear()  # not one built through the patched function


def test_archives_and_fingerprints_load_the_ca_bundle_once(built: list[ssl.SSLContext]) -> None:
    archiver = OutputArchiver(
        lambda: None,  # type: ignore[arg-type,return-value]
        allowed_output_hosts=("127.0.0.1",),
        http_timeout_s=5.0,
        part_size_bytes=8 * 2**20,
        max_output_bytes=2**30,
        max_attempts=1,
        retry_base_delay_s=0.0,
    )
    hasher = InputHasher(lambda: None, max_bytes=2**20)  # type: ignore[arg-type,return-value]

    clients = [archiver.http_client(), archiver.http_client(), hasher.http_client()]

    assert len(built) == 1
    assert built[0].verify_mode is ssl.CERT_REQUIRED
    assert built[0].check_hostname
    for client in clients:
        client.close()
