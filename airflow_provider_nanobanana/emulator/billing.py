"""The emulator's billing: a list price, a job's reported cost and an account balance.

RunComfy documents none of this; its own clients read ``GET /v1/models/{id}`` (``base_price_usd``,
``price_unit``), ``GET .../result?include_cost=true`` (``cost``, USD) and ``GET {core API}/balance``
(``balance_usd``), and that is what is served here. Every created job is charged its list price at
submit, so the balance goes down as a client pays. ``billing_faults`` (see :class:`EmulatorConfig`)
take each piece away: ``price_missing``, ``cost_missing``, ``balance_500``, ``balance_404``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_provider_nanobanana.models import EditRequest, JobState

if TYPE_CHECKING:
    from airflow_provider_nanobanana.emulator.app import Emulator
    from airflow_provider_nanobanana.emulator.jobs import Job

#: Emulated list price per output image, by resolution; ``GET /v1/models/{id}`` reports the 1K one.
PRICE_PER_IMAGE_USD = {"0.5K": 0.06, "1K": 0.08, "2K": 0.12, "4K": 0.16}
LISTED_RESOLUTION = "1K"


def list_price_usd(request: EditRequest) -> float:
    return round(PRICE_PER_IMAGE_USD[request.resolution] * request.num_images, 4)


def job_cost_usd(job: Job) -> float:
    """What a finished job reports it cost: its list price when it completed, nothing otherwise."""
    return list_price_usd(job.request) if job.state is JobState.COMPLETED else 0.0


def charge(emulator: Emulator, request: EditRequest) -> None:
    """A job was created: it is paid for (at submit, like a prepaid wallet)."""
    emulator.counters.spent_usd = round(emulator.counters.spent_usd + list_price_usd(request), 6)


def add_cost(emulator: Emulator, job: Job, body: dict[str, Any]) -> None:
    """``result?include_cost=true`` of a finished job: add ``cost`` unless ``cost_missing``."""
    if "cost_missing" not in emulator.config.billing_faults:
        body["cost"] = job_cost_usd(job)


async def model_info(emulator: Emulator, request: Request) -> Response:
    emulator.counters.model_reads += 1
    if (denied := emulator.deny(request)) is not None:
        return denied
    model_id = request.path_params["model_id"]
    if model_id not in emulator.config.models:
        return JSONResponse(
            {"error_code": 404001, "error_message": f"ResourceNotFound: no model {model_id!r}"}, 404
        )
    body: dict[str, Any] = {"model_id": model_id, "name": model_id.rsplit("/", 1)[-1]}
    if "price_missing" not in emulator.config.billing_faults:
        body.update(base_price_usd=PRICE_PER_IMAGE_USD[LISTED_RESOLUTION], price_unit="image")
    return JSONResponse(body)


async def balance(emulator: Emulator, request: Request) -> Response:
    emulator.counters.balance_reads += 1
    if (denied := emulator.deny(request)) is not None:
        return denied
    faults = emulator.config.billing_faults
    if "balance_500" in faults:
        return JSONResponse({"error_code": 500001, "error_message": "InternalError (emulated)"}, 500)
    if "balance_404" in faults:
        return JSONResponse({"error_code": 404001, "error_message": "ResourceNotFound (emulated)"}, 404)
    left = max(0.0, round(emulator.config.balance_usd - emulator.counters.spent_usd, 6))
    return JSONResponse({"balance_usd": left, "currency": "USD"})
