"""Fixtures shared by the unit tests of more than one package (media, spend)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_nanobanana.media import S3MediaHook
from tests.unit.media.support import FileServer, make_hook


@pytest.fixture
def files() -> Iterator[FileServer]:
    """A file host on loopback whose routes each test sets (``files.serve``)."""
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def hook(moto_s3: Any) -> S3MediaHook:
    """The S3 media hook on the moto server (test modules with a hook of their own override it)."""
    return make_hook(moto_s3.endpoint_url)
