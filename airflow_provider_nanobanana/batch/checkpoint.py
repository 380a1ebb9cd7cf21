"""The batch's S3 objects: its state, its claims and its manifest, written with conditional writes.

Why a POST is never sent twice for one item, even by two copies of the trigger at once (Airflow may
run one trigger in two triggerers: high-availability triggerers, reassignment after a missed
heartbeat): before every POST the submitter *claims* the item by creating
``_batch/claims/g<generation>/<item>/<n>`` with ``If-None-Match: *``. S3 lets exactly one create
succeed; only that writer POSTs, then records the request id in the claim. Everyone else reads the
claim to learn the id. A claim left without an id (its writer died mid-POST) means "a job may exist":
the item becomes ``submit_unknown`` and is never resent.

The state object (``_batch/state.json``) is written with ``If-Match`` on the ETag last read; when
another writer got there first, the two views are merged (:meth:`BatchState.merged_with`) and the
write is tried again, so no writer undoes another's progress.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import botocore.exceptions

from airflow_provider_nanobanana.batch.state import BatchItem, BatchState, manifest_entry, summary
from airflow_provider_nanobanana.exceptions import RunComfyError

STATE_FILENAME = "_batch/state.json"
MANIFEST_FILENAME = "_batch/manifest.json"
CLAIMS_DIRNAME = "_batch/claims"
#: Attempts to merge and rewrite the state when other writers keep winning the race.
MAX_SAVE_ATTEMPTS = 20
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


class BatchSupersededError(RunComfyError):
    """A newer task try restarted the batch; this (older) trigger must stop writing and submitting."""


class BatchCheckpoint:
    """Reads and writes the batch's objects with a boto3 S3 client (sync: run it in a thread)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._etag: str | None = None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def client(self) -> Any:
        return self._client

    @property
    def state_key(self) -> str:
        return self._key(STATE_FILENAME)

    @property
    def manifest_key(self) -> str:
        return self._key(MANIFEST_FILENAME)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.state_key}"

    # -- state ------------------------------------------------------------------------------------
    def load(self) -> BatchState | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.state_key)
        except self._client.exceptions.NoSuchKey:
            self._etag = None
            return None
        self._etag = response["ETag"]
        return BatchState.model_validate_json(response["Body"].read())

    def save(self, state: BatchState) -> BatchState:
        """Write ``state`` unless another writer changed the object since it was read; then merge
        the two views and try again. Returns what was written (the caller continues from it)."""
        generation = state.generation
        for _ in range(MAX_SAVE_ATTEMPTS):
            condition = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
            try:
                response = self._put(self.state_key, state.model_dump(mode="json"), **condition)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) not in _CONFLICT_CODES:
                    raise
                remote = self.load()
                if remote is not None:
                    state = state.merged_with(remote)
                if state.generation != generation:
                    raise BatchSupersededError(
                        f"batch {state.batch_id} was restarted by a newer task try (generation "
                        f"{state.generation}, this run {generation})"
                    ) from None
                continue
            self._etag = response["ETag"]
            return state
        raise RunComfyError(f"could not save {self.uri}: other writers kept changing it")

    # -- claims -----------------------------------------------------------------------------------
    def claim_key(self, generation: int, item: BatchItem) -> str:
        digest = hashlib.sha256(item.id.encode()).hexdigest()[:32]
        return self._key(f"{CLAIMS_DIRNAME}/g{generation}/{digest}/{item.claims}")

    def claim(self, generation: int, item: BatchItem, owner: str) -> bool:
        """Create the item's current claim; True only for the one writer whose create succeeded."""
        body = {"item": item.id, "owner": owner, "claimed_at": time.time()}
        try:
            self._put(self.claim_key(generation, item), body, IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _CONFLICT_CODES:
                return False
            raise
        return True

    def settle_claim(
        self, generation: int, item: BatchItem, owner: str, *, request_id: str | None, sent: bool
    ) -> None:
        """Record what the claimant's POST did: the request id, or that it provably never left."""
        body = {"item": item.id, "owner": owner, "request_id": request_id, "sent": sent}
        self._put(self.claim_key(generation, item), body)

    def read_claim(self, generation: int, item: BatchItem) -> dict[str, Any] | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.claim_key(generation, item))
        except self._client.exceptions.NoSuchKey:
            return None
        document = json.loads(response["Body"].read())
        return document if isinstance(document, dict) else None

    # -- manifest ---------------------------------------------------------------------------------
    def write_manifest(self, state: BatchState, extra: Mapping[str, Any]) -> str:
        manifest = {
            **summary(state),
            **extra,
            "model_id": state.model_id,
            "parameters": state.parameters,
            "items": [manifest_entry(item) for item in state.items],
        }
        self._put(self.manifest_key, manifest)
        return f"s3://{self.bucket}/{self.manifest_key}"

    def _put(self, key: str, document: Mapping[str, Any], **condition: str) -> Any:
        return put_json(self._client, self.bucket, key, document, **condition)


def put_json(client: Any, bucket: str, key: str, document: Mapping[str, Any], **condition: str) -> Any:
    """PUT ``document`` as compact JSON; ``condition`` is ``IfMatch=etag`` or ``IfNoneMatch="*"``.
    Shared with :mod:`airflow_provider_nanobanana.spend.budget`, whose ledger uses the same CAS."""
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **condition)


def is_conflict(exc: BaseException) -> bool:
    """True when a conditional write lost the race (another writer created or changed the object)."""
    return isinstance(exc, botocore.exceptions.ClientError) and _error_code(exc) in _CONFLICT_CODES


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
