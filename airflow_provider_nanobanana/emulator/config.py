"""Settings of the offline RunComfy emulator: timing, outcomes and injected faults.

Everything that changes behaviour lives here so a test or benchmark can describe a scenario in one
value, and so the same value can be replaced on a running server (``PUT /_emulator/config``). All
random choices are drawn from generators seeded by ``seed``: the same settings and the same order of
requests give the same outcomes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, MAX_INPUT_IMAGE_BYTES

FaultEndpoint = Literal["submit", "status", "result", "cancel", "files"]
DropMode = Literal["mixed", "no_response", "truncated"]
#: The defects of ``bad_outputs.py`` (``BadOutputKind``), named here so settings need no Pillow.
BadOutput = Literal["blank", "zero_bytes", "truncated", "undecodable", "bomb", "wrong_count", "empty_url"]

ALL_ENDPOINTS: frozenset[FaultEndpoint] = frozenset({"submit", "status", "result", "cancel", "files"})
#: Output downloads are left alone by default: most scenarios are about the API, not the CDN.
DEFAULT_FAULT_ENDPOINTS: frozenset[FaultEndpoint] = frozenset({"submit", "status", "result", "cancel"})
FIVE_XX_STATUSES = (500, 502, 503, 504)
BillingFault = Literal["price_missing", "cost_missing", "balance_500", "balance_404"]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class FaultConfig(_Settings):
    """Failures injected in front of the endpoints listed in ``endpoints``.

    The ``rate_*`` values are shares of requests; one draw per request picks at most one of them (in
    the order drop, lost response, 429, 5xx, malformed, html), so rates add up rather than overlap.
    All of them are decided before the endpoint does its work, except ``rate_lost_response``: the
    submit is carried out (a job exists) and then the connection is dropped, the ambiguous case a
    client must never resubmit blindly.
    """

    latency_s: Seconds = 0.0
    rate_429: Rate = 0.0
    #: Sent as ``Retry-After``; ``None`` sends the 429 without one. Fractions are sent as decimals
    #: (``0.2``), which real servers never do, so fast tests need not wait whole seconds.
    retry_after_s: Seconds | None = 1.0
    rate_5xx: Rate = 0.0
    #: A fixed status for the 5xx fault; ``None`` picks one of 500/502/503/504 at random.
    status_5xx: Annotated[int, Field(ge=500, le=599)] | None = None
    rate_drop: Rate = 0.0
    #: How a dropped connection looks: closed before any response, or closed after the headers and
    #: part of a body announced by ``Content-Length``; ``mixed`` picks one of the two per drop.
    drop_mode: DropMode = "mixed"
    rate_lost_response: Rate = 0.0
    rate_malformed: Rate = 0.0
    rate_html: Rate = 0.0
    #: Every response of a faulted endpoint trickles its body over this many seconds.
    slow_body_s: Seconds = 0.0
    #: Output URLs handed out by ``result`` are already past their expiry (independent of ``endpoints``).
    expire_outputs: bool = False
    #: Jobs get this defect in their outputs (``bad_outputs.py``; independent of ``endpoints``).
    bad_output: BadOutput | None = None
    #: Only the next this many jobs get ``bad_output`` (counted from when it is set); ``None``: all.
    bad_output_jobs: Annotated[int, Field(ge=0)] | None = None
    endpoints: frozenset[FaultEndpoint] = DEFAULT_FAULT_ENDPOINTS

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_serializer("endpoints")
    def _sorted_endpoints(self, value: frozenset[str]) -> list[str]:
        return sorted(value)

    @property
    def any_rate(self) -> bool:
        rates = (self.rate_429, self.rate_5xx, self.rate_drop, self.rate_lost_response)
        return sum(rates) + self.rate_malformed + self.rate_html > 0


class EmulatorConfig(_Settings):
    """How the emulated service behaves; every field but ``token`` can be replaced at runtime."""

    token: str = Field(default="emulator-token", min_length=1, repr=False)
    queue_s: Seconds = 0.5
    run_s: Seconds = 1.0
    #: When set, each job runs a time drawn uniformly from ``[run_s, run_s_max]`` (from the seeded
    #: generator, at submit), so jobs of one batch finish at different moments; ``None``: all ``run_s``.
    run_s_max: Seconds | None = None
    #: Jobs beyond this many wait ``in_queue``; 0 means nothing ever starts ("stuck in queue").
    max_running: Annotated[int, Field(ge=0)] = 4
    failure_rate: Rate = 0.0
    seed: int = 0
    #: Divides every emulated duration (queue, run, injected latency, slow bodies): an accelerated clock.
    time_scale: Annotated[float, Field(gt=0.0)] = 1.0
    output_ttl_s: Annotated[float, Field(gt=0.0)] = 3600.0
    #: When > 0, each output file is a valid image padded to about this many bytes, streamed.
    output_pad_bytes: Annotated[int, Field(ge=0)] = 0
    max_input_bytes: Annotated[int, Field(ge=1)] = MAX_INPUT_IMAGE_BYTES
    input_timeout_s: Annotated[float, Field(gt=0.0)] = 30.0
    models: frozenset[str] = frozenset({DEFAULT_MODEL_ID})
    faults: FaultConfig = Field(default_factory=FaultConfig)
    #: The account's starting balance (``GET /balance``); every created job is charged its list price.
    balance_usd: Annotated[float, Field(ge=0.0)] = 100.0
    #: Take billing answers away (billing.py): no price, no cost, or ``/balance`` answering 500/404.
    billing_faults: frozenset[BillingFault] = frozenset()

    @model_validator(mode="after")
    def _run_range(self) -> EmulatorConfig:
        if self.run_s_max is not None and self.run_s_max < self.run_s:
            raise ValueError(f"run_s_max ({self.run_s_max}) must not be below run_s ({self.run_s})")
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("billing_faults", mode="before")
    @classmethod
    def _split_billing_faults(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_serializer("billing_faults")
    def _sorted_billing_faults(self, value: frozenset[str]) -> list[str]:
        return sorted(value)

    @field_serializer("models")
    def _sorted_models(self, value: frozenset[str]) -> list[str]:
        return sorted(value)

    def scaled(self, seconds: float) -> float:
        """An emulated duration in real seconds under ``time_scale``."""
        return seconds / self.time_scale

    def public_view(self) -> dict[str, object]:
        """The settings as JSON, without the token: the admin endpoint must not reveal it."""
        return self.model_dump(mode="json", exclude={"token"})
