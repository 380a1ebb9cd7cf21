"""Streaming an output into S3 with bounded memory: one ``PutObject``, or a pipelined multipart upload.

At most about two parts are held in memory, whatever the output's size: the part being uploaded (by
one background thread) and the part being read from the file host. Overlapping the two is what makes a
large output arrive faster than a download-then-upload.

Integrity is S3's own: every ``PutObject`` and ``UploadPart`` carries the SHA-256 of its bytes
(``ChecksumAlgorithm="SHA256"`` plus the value computed while streaming), S3 refuses a body that does
not match, and the completed object keeps the checksum (the full-object one for a single ``PutObject``,
the composite ``<base64>-<parts>`` one for a multipart upload), readable with
``HeadObject(ChecksumMode="ENABLED")``. So the archive is one streamed GET and one upload: no
``CopyObject`` rewrite after the upload to record a hash that is only known at the end. The sha256 of
the whole output is still computed while streaming and returned (it goes into the manifest); a single
``PutObject`` also carries it in its metadata, since it is known before that request is sent.

A failed multipart upload is aborted, so no orphaned parts are billed; if S3 itself is unreachable the
abort cannot be sent either, and the next run at the same key aborts what was left (an
``AbortIncompleteMultipartUpload`` lifecycle rule covers the rest).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from airflow_provider_nanobanana.media.errors import OutputFailure
from airflow_provider_nanobanana.media.keys import s3_uri
from airflow_provider_nanobanana.media.manifest import META_SHA256

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

CHECKSUM_ALGORITHM: Final = "SHA256"


@dataclass(frozen=True)
class Uploaded:
    """What one :func:`upload_stream` stored."""

    size: int
    #: Hex sha256 of the whole output, computed while streaming.
    sha256: str
    #: S3's ``ChecksumSHA256`` of the object: full-object base64, or composite ``<base64>-<parts>``.
    checksum_sha256: str


def b64_digest(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def composite_checksum(part_digests: Iterable[bytes]) -> str:
    """S3's composite SHA-256 of a multipart object: sha256 over the parts' raw digests, then ``-N``."""
    digests = list(part_digests)
    return f"{b64_digest(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"


def same_checksum(a: str | None, b: str | None) -> bool:
    """Equal S3 checksums, ignoring the ``-N`` part count some S3 implementations (moto) leave out."""
    if not a or not b:
        return False
    return a.split("-", 1)[0] == b.split("-", 1)[0]


def hex_of_full_checksum(checksum: str) -> str | None:
    """The hex sha256 of the whole object from a full-object checksum; ``None`` for a composite one."""
    if "-" in checksum:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == hashlib.sha256().digest_size else None


def upload_stream(
    client: S3Client,
    *,
    bucket: str,
    key: str,
    chunks: Iterable[bytes],
    content_type: str,
    metadata: Mapping[str, str],
    part_size: int,
    max_bytes: int,
) -> Uploaded:
    """Stream ``chunks`` into ``bucket/key`` holding at most about two parts in memory.

    One part or less: a single ``PutObject`` with its SHA-256 checksum and the sha256 in metadata.
    More: a multipart upload with a SHA-256 checksum per part; each part is uploaded in the background
    while the next is read. Any failure before the upload completes aborts it, so no parts are left
    behind. Raises :class:`OutputFailure` if S3 reports a checksum other than the one computed here.
    """
    sha = hashlib.sha256()
    size = 0
    buffer = _PartBuffer()
    upload: MultipartUpload | None = None
    try:
        for chunk in chunks:
            sha.update(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise OutputFailure(f"output is larger than max_output_bytes={max_bytes:,}", transient=False)
            buffer.add(chunk)
            if buffer.size >= part_size:
                if upload is None:
                    upload = MultipartUpload.start(client, bucket, key, content_type, metadata)
                upload.add_part(buffer.take())
        digest = sha.digest()
        if upload is None:
            expected = b64_digest(digest)
            response = client.put_object(
                Bucket=bucket,
                Key=key,
                Body=buffer.take(),
                ContentType=content_type,
                Metadata={**metadata, META_SHA256: digest.hex()},
                ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                ChecksumSHA256=expected,
            )
        else:
            if buffer.size:
                upload.add_part(buffer.take())
            response_checksum = upload.complete()
            expected = upload.expected_checksum
            upload = None  # completed: nothing left to abort
            return _checked(bucket, key, size, digest, expected, response_checksum)
        return _checked(bucket, key, size, digest, expected, response.get("ChecksumSHA256"))
    except BaseException:
        if upload is not None:
            upload.abort()
        raise


def _checked(
    bucket: str, key: str, size: int, digest: bytes, expected: str, reported: str | None
) -> Uploaded:
    if reported and not same_checksum(reported, expected):
        raise OutputFailure(
            f"S3 stored {s3_uri(bucket, key)} with checksum {reported}, not the {expected} of the bytes sent",
            transient=True,
        )
    return Uploaded(size=size, sha256=digest.hex(), checksum_sha256=expected)


class _PartBuffer:
    """The chunks of the part being read, joined once when the part is full (one copy, not two)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.size += len(chunk)

    def take(self) -> bytes:
        body = b"".join(self._chunks)
        self._chunks, self.size = [], 0
        return body


