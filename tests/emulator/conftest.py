"""Fixtures for the emulator suite: one shared emulator server, a host for input images, a client.

Starting uvicorn costs ~0.2 s, so one server serves the whole session; the ``emu`` fixture resets it
and installs the settings a test asks for (``@pytest.mark.emulator(run_s=..., ...)``), which is what
a test would otherwise get from a fresh server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_nanobanana.emulator import EmulatorConfig, EmulatorServer
from tests.emulator.support import FAST, Api, ImageHost


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emulator(**settings): EmulatorConfig fields for the emu fixture")


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def emu_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(**FAST)) as server:
        yield server


@pytest.fixture
def emu(emu_server: EmulatorServer, request: pytest.FixtureRequest) -> EmulatorServer:
    """The shared server, reset, with ``FAST`` timings plus the test's ``emulator`` marker settings."""
    marker = request.node.get_closest_marker("emulator")
    settings = {**FAST, **(marker.kwargs if marker else {})}
    emu_server.configure(**EmulatorConfig(**settings).model_dump(mode="json", exclude={"token"}))
    emu_server.reset()
    return emu_server


@pytest.fixture
def api(emu: EmulatorServer, image_host: ImageHost) -> Iterator[Api]:
    client = Api(emu, image_host)
    yield client
    client.close()
