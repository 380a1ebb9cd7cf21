"""Every ```python block in README.md and docs/*.md runs, each in a fresh namespace, offline.

Blocks that are not meant to run use another fence language (```bash, ```text, ```json). The
``runcomfy_default`` connection points at a closed loopback port, and any socket connection to a
non-loopback address fails the test, so a snippet can never reach the real service.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

DUMMY_CONNECTION = {
    "conn_type": "runcomfy",
    "host": "http://127.0.0.1:9",  # discard port: nothing listens, nothing leaves the machine
    "password": "docs-snippet-token",
    "extra": {"allow_insecure_inputs": True, "max_retries": 0},
}


def _snippets() -> Iterator[Any]:
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{path.relative_to(ROOT)}:{line}"
            yield pytest.param(match.group(1), name, id=name)


SNIPPETS = list(_snippets())


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Dummy connection, and a socket layer that refuses anything but loopback."""
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(DUMMY_CONNECTION))
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address: object) -> None:
        if not _is_loopback(address):
            raise AssertionError(f"a documentation snippet tried to reach {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        guard(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        guard(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_docs_have_snippets() -> None:
    names = {name.split(":", 1)[0] for _code, name in (p.values for p in SNIPPETS)}
    assert "README.md" in names
    assert len(names) >= 5, f"only {sorted(names)} have python snippets"


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(("code", "name"), SNIPPETS)
def test_snippet_runs(code: str, name: str) -> None:
    namespace: dict[str, Any] = {"__name__": "__docs_snippet__"}
    exec(compile(code, name, "exec"), namespace)


@pytest.mark.usefixtures("offline")
def test_the_guard_refuses_non_loopback_addresses() -> None:
    with pytest.raises(AssertionError, match="tried to reach"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
