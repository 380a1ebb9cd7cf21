"""The spend budget of single edits: one ledger per DAG run and ``budget_key``, shared by a mapped fleet.

Every map index of ``NanoBananaEditOperator.partial(...).expand(...)`` (and any other single-edit
task given the same ``budget_key``) reserves from ``{prefix}_budget/{dag_id}/{run_id}/{budget_key}.json``
before it submits. The work item is the task instance (``task_id/map_index``) and the attempt its try
number: a retry that re-attaches to an earlier try's request submits nothing and reserves nothing; a
retry that must submit again pays again, and is counted again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_nanobanana._compat import AirflowFailException, AirflowSkipException
from airflow_provider_nanobanana.media.keys import fields_from_context, parse_s3_prefix, sanitize_key_field
from airflow_provider_nanobanana.spend.budget import (
    BudgetLimits,
    OnBudgetExhausted,
    SpendLedger,
    reservation_key,
)
from airflow_provider_nanobanana.spend.preflight import preflight_spend
from airflow_provider_nanobanana.spend.pricing import as_usd

log = logging.getLogger(__name__)

#: What a single edit over budget returns with ``on_budget_exhausted="succeed"``.
SKIPPED_BUDGET = "skipped_budget"


def check_budget_location(limits: BudgetLimits, budget_s3_uri: str | None, output_s3_uri: str | None) -> None:
    """At parse time: a budget needs an S3 prefix to keep its ledger in."""
    if limits.is_set and not (budget_s3_uri or output_s3_uri):
        raise ValueError(
            "max_paid_requests/max_spend_usd need an S3 prefix for the shared spend ledger: "
            "set budget_s3_uri (or output_s3_uri)"
        )


@dataclass(frozen=True)
class SingleEditBudget:
    """The ledger of this DAG run's budget and this task instance's place in it."""

    ledger: SpendLedger
    item_key: str
    attempt: int

    @classmethod
    def for_context(
        cls,
        context: Mapping[str, Any],
        client: Any,
        *,
        limits: BudgetLimits,
        uri: str,
        budget_key: str | None,
    ) -> SingleEditBudget | None:
        if not limits.is_set:
            return None
        bucket, prefix = parse_s3_prefix(uri, what="budget_s3_uri")
        fields = fields_from_context(context)
        name = sanitize_key_field(budget_key or fields["task_id"])
        key = f"{prefix}_budget/{sanitize_key_field(fields['dag_id'])}/{sanitize_key_field(fields['run_id'])}/{name}.json"
        try_number = getattr(context["ti"], "try_number", None) or 1
        return cls(
            SpendLedger(client, bucket, key, limits),
            item_key=f"{fields['task_id']}/{fields['map_index']}",
            attempt=int(try_number),
        )

    def key(self, paid: int = 1) -> str:
        """The attempt of this try's ``paid``-th request (a quality-gate resubmit is ``paid`` > 1)."""
        return str(self.attempt) if paid <= 1 else f"{self.attempt}.{paid}"

    def reserve(self, usd: float, paid: int = 1) -> bool:
        return self.ledger.reserve(self.item_key, self.key(paid), usd=usd)

    def release(self, paid: int = 1) -> None:
        self.ledger.release(self.item_key, self.key(paid))

    def settle(self, cost: object, paid: int = 1) -> float | None:
        """Record the reported cost (``None`` when RunComfy did not report one); returns it."""
        usd = as_usd(cost)
        self.ledger.settle({reservation_key(self.item_key, self.key(paid)): usd})
        return usd


def over_budget(policy: OnBudgetExhausted, limits: BudgetLimits, ledger_uri: str) -> dict[str, Any]:
    """The task's outcome when the budget cannot cover its edit: raise, or the ``succeed`` result."""
    message = (
        f"the spend budget {ledger_uri} ({limits.as_kwargs()}) is used up: this edit was not "
        "submitted and not paid"
    )
    if policy is OnBudgetExhausted.SKIP:
        raise AirflowSkipException(message)
    if policy is OnBudgetExhausted.FAIL:
        raise AirflowFailException(message)  # a retry would find the same budget: do not retry
    return {"request_id": None, "status": SKIPPED_BUDGET, "images": [], "archived": [], "manifest": None}


# -- what NanoBananaEditOperator calls (kept here so the operator module stays small) -------------


def spend_budget(operator: Any, context: Mapping[str, Any]) -> SingleEditBudget | None:
    """The budget of ``operator`` (a ``NanoBananaEditOperator``) in this task instance, if any."""
    if not operator.budget.is_set:
        return None
    return SingleEditBudget.for_context(
        context,
        operator.media.get_client(),
        limits=operator.budget,
        uri=operator.budget_s3_uri or operator.output_s3_uri or "",
        budget_key=operator.budget_key,
    )


def reserve_or_skip(operator: Any, context: Mapping[str, Any], paid: int = 1) -> dict[str, Any] | None:
    """Reserve the edit's request before it is sent; the over-budget outcome when it cannot be.

    ``paid`` > 1 is a quality-gate resubmit of the same try, which pays again and is counted again.
    Runs the pre-flight (price, balance) first; returns None when the request may be sent.
    """
    budget = spend_budget(operator, context)
    if budget is None:
        return None
    price = preflight_spend(
        operator.hook,
        limits=operator.budget,
        requests=1,
        num_images=operator.num_images,
        on_exhausted=operator.on_budget_exhausted,
    )
    if budget.reserve(price or 0.0, paid):
        return None
    outcome = over_budget(operator.on_budget_exhausted, operator.budget, budget.ledger.uri)
    return {**outcome, "model_id": operator.model_id}


def settle_cost(operator: Any, context: Mapping[str, Any], cost: object, paid: int = 1) -> float | None:
    """The cost RunComfy reported (USD, or None), recorded in the budget's ledger when there is one.

    Best effort, never raises: it runs after a paid job's outputs are archived, and a ledger that
    cannot be read or written must not fail a task whose work is done (the reservation stays counted).
    """
    try:
        budget = spend_budget(operator, context)
        if budget is not None:
            budget.settle(cost, paid)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not lose a paid, archived edit
        log.warning("Could not record the reported cost in the spend ledger (%s); the edit is kept", exc)
    return as_usd(cost)
