"""Content-addressed reuse: an edit already archived under the same output prefix is not paid for again.

After a successful archive, one small JSON object per fingerprint is written under the output prefix,
``<prefix>_index/v1/<sha256>.json``: the request id, the manifest and every archived output with its
size, sha256 and S3 checksum. With ``reuse_outputs=True`` an operator looks its edit's fingerprint up
there before submitting. On a hit it checks that every recorded object is still there with the
recorded checksum (one ``HeadObject`` each; a stale entry means paying again, logged), then **copies**
the outputs server-side (``CopyObject``, no bytes through the worker) to this run's keys and writes
this run's manifest with ``reused_from``.

Copies, not references: this run's folder is then complete on its own (downstream tasks, Assets and
lifecycle rules see ordinary objects at the usual keys), and deleting the earlier run's folder cannot
break it. The price is one ``CopyObject`` per output and the storage of a second copy of each image.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from airflow_provider_nanobanana.batch.state import BatchItem, ItemState
from airflow_provider_nanobanana.media.keys import (
    DEFAULT_KEY_TEMPLATE,
    DEFAULT_MANIFEST_TEMPLATE,
    join_key,
    parse_s3_prefix,
    render_key,
    s3_uri,
)
from airflow_provider_nanobanana.media.manifest import (
    META_MODEL_ID,
    META_REQUEST_ID,
    ascii_metadata,
    build_manifest,
    sha256_text,
)
from airflow_provider_nanobanana.media.multipart import same_checksum
from airflow_provider_nanobanana.media.results import ArchivedOutput, ArchiveResult
from airflow_provider_nanobanana.spend.fingerprint import (
    FINGERPRINT_VERSION,
    InputHasher,
    edit_fingerprint,
    fingerprint,
    fingerprint_hex,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from airflow_provider_nanobanana.media.hook import S3MediaHook

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


@dataclass(frozen=True)
class IndexedOutput:
    """One archived output as the index records it."""

    index: int
    key: str
    size_bytes: int
    sha256: str
    checksum_sha256: str
    content_type: str


@dataclass(frozen=True)
class IndexEntry:
    """What one paid edit produced: enough to find, verify and copy its outputs."""

    fingerprint: str
    request_id: str
    model_id: str
    manifest_key: str
    outputs: tuple[IndexedOutput, ...]
    archived_at: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> IndexEntry:
        doc = json.loads(raw)
        outputs = tuple(IndexedOutput(**o) for o in doc.pop("outputs"))
        return cls(outputs=outputs, **doc)

    @property
    def reused_from(self) -> dict[str, str]:
        return {
            "request_id": self.request_id,
            "manifest_key": self.manifest_key,
            "fingerprint": self.fingerprint,
        }


class ReuseIndex:
    """The fingerprint index under one output prefix (``output_s3_uri``)."""

    def __init__(self, client: S3Client, dest_uri: str) -> None:
        self.client = client
        self.dest_uri = dest_uri
        self.bucket, self.prefix = parse_s3_prefix(dest_uri, what="output_s3_uri")

    def key_for(self, fingerprint: str) -> str:
        return f"{self.prefix}{INDEX_DIR}/{FINGERPRINT_VERSION}/{fingerprint_hex(fingerprint)}.json"

    # -- reading ----------------------------------------------------------------------------------
    def known(self) -> set[str]:
        """Every fingerprint indexed here, from one LIST (a page per 1,000): what a batch looks up."""
        found: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        folder = f"{self.prefix}{INDEX_DIR}/{FINGERPRINT_VERSION}/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                name = PurePosixPath(item["Key"]).name
                if name.endswith(".json"):
                    found.add(f"{FINGERPRINT_VERSION}:{name[: -len('.json')]}")
        return found

    def lookup(self, fingerprint: str) -> IndexEntry | None:
        """The entry for ``fingerprint``, or ``None`` (absent, unreadable or not ours: never trusted)."""
        key = self.key_for(fingerprint)
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return None
            raise
        try:
            entry = IndexEntry.from_json(raw)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("Ignoring unreadable reuse index entry %s (%s)", s3_uri(self.bucket, key), exc)
            return None
        if entry.fingerprint != fingerprint or not entry.outputs:
            log.warning("Ignoring reuse index entry %s: it describes other work", s3_uri(self.bucket, key))
            return None
        return entry

    def stale_reason(self, entry: IndexEntry) -> str | None:
        """Why the entry cannot be trusted (an output gone or changed), or ``None`` if every output checks out."""
        for out in entry.outputs:
            where = s3_uri(self.bucket, out.key)
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=out.key, ChecksumMode="ENABLED")
            except botocore.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                    return f"{where} is gone"
                raise
            if int(head.get("ContentLength", -1)) != out.size_bytes:
                return f"{where} is {head.get('ContentLength')} bytes, not the {out.size_bytes} recorded"
            if not same_checksum(head.get("ChecksumSHA256"), out.checksum_sha256):
                return f"{where} has checksum {head.get('ChecksumSHA256')}, not the {out.checksum_sha256} recorded"
        return None

    def usable(self, fingerprint: str) -> IndexEntry | None:
        """The entry if it exists and every output it names is intact; a stale one is logged and skipped."""
        entry = self.lookup(fingerprint)
        if entry is None:
            return None
        problem = self.stale_reason(entry)
        if problem is not None:
            log.warning(
                "Reuse index entry for %s (request %s) is stale: %s; this edit will be submitted and paid again",
                fingerprint,
                entry.request_id,
                problem,
            )
            return None
        return entry

    # -- writing ----------------------------------------------------------------------------------
    def record(self, fingerprint: str, result: ArchiveResult) -> IndexEntry:
        """Index an archive that just succeeded (its manifest is written: the archive is complete)."""
        entry = IndexEntry(
            fingerprint=fingerprint,
            request_id=result.request_id,
            model_id=result.model_id,
            manifest_key=result.manifest_uri.split("/", 3)[3],
            outputs=tuple(
                IndexedOutput(o.index, o.key, o.size_bytes, o.sha256, o.checksum_sha256, o.content_type)
                for o in result.outputs
            ),
            archived_at=result.finished_at,
        )
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key_for(fingerprint),
            Body=entry.to_json(),
            ContentType="application/json",
            Metadata=ascii_metadata({META_REQUEST_ID: result.request_id, META_MODEL_ID: result.model_id}),
        )
        return entry

    def copy_into_run(
        self,
        entry: IndexEntry,
        *,
        fields: Mapping[str, Any],
        key_template: str | None,
        prompt: str,
        inputs: Sequence[str],
        parameters: Mapping[str, Any],
    ) -> ArchiveResult:
        """Copy the entry's outputs server-side to this run's keys and write this run's manifest.

        Keys are rendered as the archiver would for the original request (``{request_id}`` is the
        request that produced the bytes); an output already at its key (same run) is not copied.
        """
        started_at, t0 = _utcnow(), time.monotonic()
        template = key_template or DEFAULT_KEY_TEMPLATE
        outputs = []
        for out in entry.outputs:
            ext = PurePosixPath(out.key).suffix.lstrip(".") or "png"
            values = {**fields, "request_id": entry.request_id, "index": out.index, "ext": ext}
            key = join_key(self.prefix, render_key(template, values), what="key_template")
            checksum = out.checksum_sha256
            if key != out.key:
                response = self.client.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": out.key},
                    MetadataDirective="COPY",
                    ChecksumAlgorithm="SHA256",
                )
                checksum = response.get("CopyObjectResult", {}).get("ChecksumSHA256") or checksum
            outputs.append(
                ArchivedOutput(
                    index=out.index,
                    source_url=s3_uri(self.bucket, out.key),
                    s3_uri=s3_uri(self.bucket, key),
                    key=key,
                    size_bytes=out.size_bytes,
                    sha256=out.sha256,
                    content_type=out.content_type,
                    checksum_sha256=checksum,
                    reused=True,
                )
            )
        manifest_values = {**fields, "request_id": entry.request_id}
        manifest_key = join_key(
            self.prefix, render_key(DEFAULT_MANIFEST_TEMPLATE, manifest_values), what="manifest_template"
        )
        finished_at, duration_s = _utcnow(), time.monotonic() - t0
        manifest = build_manifest(
            request_id=entry.request_id,
            model_id=entry.model_id,
            bucket=self.bucket,
            fields=fields,
            inputs=inputs,
            parameters=parameters,
            prompt_sha256=sha256_text(prompt),
            outputs=[o.to_dict() for o in outputs],
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
            fingerprint=entry.fingerprint,
            reused_from={**entry.reused_from, "manifest": s3_uri(self.bucket, entry.manifest_key)},
        )
        self.client.put_object(
            Bucket=self.bucket,
            Key=manifest_key,
            Body=json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"),
            ContentType="application/json",
            Metadata=ascii_metadata({META_REQUEST_ID: entry.request_id, META_MODEL_ID: entry.model_id}),
        )
        log.info(
            "Reused %d output(s) of request %s (fingerprint %s): copied to this run, nothing submitted or paid",
            len(outputs),
            entry.request_id,
            entry.fingerprint,
        )
        return ArchiveResult(
            request_id=entry.request_id,
            model_id=entry.model_id,
            bucket=self.bucket,
            outputs=tuple(outputs),
            manifest_uri=s3_uri(self.bucket, manifest_key),
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
        )


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def find_reusable(
    media: S3MediaHook,
    dest_uri: str,
    *,
    model_id: str,
    parameters: Mapping[str, Any],
    prompt: str,
    image_urls: Sequence[str],
) -> tuple[str, IndexEntry | None]:
    """The edit's fingerprint (inputs hashed once each) and the intact index entry for it, if any."""
    fp = edit_fingerprint(
        media, model_id=model_id, parameters=parameters, prompt=prompt, image_urls=image_urls
    )
    return fp, ReuseIndex(media.get_client(), dest_uri).usable(fp)


