"""A spend budget that survives retries, resumes and triggerer restarts: one small JSON ledger in S3.

Why S3 and not Airflow's task state store: the budget must be shared by writers Airflow keeps apart
(every map index of a mapped task, a batch trigger running in two triggerers at once, a task try
and the trigger an earlier try left behind), and the batch already keeps its truth in S3 with the
same conditional writes (:mod:`airflow_provider_nanobanana.batch.checkpoint`). The task state store
exists only from Airflow 3.3 and is scoped to one task instance.

The ledger is one object holding one *reservation* per paid attempt, keyed ``"{item}#{attempt}"``.
A reservation is made **before** the POST it pays for:

* reserving a key that is already reserved succeeds without counting it again, so a retry, a
  restarted trigger or a second copy of the trigger that reaches the same attempt never counts twice
  (and the batch's claims make a second POST impossible anyway);
* a reservation that would take the ledger past ``max_paid_requests`` or ``max_spend_usd`` is
  refused and nothing is written: the item ends ``skipped_budget``, unpaid;
* a POST that provably never left releases its reservation; a job's reported cost (``cost`` of
  ``GET .../result?include_cost=true``) replaces the pre-flight estimate when it is known.

Every change is a read-modify-write with ``If-Match`` on the ETag last read (``If-None-Match: *``
to create it), so two writers can never both take the last unit of budget: the loser re-reads and
decides again. The document grows by one small entry per paid attempt, never per skipped item.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_nanobanana.batch.checkpoint import BatchCheckpoint, is_conflict, put_json
from airflow_provider_nanobanana.choices import parse_choice
from airflow_provider_nanobanana.exceptions import BudgetExceededError, RunComfyError

#: Conditional writes retried when other writers keep winning (each retry re-reads the ledger).
MAX_WRITE_ATTEMPTS = 50
#: Amounts are compared with this slack so 20 x $0.05 fits a $1.00 budget despite float rounding.
USD_EPSILON = 1e-9
LEDGER_VERSION = 1
BATCH_LEDGER_FILENAME = "_batch/budget.json"


class OnBudgetExhausted(str, Enum):
    """What a task does with work the budget did not cover (those items are never paid)."""

    #: The single edit raises ``AirflowSkipException``; a batch ends with its skipped items listed.
    SKIP = "skip"
    #: The task fails (after every item the budget did cover has been archived).
    FAIL = "fail"
    #: The task succeeds; the skipped items are only in the manifest and the summary.
    SUCCEED = "succeed"

    @classmethod
    def parse(cls, value: object) -> OnBudgetExhausted:
        return parse_choice(cls, value, "on_budget_exhausted")


@dataclass(frozen=True)
class BudgetLimits:
    """``max_paid_requests`` and ``max_spend_usd``; ``None`` means no limit of that kind."""

    max_paid_requests: int | None = None
    max_spend_usd: float | None = None

    def __post_init__(self) -> None:
        n = self.max_paid_requests
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"max_paid_requests must be a whole number >= 0 or None, got {n!r}")
        usd = self.max_spend_usd
        if usd is not None and (
            isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 <= usd < float("inf")
        ):
            raise ValueError(f"max_spend_usd must be a finite number of dollars >= 0 or None, got {usd!r}")

    @property
    def is_set(self) -> bool:
        return self.max_paid_requests is not None or self.max_spend_usd is not None

    def as_kwargs(self) -> dict[str, Any]:
        return {"max_paid_requests": self.max_paid_requests, "max_spend_usd": self.max_spend_usd}


class Reservation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    #: The pre-flight estimate of this attempt, in USD (0 when no price is known).
    usd: float = 0.0
    #: What RunComfy reported the job cost, once known; replaces ``usd`` in the spend.
    cost_usd: float | None = None
    #: The POST provably never left: this attempt is not paid and no longer counts.
    released: bool = False
    at: float = 0.0

    @property
    def spend_usd(self) -> float:
        return self.cost_usd if self.cost_usd is not None else self.usd


class LedgerDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ledger_version: int = LEDGER_VERSION
    #: The limits of the last writer, for whoever reads the object; the caller's limits decide.
    limits: dict[str, Any] = Field(default_factory=dict)
    reservations: dict[str, Reservation] = Field(default_factory=dict)

    def paid_requests(self) -> int:
        return sum(1 for r in self.reservations.values() if not r.released)

    def spend_usd(self) -> float:
        return round(sum(r.spend_usd for r in self.reservations.values() if not r.released), 6)

    def summary(self) -> dict[str, Any]:
        return {"paid_requests": self.paid_requests(), "spend_usd": self.spend_usd()}


def reservation_key(item_key: str, attempt: int | str) -> str:
    return f"{item_key}#{attempt}"


class SpendLedger:
    """The budget of one batch, or of one DAG run's single edits sharing a ``budget_key``.

    Sync (boto3): triggers call it through ``asyncio.to_thread``. One instance serialises its own
    callers with a lock, so the threads of one trigger never race each other for the ETag; other
    processes are kept honest by the conditional writes alone.

    Costs, in S3 requests: one PUT per reservation while this process is the only writer (the ETag
    of its own last write is current), plus one GET and one PUT per lost race; a refusal is one GET
    (it is decided on a fresh read) and writes nothing; ``settle`` is one PUT for any number of items.
    """

    def __init__(self, client: Any, bucket: str, key: str, limits: BudgetLimits) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.limits = limits
        self._lock = threading.Lock()
        self._doc: LedgerDocument | None = None
        self._etag: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    # -- reading ----------------------------------------------------------------------------------
    def load(self) -> LedgerDocument:
        """Read the ledger (an absent object is an empty ledger) and remember its ETag."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except self._client.exceptions.NoSuchKey:
            self._doc, self._etag = LedgerDocument(), None
            return self._doc
        self._etag = response["ETag"]
        self._doc = LedgerDocument.model_validate(json.loads(response["Body"].read()))
        return self._doc

    def snapshot(self) -> LedgerDocument:
        with self._lock:
            return self.load().model_copy(deep=True)

    # -- changing ---------------------------------------------------------------------------------
    def reserve(self, item_key: str, attempt: int | str, *, usd: float = 0.0) -> bool:
        """Reserve one paid attempt before its POST; False when the budget cannot cover it.

        Idempotent per ``(item_key, attempt)``: reserving the same attempt again (a retry, a
        restarted or duplicated trigger) returns True and counts nothing more.
        """
        key = reservation_key(item_key, attempt)

        def change(doc: LedgerDocument) -> bool | None:
            held = doc.reservations.get(key)
            if held is not None and not held.released:
                return True  # already counted: nothing to write
            if not self._fits(doc, usd):
                return False
            doc.reservations[key] = Reservation(usd=max(0.0, usd), at=time.time())
            return None  # write it

        return self._update(change)

    def release(self, item_key: str, attempt: int | str) -> None:
        """The attempt's POST provably never reached RunComfy: give its unit of budget back."""
        key = reservation_key(item_key, attempt)

        def change(doc: LedgerDocument) -> bool | None:
            held = doc.reservations.get(key)
            if held is None or held.released:
                return True
            doc.reservations[key] = held.model_copy(update={"released": True})
            return None

        self._update(change)

    def settle(self, costs: Mapping[str, float | None]) -> None:
        """Record reported costs, ``{reservation_key(...): usd}``, in one write (unknown: skipped)."""
        known = {k: v for k, v in costs.items() if v is not None}
        if not known:
            return

        def change(doc: LedgerDocument) -> bool | None:
            changed = False
            for key, usd in known.items():
                held = doc.reservations.get(key)
                if held is not None and held.cost_usd != usd:
                    doc.reservations[key] = held.model_copy(update={"cost_usd": usd})
                    changed = True
            return None if changed else True

        self._update(change)

    def _fits(self, doc: LedgerDocument, usd: float) -> bool:
        limits = self.limits
        if limits.max_paid_requests is not None and doc.paid_requests() + 1 > limits.max_paid_requests:
            return False
        return limits.max_spend_usd is None or doc.spend_usd() + usd <= limits.max_spend_usd + USD_EPSILON

    def _update(self, change: Any) -> bool:
        """Apply ``change`` (returns True/False to stop without writing, None to write) under CAS."""
        with self._lock:
            fresh = self._doc is None
            doc = self.load() if self._doc is None else self._doc
            for _ in range(MAX_WRITE_ATTEMPTS):
                working = doc.model_copy(deep=True)
                verdict = change(working)
                if verdict is not None and not fresh:
                    # A write would be caught by If-Match, a decision without one would not: a
                    # refusal (or "already held") is only ever made on what S3 holds now.
                    doc, fresh = self.load(), True
                    continue
                if verdict is not None:
                    return bool(verdict)
                working.limits = {k: v for k, v in self.limits.as_kwargs().items() if v is not None}
                condition = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
                try:
                    response = put_json(
                        self._client, self.bucket, self.key, working.model_dump(mode="json"), **condition
                    )
                except Exception as exc:
                    if not is_conflict(exc):
                        self._doc = None  # unknown whether it was written: read it again next time
                        raise
                    time.sleep(random.uniform(0, 0.05))  # jitter, so racing writers spread out
                    doc, fresh = self.load(), True
                    continue
                self._doc, self._etag = working, response["ETag"]
                return True
        raise RunComfyError(f"could not update the spend ledger {self.uri}: other writers kept changing it")