@dataclass
class MultipartUpload:
    """One multipart upload with a SHA-256 checksum per part, uploading one part in the background."""

    client: S3Client
    bucket: str
    key: str
    upload_id: str
    parts: list[CompletedPartTypeDef] = field(default_factory=list)
    part_digests: list[bytes] = field(default_factory=list)
    _pending: Future[None] | None = None
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "nanobanana-part"))

    @classmethod
    def start(
        cls, client: S3Client, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]
    ) -> MultipartUpload:
        """Create the upload; an interrupted run's leftovers at this key are aborted in the background.

        That clean-up is a LIST (and rarely an abort) which only matters after a failure, so it runs on
        the part thread while the next part is read, never aborting this upload.
        """
        response = client.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            ContentType=content_type,
            Metadata=dict(metadata),
            ChecksumAlgorithm=CHECKSUM_ALGORITHM,
        )
        upload = cls(client, bucket, key, response["UploadId"])
        upload._pending = upload._pool.submit(abort_stale_uploads, client, bucket, key, upload.upload_id)
        return upload

    @property
    def expected_checksum(self) -> str:
        return composite_checksum(self.part_digests)

    def add_part(self, body: bytes) -> None:
        """Queue ``body`` as the next part, once the previous part is in (so at most one is in flight).

        The part's SHA-256 is computed on the part thread too: hashlib releases the GIL, so it runs
        beside the whole-output hash and the read of the next part instead of after them.
        """
        self._wait()
        self._pending = self._pool.submit(self._send, len(self.part_digests) + 1, body)

    def _send(self, number: int, body: bytes) -> None:
        digest = hashlib.sha256(body).digest()
        self.part_digests.append(digest)  # parts are sent one at a time, in order
        checksum = b64_digest(digest)
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm=CHECKSUM_ALGORITHM,
            ChecksumSHA256=checksum,
        )
        reported = response.get("ChecksumSHA256")
        if reported and reported != checksum:
            raise OutputFailure(
                f"S3 stored part {number} with checksum {reported}, not {checksum}", transient=True
            )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum})

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def complete(self) -> str | None:
        """Complete the upload; return the checksum S3 reports for the object, if it reports one."""
        self._wait()
        response = self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": sorted(self.parts, key=lambda p: p["PartNumber"])},
        )
        self.close()
        return response.get("ChecksumSHA256")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Best effort: if S3 is unreachable the parts stay until a lifecycle rule removes them."""
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the original error is what is raised
            pass
        finally:
            self.close()
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning(
                "Could not abort multipart upload of %s (%s); its parts remain until an "
                "AbortIncompleteMultipartUpload lifecycle rule removes them",
                s3_uri(self.bucket, self.key),
                type(exc).__name__,
            )


def abort_stale_uploads(client: S3Client, bucket: str, key: str, current_upload_id: str) -> None:
    """Abort unfinished uploads an earlier, interrupted run left at this exact key, except ``current_upload_id``.

    Keys are deterministic per request and output, so such uploads are ours: when S3 was down
    mid-upload the earlier abort could not be sent, and the rerun is the first chance to clean up.
    """
    response = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for upload in response.get("Uploads", []):
        if upload.get("Key") == key and upload.get("UploadId") != current_upload_id:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            log.info("Aborted a stale multipart upload of %s left by an interrupted run", s3_uri(bucket, key))


def is_composite(head: Mapping[str, object]) -> bool:
    """Whether a HEAD's ``ChecksumSHA256`` is a multipart composite (moto drops the ``-N``; the ETag keeps it)."""
    checksum = str(head.get("ChecksumSHA256") or "")
    etag = str(head.get("ETag") or "").strip('"')
    return "-" in checksum or head.get("ChecksumType") == "COMPOSITE" or "-" in etag


def archived_sha256(client: S3Client, bucket: str, key: str, head: Mapping[str, object]) -> str:
    """The hex sha256 of an archived object's bytes, from its HEAD if it holds it, else by reading it.

    A single-``PutObject`` object carries it twice (metadata and full-object checksum); a multipart one
    only has S3's composite checksum, so its bytes are streamed back once (1 MiB at a time) to hash.
    That only happens when a rerun finds a large output archived by a run that then failed.
    """
    meta = head.get("Metadata")
    if isinstance(meta, Mapping) and meta.get(META_SHA256):
        return str(meta[META_SHA256])
    checksum = str(head.get("ChecksumSHA256") or "")
    if checksum and not is_composite(head):
        full = hex_of_full_checksum(checksum)
        if full:
            return full
    sha = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        for chunk in body.iter_chunks(1024 * 1024):
            sha.update(chunk)
    finally:
        body.close()
    return sha.hexdigest()
