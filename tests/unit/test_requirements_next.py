"""The next-Airflow test environment stays the oldest one with only Airflow moved forward."""

from __future__ import annotations

import re
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements"


def _lines(name: str) -> list[str]:
    text = (REQUIREMENTS / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _pinned(name: str) -> dict[str, str]:
    pins = {}
    for line in _lines(name):
        match = re.match(r"^([A-Za-z0-9_.\[\]-]+)==(\S+)", line)
        if match:
            pins[re.sub(r"\[.*\]", "", match.group(1)).lower()] = match.group(2)
    return pins


def test_next_in_is_oldest_in_with_only_the_airflow_pin_changed():
    oldest = [line for line in _lines("oldest-airflow.in") if not line.startswith("apache-airflow==")]
    following = [line for line in _lines("next-airflow.in") if not line.startswith("apache-airflow==")]
    assert following == oldest, "a dependency added to oldest-airflow.in must be added to next-airflow.in"
    (pin,) = [line for line in _lines("next-airflow.in") if line.startswith("apache-airflow==")]
    assert re.fullmatch(r"apache-airflow==3\.\d+\.\d+(a|b|rc)\d+", pin), pin  # a pre-release


def test_next_txt_is_compiled_from_next_in():
    pins = _pinned("next-airflow.txt")
    (pin,) = [line for line in _lines("next-airflow.in") if line.startswith("apache-airflow==")]
    assert pins["apache-airflow"] == pin.split("==")[1]
    for line in _lines("next-airflow.in"):
        name = re.split(r"[<>=\[]", line, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is in next-airflow.in but not compiled into next-airflow.txt"
