"""An offline emulator of RunComfy's Model API for ``google/nano-banana-2/edit``.

It is a real HTTP server (Starlette on uvicorn) with the service's endpoints, states, error bodies and
pre-signed output links, plus seeded, reproducible faults, so the provider can be tested and
benchmarked end to end without network access or a paid account. Needs the ``emulator`` extra
(pillow, starlette, uvicorn).
"""

from __future__ import annotations

from airflow_provider_nanobanana.emulator.app import create_app
from airflow_provider_nanobanana.emulator.config import EmulatorConfig, FaultConfig
from airflow_provider_nanobanana.emulator.server import EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorServer", "FaultConfig", "create_app"]