def reuse_batch_items(
    media: S3MediaHook,
    dest_uri: str,
    items: Sequence[BatchItem],
    *,
    model_id: str,
    parameters: Mapping[str, Any],
    fields: Mapping[str, Any],
    threads: int = 8,
) -> int:
    """Fingerprint every pending item (kept on the item for the index) and archive the indexed ones.

    One LIST of the index first, so only items whose fingerprint is there cost a lookup; each reused
    item ends ``archived`` with ``reused_from`` set, and is never submitted. Returns how many.
    """
    todo = [item for item in items if item.state is ItemState.PENDING]
    hasher = InputHasher(media.get_client, max_bytes=media.max_input_bytes, timeout_s=media.http_timeout_s)
    index = ReuseIndex(media.get_client(), dest_uri)

    def fingerprint_of(item: BatchItem) -> None:
        if item.fingerprint is None:
            digests = hasher.digests(item.image_urls)
            item.fingerprint = fingerprint(
                model_id=model_id, parameters=parameters, prompt=item.prompt, input_sha256=digests
            )

    def reuse(item: BatchItem) -> bool:
        assert item.fingerprint is not None
        entry = index.usable(item.fingerprint)
        if entry is None:
            return False
        result = index.copy_into_run(
            entry,
            fields=fields,
            key_template=None,
            prompt=item.prompt,
            inputs=item.image_urls,
            parameters={**parameters, "prompt": item.prompt},
        )
        item.archived, item.manifest, item.reused_from = result.s3_uris, result.manifest_uri, entry.request_id
        item.move(ItemState.ARCHIVED, request_id=entry.request_id)
        return True

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="nanobanana-reuse") as pool:
        list(pool.map(fingerprint_of, todo))
        known = index.known()
        hits = [item for item in todo if item.fingerprint in known]
        reused = sum(pool.map(reuse, hits))
    log.info(
        "Reuse: %d of %d pending item(s) already archived under %s; %d left to submit",
        reused,
        len(todo),
        dest_uri,
        len(todo) - reused,
    )
    return reused


def remember(media: S3MediaHook, dest_uri: str, fp: str | None, result: ArchiveResult) -> None:
    """Index a finished archive for later reuse; a failure only costs a future reuse, so it is logged."""
    if fp is None:
        return
    try:
        ReuseIndex(media.get_client(), dest_uri).record(fp, result)
    except Exception as exc:  # noqa: BLE001 - the outputs are archived; only the shortcut is lost
        log.warning(
            "Could not index request %s for reuse (%s: %s); a later run will pay for it again",
            result.request_id,
            type(exc).__name__,
            exc,
        )
