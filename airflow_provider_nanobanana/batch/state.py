"""What a batch knows about its items: pure data, saved as one JSON object in S3.

The state is a progress record that several writers may update (the worker before deferring, the
trigger, a second copy of the trigger in another triggerer). It is not what prevents paying twice:
that is the per-item claim in :mod:`.checkpoint`. So that concurrent writers never undo each other's
progress, every item carries a ``version`` bumped on each change and two views of the state are
merged item by item (:meth:`BatchState.merged_with`) instead of one overwriting the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_nanobanana.models import EventStatus
from airflow_provider_nanobanana.redaction import redact_url


class ItemState(str, Enum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    ACTIVE = "active"
    COMPLETED = "completed"
    ARCHIVED = "archived"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUBMIT_UNKNOWN = "submit_unknown"
    #: The spend budget (``max_paid_requests``/``max_spend_usd``) did not cover it: never submitted,
    #: never paid, not a failure (see spend/budget.py).
    SKIPPED_BUDGET = "skipped_budget"
    #: Its job completed but its outputs failed the quality gate (``on_bad_output``, media/quality.py):
    #: nothing of it archived. A failure.
    FAILED_QUALITY = "failed_quality"

    @property
    def is_final(self) -> bool:
        """Nothing more will happen to the item in the trigger."""
        return self in FINAL_ITEM_STATES

    @property
    def is_success(self) -> bool:
        return self in (ItemState.COMPLETED, ItemState.ARCHIVED)

    @property
    def is_failure(self) -> bool:
        return self in (
            ItemState.FAILED,
            ItemState.CANCELLED,
            ItemState.SUBMIT_UNKNOWN,
            ItemState.FAILED_QUALITY,
        )


FINAL_ITEM_STATES = frozenset(
    {
        ItemState.COMPLETED,
        ItemState.ARCHIVED,
        ItemState.FAILED,
        ItemState.CANCELLED,
        ItemState.SUBMIT_UNKNOWN,
        ItemState.SKIPPED_BUDGET,
        ItemState.FAILED_QUALITY,
    }
)


class BatchItem(BaseModel):
    """One edit of the batch. ``image_urls`` are as given (``s3://`` or https), never pre-signed."""

    model_config = ConfigDict(extra="ignore")

    id: str
    image_urls: list[str]
    prompt: str
    state: ItemState = ItemState.PENDING
    request_id: str | None = None
    #: Paid submissions of this item (bounded by ``item_retries``).
    attempts: int = 0
    #: Claims taken for this item; each POST is preceded by claim number ``claims`` (see checkpoint).
    claims: int = 0
    #: The generation (task try) that took claim number ``claims``: a later try looks for the claim
    #: there, so a POST an earlier try sent is found, not sent again. ``None``: written before 0.2.0.
    claim_generation: int | None = None
    #: When (epoch s) the item was last marked ``submitting``: its writer creates the claim just after,
    #: so a resume that finds no claim waits out the claim grace before calling the POST unsent.
    #: ``None``: written before this field existed.
    submitting_since: float | None = None
    #: Bumped on every change, so a merge keeps the most advanced view of the item.
    version: int = 0
    error: str = ""
    archived: list[str] = Field(default_factory=list)
    manifest: str | None = None
    #: USD RunComfy reported for the item's last job (``result?include_cost=true``), when it did.
    cost_usd: float | None = None
    #: The edit's content fingerprint (``spend/fingerprint.py``), computed with ``reuse_outputs``.
    fingerprint: str | None = None
    #: The earlier request whose archived outputs were copied instead of paying again (reuse).
    reused_from: str | None = None
    #: The quality gate's problems with its outputs (``{index: problem}``): flagged ones under
    #: ``on_bad_output="keep"``, the rejected ones of a ``failed_quality`` item.
    quality: dict[str, str] = Field(default_factory=dict)
    #: Paid requests the quality gate's ``resubmit`` added for this item (bounded by ``max_resubmits``).
    resubmits: int = 0

    def move(self, state: ItemState, *, error: str = "", request_id: str | None = None) -> None:
        """Change state (and keep ``version`` honest); ``request_id`` is kept unless a new one is given."""
        self.state, self.error = state, error[:500]
        if request_id is not None:
            self.request_id = request_id
        self.version += 1


class BatchState(BaseModel):
    """Everything the trigger needs to resume: the items and the shared edit parameters.

    ``generation`` is bumped by the worker each time a task try (re)starts the batch: a trigger left
    over from an earlier try sees a newer generation and stops instead of writing stale progress.
    """

    model_config = ConfigDict(extra="ignore")

    batch_id: str
    model_id: str
    parameters: dict[str, Any]
    items: list[BatchItem]
    generation: int = 0

    def counts(self) -> dict[str, int]:
        counts = Counter(item.state.value for item in self.items)
        return {state.value: counts.get(state.value, 0) for state in ItemState if counts.get(state.value)}

    def in_state(self, *states: ItemState) -> list[BatchItem]:
        return [item for item in self.items if item.state in states]

    def merge_items(self, items: Iterable[BatchItem]) -> None:
        """Add items not yet known (same id = same work), keeping the state of known ones."""
        known = {item.id for item in self.items}
        self.items.extend(item for item in items if item.id not in known)

    def merged_with(self, other: BatchState) -> BatchState:
        """This view combined with ``other`` (another writer's): per item the higher ``version`` wins,
        a known request id is never dropped, and items only one side knows are kept."""
        if other.generation != self.generation:
            return other if other.generation > self.generation else self
        theirs = {item.id: item for item in other.items}
        merged: list[BatchItem] = []
        for mine in self.items:
            other_item = theirs.pop(mine.id, None)
            merged.append(mine if other_item is None else _newer(mine, other_item))
        merged.extend(theirs.values())
        return self.model_copy(update={"items": merged})


def _newer(mine: BatchItem, theirs: BatchItem) -> BatchItem:
    chosen = mine if (mine.claims, mine.version) >= (theirs.claims, theirs.version) else theirs
    other = theirs if chosen is mine else mine
    if chosen.request_id is None and other.request_id is not None and other.claims == chosen.claims:
        chosen = chosen.model_copy(update={"request_id": other.request_id})
    return chosen


def summary(state: BatchState) -> dict[str, Any]:
    """Compact, JSON-safe numbers for XCom and events: never one entry per item."""
    return {
        "batch_id": state.batch_id,
        "total": len(state.items),
        "succeeded": sum(1 for item in state.items if item.state.is_success),
        "failed": sum(1 for item in state.items if item.state.is_failure),
        "counts": state.counts(),
    }


def manifest_entry(item: BatchItem) -> dict[str, Any]:
    entry = item.model_dump(
        mode="json",
        include={
            "id",
            "state",
            "request_id",
            "error",
            "archived",
            "manifest",
            "cost_usd",
            "fingerprint",
            "reused_from",
            "quality",
        },
    )
    entry["image_urls"] = [redact_url(u) for u in item.image_urls]
    return entry


class BatchEvent(BaseModel):
    """The one event a batch trigger yields: where the state is and how it ended."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal[EventStatus.SUCCESS, EventStatus.TIMEOUT, EventStatus.ERROR]
    checkpoint_uri: str
    message: str = ""
    summary: dict[str, Any] = Field(default_factory=dict)
