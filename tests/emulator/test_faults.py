from __future__ import annotations

from collections import Counter

import pytest

from airflow_provider_nanobanana.emulator.config import FaultConfig
from airflow_provider_nanobanana.emulator.connections import ConnectionRegistry
from airflow_provider_nanobanana.emulator.faults import Fault, FaultInjector, FaultKind, fault_response


def _kinds(injector: FaultInjector, faults: FaultConfig, endpoint: str, draws: int) -> list[FaultKind | None]:
    return [fault.kind if (fault := injector.decide(faults, endpoint)) else None for _ in range(draws)]


def test_decisions_replay_from_the_seed() -> None:
    faults = FaultConfig(rate_429=0.2, rate_5xx=0.2, rate_drop=0.1)
    first = _kinds(FaultInjector(5), faults, "status", 200)
    assert _kinds(FaultInjector(5), faults, "status", 200) == first
    assert _kinds(FaultInjector(6), faults, "status", 200) != first
    injector = FaultInjector(5)
    _kinds(injector, faults, "status", 50)
    injector.reseed(5)
    assert _kinds(injector, faults, "status", 200) == first


def test_rates_are_shares_of_requests_and_do_not_overlap() -> None:
    faults = FaultConfig(rate_429=0.3, rate_html=0.2)
    counts = Counter(_kinds(FaultInjector(1), faults, "result", 4000))
    assert 1050 < counts[FaultKind.RATE_LIMITED] < 1350
    assert 650 < counts[FaultKind.HTML] < 950
    assert set(counts) == {FaultKind.RATE_LIMITED, FaultKind.HTML, None}


def test_faults_apply_only_to_their_endpoints() -> None:
    injector = FaultInjector(0)
    assert _kinds(injector, FaultConfig(rate_5xx=1.0), "files", 20) == [None] * 20
    everywhere = FaultConfig(rate_5xx=1.0, endpoints=frozenset({"files"}))
    assert _kinds(injector, everywhere, "files", 3) == [FaultKind.SERVER_ERROR] * 3
    assert _kinds(injector, everywhere, "submit", 3) == [None] * 3


def test_lost_responses_happen_only_on_submit() -> None:
    injector = FaultInjector(0)
    faults = FaultConfig(rate_lost_response=1.0)
    assert _kinds(injector, faults, "submit", 3) == [FaultKind.LOST_RESPONSE] * 3
    assert _kinds(injector, faults, "status", 3) == [None] * 3


def test_5xx_status_is_fixed_or_drawn_from_the_gateway_set() -> None:
    injector = FaultInjector(0)
    drawn = {injector.decide(FaultConfig(rate_5xx=1.0), "status").status for _ in range(200)}  # type: ignore[union-attr]
    assert drawn == {500, 502, 503, 504}
    fixed = injector.decide(FaultConfig(rate_5xx=1.0, status_5xx=507), "status")
    assert fixed == Fault(FaultKind.SERVER_ERROR, status=507)


@pytest.mark.parametrize(("mode", "expected"), [("no_response", {True}), ("truncated", {False})])
def test_drop_mode_fixes_how_connections_drop(mode: str, expected: set[bool]) -> None:
    injector = FaultInjector(0)
    faults = FaultConfig(rate_drop=1.0, drop_mode=mode)  # type: ignore[arg-type]
    assert {injector.decide(faults, "status").no_response for _ in range(50)} == expected  # type: ignore[union-attr]
    mixed = FaultConfig(rate_drop=1.0)
    assert {injector.decide(mixed, "status").no_response for _ in range(50)} == {True, False}  # type: ignore[union-attr]


def test_429_carries_retry_after_only_when_configured() -> None:
    registry = ConnectionRegistry()
    with_header = fault_response(Fault(FaultKind.RATE_LIMITED), FaultConfig(retry_after_s=2.0), registry, 0)
    assert with_header.status_code == 429
    assert with_header.headers["retry-after"] == "2"
    fractional = fault_response(Fault(FaultKind.RATE_LIMITED), FaultConfig(retry_after_s=0.25), registry, 0)
    assert fractional.headers["retry-after"] == "0.25"
    without = fault_response(Fault(FaultKind.RATE_LIMITED), FaultConfig(retry_after_s=None), registry, 0)
    assert "retry-after" not in without.headers
