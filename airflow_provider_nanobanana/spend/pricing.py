"""What an edit costs: the model's list price, the account balance and a job's reported cost.

Pure data and arithmetic, no I/O. RunComfy documents none of these endpoints (they appear only in
its own clients, see docs/cost-control.md), so every answer is read leniently: a missing or odd
field is ``None`` ("unknown"), never an error that would stop a paid job's result from being read.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


def as_usd(value: Any) -> float | None:
    """A finite, non-negative amount of dollars, or ``None`` for anything else (missing, text, NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().lstrip("$")
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelInfo(_Lenient):
    """``GET /v1/models/{model_id}``: only the price is read."""

    base_price_usd: float | None = None
    price_unit: str | None = None

    @field_validator("base_price_usd", mode="before")
    @classmethod
    def _price(cls, value: object) -> float | None:
        return as_usd(value)

    @field_validator("price_unit", mode="before")
    @classmethod
    def _unit(cls, value: object) -> str | None:
        return str(value).strip().lower() if value not in (None, "") else None

    def price_per_request_usd(self, num_images: int) -> float | None:
        """The list price of one request of ``num_images`` outputs, ``None`` when not reported.

        A unit that names images (``image``, ``per_image``, ``output``) is multiplied by the image
        count; anything else (``request``, ``run``, absent) is taken as a price per request.
        """
        if self.base_price_usd is None:
            return None
        per_image = self.price_unit is not None and (
            "image" in self.price_unit or "output" in self.price_unit
        )
        return self.base_price_usd * (num_images if per_image else 1)


class BalanceResponse(_Lenient):
    """``GET {balance_url}/balance``: the account's remaining credit."""

    balance_usd: float | None = None

    @field_validator("balance_usd", mode="before")
    @classmethod
    def _balance(cls, value: object) -> float | None:
        return as_usd(value)


def projected_spend_usd(requests: int, price_per_request_usd: float) -> float:
    return round(requests * price_per_request_usd, 6)
