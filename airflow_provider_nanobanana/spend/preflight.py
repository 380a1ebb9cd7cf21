"""The budget pre-flight: read the list price and the balance once, refuse work that cannot be paid.

Runs on the worker before anything is submitted, only when a budget is set. It costs at most two GETs
per task try: ``GET /v1/models/{id}`` when a price is needed (``max_spend_usd``, or a balance to
compare with) and ``GET {balance_url}/balance`` when the connection names a ``balance_url``.
Neither endpoint is documented by RunComfy, so an unreadable answer never stops the work by itself;
only ``max_spend_usd`` without any price fails (it could not be enforced before paying).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_provider_nanobanana.exceptions import RunComfyAPIError
from airflow_provider_nanobanana.spend.budget import BudgetLimits, OnBudgetExhausted, check_projected_spend

if TYPE_CHECKING:
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook

log = logging.getLogger(__name__)


def preflight_spend(
    hook: RunComfyHook,
    *,
    limits: BudgetLimits,
    requests: int,
    num_images: int,
    on_exhausted: OnBudgetExhausted,
) -> float | None:
    """Check ``requests`` edits against the budget and the balance; returns the price per request
    (the reservation estimate), or ``None`` when it is unknown or not needed.

    :raises BudgetExceededError: the projected spend exceeds ``max_spend_usd`` (with
        ``on_budget_exhausted="fail"``) or the balance, or ``max_spend_usd`` is set and no price is known.
    """
    if not limits.is_set or requests <= 0:
        return None
    has_balance = hook.settings.balance_url is not None
    price = None
    if limits.max_spend_usd is not None or has_balance:
        try:
            price = hook.get_model().price_per_request_usd(num_images)
        except RunComfyAPIError as exc:
            log.warning("Could not read the price of %s: %s", hook.model_id, exc)
    balance = None
    if not has_balance:
        log.info("No balance_url in the RunComfy connection: the account balance is not checked")
    elif price is not None:
        try:
            answer = hook.get_balance()
            balance = answer.balance_usd if answer is not None else None
        except RunComfyAPIError as exc:
            log.warning("Could not read the account balance (not checked): %s", exc)
    projected = check_projected_spend(
        requests=requests,
        price_per_request_usd=price,
        limits=limits,
        balance_usd=balance,
        model_id=hook.model_id,
        refuse_over_budget=on_exhausted is OnBudgetExhausted.FAIL,
    )
    if projected is not None:
        log.info(
            "Budget pre-flight: %d request(s) at $%.4f each, projected spend $%.2f (balance %s)",
            requests,
            price,
            projected,
            "unknown" if balance is None else f"${balance:.2f}",
        )
    return price