def batch_ledger(checkpoint: BatchCheckpoint, limits: BudgetLimits) -> SpendLedger | None:
    """The budget of one batch, beside its checkpoint (``.../_batch/budget.json``); None: no budget.

    Per batch, not per try: a task retry resumes the same checkpoint, so it spends from the same
    ledger; an item's attempt is its claim number, which only ever grows.
    """
    if not limits.is_set:
        return None
    key = f"{checkpoint.prefix}/{BATCH_LEDGER_FILENAME}" if checkpoint.prefix else BATCH_LEDGER_FILENAME
    return SpendLedger(checkpoint.client, checkpoint.bucket, key, limits)


def check_projected_spend(
    *,
    requests: int,
    price_per_request_usd: float | None,
    limits: BudgetLimits,
    balance_usd: float | None,
    model_id: str,
    refuse_over_budget: bool,
) -> float | None:
    """Refuse, before any submit, work whose projected spend exceeds the budget or the balance.

    The projection is ``requests x price``. Over ``max_spend_usd`` it is refused only when
    ``refuse_over_budget`` (``on_budget_exhausted="fail"``: the task would fail anyway, so better
    before paying for anything); otherwise the budget pays for what it covers and skips the rest, so
    the projection is capped at the budget. What is left is then compared with the balance.
    Returns the capped projection, or ``None`` when no price is known (then nothing is checked,
    except that ``max_spend_usd`` without a price is an error: it could not be enforced).
    """
    if price_per_request_usd is None:
        if limits.max_spend_usd is not None:
            raise BudgetExceededError(
                f"max_spend_usd is set but RunComfy reported no price for {model_id!r} "
                "(GET /v1/models/{id} has no base_price_usd), so the spend cannot be bounded "
                "before paying; use max_paid_requests instead"
            )
        return None
    what = f"{requests} request(s) x ${price_per_request_usd:.4f}"
    if limits.max_paid_requests is not None:
        requests = min(requests, limits.max_paid_requests)
    projected = round(requests * price_per_request_usd, 6)
    if limits.max_spend_usd is not None and projected > limits.max_spend_usd + USD_EPSILON:
        if refuse_over_budget:
            raise BudgetExceededError(
                f"projected spend ${projected:.2f} ({what}) exceeds max_spend_usd="
                f"${limits.max_spend_usd:.2f} and on_budget_exhausted='fail'; nothing was submitted"
            )
        projected = float(limits.max_spend_usd)
    if balance_usd is not None and projected > balance_usd + USD_EPSILON:
        raise BudgetExceededError(
            f"projected spend ${projected:.2f} ({what}, within the budget) exceeds the account "
            f"balance ${balance_usd:.2f}; nothing was submitted"
        )
    return projected
