"""What an archive call reports: each output that is safely in S3, each that is not, and the whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ArchivedOutput:
    """One output that is safely in S3."""

    index: int
    #: The output URL, redacted (:func:`airflow_provider_nanobanana.redaction.redact_url`).
    source_url: str
    s3_uri: str
    key: str
    size_bytes: int
    sha256: str
    content_type: str
    #: S3's SHA-256 checksum of the object (base64; ``-N`` suffixed for a multipart upload).
    checksum_sha256: str = ""
    #: True when an earlier run had already archived it, so nothing was fetched this time.
    reused: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MissingOutput:
    """One output that could not be archived, and whether a rerun may succeed."""

    index: int
    #: The output URL, redacted.
    source_url: str
    reason: str
    transient: bool


@dataclass(frozen=True)
class ArchiveResult:
    """What :meth:`S3MediaHook.archive_outputs` stored; :meth:`to_xcom` is JSON-safe and secret-free."""

    request_id: str
    model_id: str
    bucket: str
    outputs: tuple[ArchivedOutput, ...]
    manifest_uri: str
    started_at: str
    finished_at: str
    duration_s: float

    @property
    def s3_uris(self) -> list[str]:
        """Archived objects in output order."""
        return [o.s3_uri for o in self.outputs]

    @property
    def total_bytes(self) -> int:
        return sum(o.size_bytes for o in self.outputs)

    @property
    def fetched_bytes(self) -> int:
        return sum(o.size_bytes for o in self.outputs if not o.reused)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "bucket": self.bucket,
            "s3_uris": self.s3_uris,
            "manifest_uri": self.manifest_uri,
            "total_bytes": self.total_bytes,
            "fetched_bytes": self.fetched_bytes,
            "reused_count": sum(o.reused for o in self.outputs),
            "outputs": [o.to_dict() for o in self.outputs],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
        }
