from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_nanobanana.media import S3MediaHook
from tests.unit.media.support import FileServer, make_hook


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def hook(moto_s3: Any) -> S3MediaHook:
    return make_hook(moto_s3.endpoint_url)
