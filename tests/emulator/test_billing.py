"""The emulator's billing (price, cost, balance) and its faults, over real HTTP."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, JobState
from tests.emulator.support import Api


def test_model_price_and_a_balance_that_goes_down_per_paid_job(api: Api) -> None:
    model = api.http.get(f"/v1/models/{DEFAULT_MODEL_ID}")
    assert model.status_code == 200
    assert model.json()["base_price_usd"] == pytest.approx(0.08)
    assert model.json()["price_unit"] == "image"
    assert api.http.get("/balance").json() == {"balance_usd": pytest.approx(100.0), "currency": "USD"}
    request_id = api.submit_id(num_images=2)  # 2 x 0.08
    assert api.http.get("/balance").json()["balance_usd"] == pytest.approx(99.84)
    api.wait(request_id, JobState.COMPLETED)
    assert api.result(request_id, include_cost="true")["cost"] == pytest.approx(0.16)
    counters = api.http.get("/_emulator/counters").json()
    assert counters["model_reads"] == 1
    assert counters["balance_reads"] == 2
    assert counters["spent_usd"] == pytest.approx(0.16)


def test_price_and_balance_need_the_token_and_a_known_model(api: Api) -> None:
    assert api.http.get("/v1/models/no/such/model").status_code == 404
    api.http.headers.pop("Authorization")
    assert api.http.get("/balance").status_code == 401
    assert api.http.get(f"/v1/models/{DEFAULT_MODEL_ID}").status_code == 401


@pytest.mark.emulator(billing_faults="price_missing,cost_missing,balance_500", balance_usd=1.0)
def test_billing_faults_take_price_cost_and_balance_away(api: Api) -> None:
    assert "base_price_usd" not in api.http.get(f"/v1/models/{DEFAULT_MODEL_ID}").json()
    request_id = api.submit_id()
    api.wait(request_id, JobState.COMPLETED)
    assert "cost" not in api.result(request_id, include_cost="true")
    assert api.http.get("/balance").status_code == 500


@pytest.mark.emulator(billing_faults=["balance_404"])
def test_balance_can_be_unknown_to_the_server(api: Api) -> None:
    assert api.http.get("/balance").status_code == 404
