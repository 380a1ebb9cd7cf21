"""State of a batch of edits, checkpointed to S3 so a restart or retry never pays twice.

One JSON object per batch (``.../_batch/state.json`` under the output prefix) holds every item's
state and request id. It is written *before* each group of submits (items marked ``submitting``) and
again after (request ids recorded). An item found ``submitting`` on resume may or may not have
reached RunComfy, so it becomes ``submit_unknown`` and is never resubmitted automatically: the same
at-most-once rule the single-edit operator follows.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_nanobanana.redaction import redact_url

log = logging.getLogger(__name__)

STATE_FILENAME = "_batch/state.json"
MANIFEST_FILENAME = "_batch/manifest.json"


class ItemState(str, Enum):
    PENDING = "pending"
    SUBMITTING = "submitting"
    ACTIVE = "active"
    COMPLETED = "completed"
    ARCHIVED = "archived"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUBMIT_UNKNOWN = "submit_unknown"

    @property
    def is_final(self) -> bool:
        """Nothing more will happen to the item in the trigger."""
        return self in FINAL_ITEM_STATES

    @property
    def is_success(self) -> bool:
        return self in (ItemState.COMPLETED, ItemState.ARCHIVED)


FINAL_ITEM_STATES = frozenset(
    {ItemState.COMPLETED, ItemState.ARCHIVED, ItemState.FAILED, ItemState.CANCELLED, ItemState.SUBMIT_UNKNOWN}
)


class BatchItem(BaseModel):
    """One edit of the batch. ``image_urls`` are as given (``s3://`` or https), never pre-signed."""

    model_config = ConfigDict(extra="ignore")

    id: str
    image_urls: list[str]
    prompt: str
    state: ItemState = ItemState.PENDING
    request_id: str | None = None
    attempts: int = 0
    error: str = ""
    outputs: int = 0
    archived: list[str] = Field(default_factory=list)
    manifest: str | None = None


class BatchState(BaseModel):
    """Everything the trigger needs to resume: the items and the shared edit parameters."""

    model_config = ConfigDict(extra="ignore")

    batch_id: str
    model_id: str
    parameters: dict[str, Any]
    items: list[BatchItem]

    def counts(self) -> dict[str, int]:
        counts = Counter(item.state.value for item in self.items)
        return {state.value: counts.get(state.value, 0) for state in ItemState if counts.get(state.value)}

    def in_state(self, *states: ItemState) -> list[BatchItem]:
        return [item for item in self.items if item.state in states]

    def recover_interrupted_submits(self) -> list[BatchItem]:
        """Items caught mid-submit by a crash: their job may exist, so they are not sent again."""
        lost = self.in_state(ItemState.SUBMITTING)
        for item in lost:
            item.state = ItemState.SUBMIT_UNKNOWN
            item.error = "the process stopped while submitting; a job may exist, so it was not resubmitted"
        return lost

    def merge_items(self, items: Iterable[BatchItem]) -> None:
        """Add items not yet known (same id = same work), keeping the state of known ones."""
        known = {item.id for item in self.items}
        self.items.extend(item for item in items if item.id not in known)


def summary(state: BatchState) -> dict[str, Any]:
    """Compact, JSON-safe numbers for XCom and events: never one entry per item."""
    counts = state.counts()
    return {
        "batch_id": state.batch_id,
        "total": len(state.items),
        "succeeded": sum(1 for item in state.items if item.state.is_success),
        "failed": sum(
            1
            for item in state.items
            if item.state in (ItemState.FAILED, ItemState.CANCELLED, ItemState.SUBMIT_UNKNOWN)
        ),
        "counts": counts,
    }


def _manifest_entry(item: BatchItem) -> dict[str, Any]:
    entry = item.model_dump(
        mode="json", include={"id", "state", "request_id", "error", "archived", "manifest"}
    )
    entry["image_urls"] = [redact_url(u) for u in item.image_urls]
    return entry


class BatchEvent(BaseModel):
    """The one event a batch trigger yields: where the state is and how it ended."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["success", "timeout", "error"]
    checkpoint_uri: str
    message: str = ""
    summary: dict[str, Any] = Field(default_factory=dict)


class BatchCheckpoint:
    """Reads and writes the batch state object with a boto3 S3 client (sync: run it in a thread)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @property
    def state_key(self) -> str:
        return f"{self.prefix}/{STATE_FILENAME}" if self.prefix else STATE_FILENAME

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_FILENAME}" if self.prefix else MANIFEST_FILENAME

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.state_key}"

    def load(self) -> BatchState | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self.state_key)["Body"].read()
        except self._client.exceptions.NoSuchKey:
            return None
        return BatchState.model_validate_json(body)

    def save(self, state: BatchState) -> None:
        self._put(self.state_key, state.model_dump(mode="json"))

    def write_manifest(self, state: BatchState, extra: Mapping[str, Any]) -> str:
        manifest = {
            **summary(state),
            **extra,
            "model_id": state.model_id,
            "parameters": state.parameters,
            "items": [_manifest_entry(item) for item in state.items],
        }
        self._put(self.manifest_key, manifest)
        return f"s3://{self.bucket}/{self.manifest_key}"

    def _put(self, key: str, document: Mapping[str, Any]) -> None:
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
