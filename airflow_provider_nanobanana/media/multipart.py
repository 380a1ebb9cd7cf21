"""Streaming an output into S3 with bounded memory: one ``PutObject``, or a multipart upload.

At most about one part is held in memory, whatever the output's size. The sha256 of the bytes is only
known at the end of the stream, and it is what marks an object as complete (see ``archiver.py``), so
a small output gets it in its single ``PutObject`` and a multipart one gets it by an in-place
``CopyObject`` after ``CompleteMultipartUpload``. A failed multipart upload is aborted, so no orphaned
parts are billed; if S3 itself is unreachable the abort cannot be sent either, and the next run at the
same key aborts what was left (an ``AbortIncompleteMultipartUpload`` lifecycle rule covers the rest).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_nanobanana.media.errors import OutputFailure
from airflow_provider_nanobanana.media.keys import s3_uri
from airflow_provider_nanobanana.media.manifest import META_SHA256

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)


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
) -> tuple[int, str]:
    """Stream ``chunks`` into ``bucket/key`` holding at most about one part in memory; return (size, sha256).

    One part or less: a single ``PutObject`` with the sha256 in its metadata. More: a multipart upload,
    then an in-place ``CopyObject`` that adds the sha256 (only known at the end). Any failure before the
    upload completes aborts it, so no parts are left behind.
    """
    sha = hashlib.sha256()
    size = 0
    buffer = bytearray()
    upload: MultipartUpload | None = None
    try:
        for chunk in chunks:
            sha.update(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise OutputFailure(f"output is larger than max_output_bytes={max_bytes:,}", transient=False)
            buffer += chunk
            if len(buffer) >= part_size:
                if upload is None:
                    upload = MultipartUpload.start(client, bucket, key, content_type, metadata)
                upload.add_part(bytes(buffer))
                buffer.clear()
        digest = sha.hexdigest()
        final_metadata = {**metadata, META_SHA256: digest}
        if upload is None:
            client.put_object(
                Bucket=bucket, Key=key, Body=bytes(buffer), ContentType=content_type, Metadata=final_metadata
            )
            return size, digest
        if buffer:
            upload.add_part(bytes(buffer))
        etag = upload.complete()
        upload = None  # completed: nothing left to abort
        client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            CopySourceIfMatch=etag,
            MetadataDirective="REPLACE",
            ContentType=content_type,
            Metadata=final_metadata,
        )
        return size, digest
    except BaseException:
        if upload is not None:
            upload.abort()
        raise


@dataclass
class MultipartUpload:
    client: S3Client
    bucket: str
    key: str
    upload_id: str
    parts: list[CompletedPartTypeDef] = field(default_factory=list)

    @classmethod
    def start(
        cls, client: S3Client, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]
    ) -> MultipartUpload:
        abort_stale_uploads(client, bucket, key)
        response = client.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=content_type, Metadata=dict(metadata)
        )
        return cls(client, bucket, key, response["UploadId"])

    def add_part(self, body: bytes) -> None:
        number = len(self.parts) + 1
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def complete(self) -> str:
        response = self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )
        return str(response["ETag"])

    def abort(self) -> None:
        """Best effort: if S3 is unreachable the parts stay until a lifecycle rule removes them."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning(
                "Could not abort multipart upload of %s (%s); its parts remain until an "
                "AbortIncompleteMultipartUpload lifecycle rule removes them",
                s3_uri(self.bucket, self.key),
                type(exc).__name__,
            )


def abort_stale_uploads(client: S3Client, bucket: str, key: str) -> None:
    """Abort unfinished uploads an earlier, interrupted run left at this exact key.

    Keys are deterministic per request and output, so such uploads are ours: when S3 was down
    mid-upload the earlier abort could not be sent, and the rerun is the first chance to clean up.
    """
    response = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for upload in response.get("Uploads", []):
        if upload.get("Key") == key:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            log.info("Aborted a stale multipart upload of %s left by an interrupted run", s3_uri(bucket, key))
