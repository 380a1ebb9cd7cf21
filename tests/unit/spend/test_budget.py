"""The spend ledger against a real S3 API (moto server): conditional writes, races, idempotence."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_nanobanana.spend.budget import (
    BudgetExceededError,
    BudgetLimits,
    OnBudgetExhausted,
    SpendLedger,
    check_projected_spend,
    reservation_key,
)
from airflow_provider_nanobanana.spend.pricing import BalanceResponse, ModelInfo, as_usd

KEY = "runs/r1/_budget/edit.json"


def _ledger(moto_s3, bucket: str, **limits) -> SpendLedger:
    return SpendLedger(moto_s3.client(), bucket, KEY, BudgetLimits(**limits))


def test_reserve_is_idempotent_per_item_and_attempt(moto_s3, s3_bucket):
    ledger = _ledger(moto_s3, s3_bucket, max_paid_requests=2)
    assert ledger.reserve("a", 1)
    assert ledger.reserve("a", 1)  # a retry re-attaching to the same attempt
    assert _ledger(moto_s3, s3_bucket, max_paid_requests=2).reserve("a", 1)  # another process
    assert ledger.reserve("b", 1)
    assert not ledger.reserve("c", 1)  # budget of 2 is spent
    assert ledger.reserve("a", 1)  # a reserved attempt stays reserved when the budget is full
    assert not ledger.reserve("a", 2)  # a new attempt of the same item pays again: refused
    assert ledger.snapshot().paid_requests() == 2


def test_release_gives_the_unit_back_and_settle_records_the_cost(moto_s3, s3_bucket):
    ledger = _ledger(moto_s3, s3_bucket, max_paid_requests=1, max_spend_usd=1.0)
    assert ledger.reserve("a", 1, usd=0.5)
    ledger.release("a", 1)
    assert ledger.reserve("b", 1, usd=0.5)
    ledger.settle({reservation_key("b", 1): 0.08, reservation_key("zzz", 1): 9.0})
    doc = _ledger(moto_s3, s3_bucket).snapshot()
    assert doc.paid_requests() == 1
    assert doc.spend_usd() == pytest.approx(0.08)
    assert "zzz#1" not in doc.reservations


def test_max_spend_counts_estimates_until_the_reported_cost_replaces_them(moto_s3, s3_bucket):
    ledger = _ledger(moto_s3, s3_bucket, max_spend_usd=0.25)
    assert ledger.reserve("a", 1, usd=0.1)
    assert ledger.reserve("b", 1, usd=0.1)
    assert not ledger.reserve("c", 1, usd=0.1)  # 0.3 > 0.25
    ledger.settle({reservation_key("a", 1): 0.02})  # the job cost less than listed
    assert ledger.reserve("c", 1, usd=0.1)  # 0.22 fits


def test_a_stale_writer_rereads_instead_of_overwriting(moto_s3, s3_bucket):
    first = _ledger(moto_s3, s3_bucket, max_paid_requests=2)
    second = _ledger(moto_s3, s3_bucket, max_paid_requests=2)
    assert first.reserve("a", 1)
    second.load()  # second now holds the current ETag
    assert first.reserve("b", 1)  # ... which is stale now
    assert not second.reserve("c", 1)  # its If-Match fails; it re-reads and sees the budget spent
    assert set(second.snapshot().reservations) == {"a#1", "b#1"}


def test_two_processes_racing_never_take_more_than_the_budget(moto_s3, s3_bucket):
    """Two ledgers (separate clients, as two triggerers) reserve 30 items each against a budget of 20."""
    ledgers = [_ledger(moto_s3, s3_bucket, max_paid_requests=20) for _ in range(2)]
    granted: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def work(ledger: SpendLedger, items: list[str]) -> None:
        start.wait()
        for item in items:
            if ledger.reserve(item, 1):
                with lock:
                    granted.append(item)

    items = [f"item-{n:02d}" for n in range(60)]
    threads = [
        threading.Thread(target=work, args=(ledgers[0], items[0:30:2])),
        threading.Thread(target=work, args=(ledgers[0], items[1:30:2])),
        threading.Thread(target=work, args=(ledgers[1], items[30::2])),
        threading.Thread(target=work, args=(ledgers[1], items[31::2])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    doc = _ledger(moto_s3, s3_bucket).snapshot()
    assert len(granted) == 20
    assert doc.paid_requests() == 20
    assert {k.split("#")[0] for k in doc.reservations} == set(granted)


def test_limits_and_policy_are_validated_with_the_field_named():
    with pytest.raises(ValueError, match="max_paid_requests"):
        BudgetLimits(max_paid_requests=-1)
    with pytest.raises(ValueError, match="max_spend_usd"):
        BudgetLimits(max_spend_usd=float("nan"))
    with pytest.raises(ValueError, match="on_budget_exhausted must be one of 'skip', 'fail', 'succeed'"):
        OnBudgetExhausted.parse("pause")
    assert OnBudgetExhausted.parse("fail") is OnBudgetExhausted.FAIL


def test_projected_spend_refuses_over_budget_or_balance_before_any_submit():
    limits = BudgetLimits(max_paid_requests=20, max_spend_usd=1.0)
    common = {"model_id": "m", "limits": limits, "balance_usd": None}
    # skip/succeed: the budget caps the projection (20 x 0.05 = 1.0 fits)
    assert (
        check_projected_spend(requests=50, price_per_request_usd=0.05, refuse_over_budget=False, **common)
        == 1.0
    )
    with pytest.raises(BudgetExceededError, match=r"exceeds max_spend_usd=\$1.00"):
        check_projected_spend(requests=50, price_per_request_usd=0.06, refuse_over_budget=True, **common)
    with pytest.raises(BudgetExceededError, match=r"balance \$0.50"):
        check_projected_spend(
            requests=50,
            price_per_request_usd=0.05,
            limits=limits,
            balance_usd=0.5,
            model_id="m",
            refuse_over_budget=False,
        )
    with pytest.raises(BudgetExceededError, match="reported no price"):
        check_projected_spend(requests=1, price_per_request_usd=None, refuse_over_budget=False, **common)
    assert (
        check_projected_spend(
            requests=1,
            price_per_request_usd=None,
            limits=BudgetLimits(max_paid_requests=1),
            balance_usd=0.0,
            model_id="m",
            refuse_over_budget=False,
        )
        is None
    )


def test_price_and_balance_are_read_leniently():
    assert ModelInfo.model_validate(
        {"base_price_usd": "0.08", "price_unit": "per_image"}
    ).price_per_request_usd(3) == pytest.approx(0.24)
    assert (
        ModelInfo.model_validate({"base_price_usd": 0.1, "price_unit": "request"}).price_per_request_usd(3)
        == 0.1
    )
    assert ModelInfo.model_validate({"base_price_usd": "n/a"}).price_per_request_usd(1) is None
    assert ModelInfo.model_validate({}).price_per_request_usd(1) is None
    assert BalanceResponse.model_validate({"balance_usd": -3}).balance_usd is None
    assert as_usd(True) is None
    assert as_usd("$1.5") == 1.5
    assert as_usd(float("inf")) is None


def test_a_refusal_is_decided_on_a_fresh_read_not_on_a_cached_one(moto_s3, s3_bucket):
    first = _ledger(moto_s3, s3_bucket, max_paid_requests=2)
    second = _ledger(moto_s3, s3_bucket, max_paid_requests=2)
    assert first.reserve("a", 1)
    assert first.reserve("b", 1)
    second.load()  # sees the budget spent
    first.release("a", 1)  # a POST that never left gives its unit back
    assert second.reserve("c", 1)
    assert second.snapshot().paid_requests() == 2
