"""Streamed uploads (``media/multipart.py``): S3 SHA-256 checksums, no copy, no multipart upload left behind."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any, cast

import pytest

from airflow_provider_nanobanana.media import OutputsNotArchivedError, S3MediaHook
from airflow_provider_nanobanana.media.errors import OutputFailure
from airflow_provider_nanobanana.media.multipart import composite_checksum, same_checksum, upload_stream
from tests.unit.media.support import (
    REQUEST_ID,
    RUN_DIR,
    FileServer,
    MiB,
    Route,
    archive,
    big_body,
    count_calls,
    image_bytes,
    keys_under,
)


def test_multipart_output_carries_s3_sha256_checksums_without_a_copy(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    """Each part and the object get S3's SHA-256 checksum; the archive is one GET and one upload."""
    block = os.urandom(MiB)
    part = hook.part_size_bytes
    total = 2 * part + 4 * MiB  # two whole parts and a short last one
    body = b"".join(big_body(total, block))
    url = files.serve("/big.png", Route(body=lambda: big_body(total, block), length=total, content_type=None))
    creates = count_calls(hook, "CreateMultipartUpload")
    parts = count_calls(hook, "UploadPart")
    copies = count_calls(hook, "CopyObject")

    result = archive(hook, [url], s3_bucket)

    part_digests = [hashlib.sha256(body[i : i + part]).digest() for i in range(0, total, part)]
    client = moto_s3.client()
    head = client.head_object(Bucket=s3_bucket, Key=result.outputs[0].key, ChecksumMode="ENABLED")
    assert len(creates) == 1
    assert creates[0]["ChecksumAlgorithm"] == "SHA256"
    assert [p["ChecksumSHA256"] for p in parts] == [base64.b64encode(d).decode() for d in part_digests]
    assert copies == []
    assert result.outputs[0].checksum_sha256 == composite_checksum(part_digests)
    assert same_checksum(head["ChecksumSHA256"], composite_checksum(part_digests))
    assert result.outputs[0].sha256 == hashlib.sha256(body).hexdigest()
    assert head["ContentLength"] == total
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["nanobanana-request-id"] == REQUEST_ID
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)
    assert files.requests["/big.png"] == 1


def test_small_output_is_one_put_with_its_full_sha256_checksum(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    body = image_bytes("png") + os.urandom(1000)
    url = files.serve("/small.png", Route(body=body))
    puts = count_calls(hook, "PutObject")

    output = archive(hook, [url], s3_bucket).outputs[0]

    full = base64.b64encode(hashlib.sha256(body).digest()).decode()
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=output.key, ChecksumMode="ENABLED")
    assert puts[0]["ChecksumSHA256"] == full == head["ChecksumSHA256"] == output.checksum_sha256
    assert head["Metadata"]["nanobanana-sha256"] == output.sha256 == hashlib.sha256(body).hexdigest()


def test_a_rerun_recognises_a_multipart_output_without_reading_or_uploading_it(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    """Idempotency rests on S3's checksum now: the rerun skips the output and still reports its sha256."""
    total = hook.part_size_bytes + 4 * MiB  # multipart
    block = os.urandom(MiB)
    url = files.serve("/big.png", Route(body=lambda: big_body(total, block), length=total))
    first = archive(hook, [url], s3_bucket)
    client = moto_s3.client()
    client.delete_object(Bucket=s3_bucket, Key=first.manifest_uri.split("/", 3)[3])  # the run failed after it
    creates = count_calls(hook, "CreateMultipartUpload")
    puts = count_calls(hook, "PutObject")

    second = archive(hook, [url], s3_bucket)

    assert second.to_xcom()["fetched_bytes"] == 0  # its GET (beside the existence check) closed unread
    assert creates == []
    assert len(puts) == 1  # the manifest only
    assert second.outputs[0].reused
    assert second.outputs[0].sha256 == first.outputs[0].sha256
    assert same_checksum(second.outputs[0].checksum_sha256, first.outputs[0].checksum_sha256)


def test_an_object_of_ours_without_a_checksum_is_not_taken_as_archived(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    client = moto_s3.client()
    key = f"{RUN_DIR}/{REQUEST_ID}_0.png"
    meta = {"nanobanana-request-id": REQUEST_ID, "nanobanana-output-index": "0"}
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"half", Metadata=meta)
    body = image_bytes("png")
    url = files.serve("/out.png", Route(body=body))

    output = archive(hook, [url], s3_bucket).outputs[0]

    assert not output.reused
    assert files.requests["/out.png"] == 1
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body


class _LyingS3:
    """A client whose PutObject answers with someone else's checksum."""

    def put_object(self, **params: Any) -> dict[str, Any]:
        return {"ChecksumSHA256": base64.b64encode(hashlib.sha256(b"other").digest()).decode()}


def test_a_checksum_s3_disagrees_with_fails_the_output_transiently() -> None:
    with pytest.raises(OutputFailure) as info:
        upload_stream(
            cast("Any", _LyingS3()),
            bucket="bkt",
            key="k.png",
            chunks=[b"bytes"],
            content_type="image/png",
            metadata={},
            part_size=8 * MiB,
            max_bytes=100 * MiB,
        )
    assert info.value.transient
    assert "checksum" in info.value.reason


def test_interrupted_download_aborts_the_multipart_upload(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    block = os.urandom(MiB)
    total, cut = 3 * hook.part_size_bytes, hook.part_size_bytes + 4 * MiB  # cut after the first part
    url = files.serve(
        "/cut.png",
        Route(body=lambda: big_body(total, block), length=total, drop_after=cut, content_type=None),
    )
    creates = count_calls(hook, "CreateMultipartUpload")
    aborts = count_calls(hook, "AbortMultipartUpload")

    with pytest.raises(OutputsNotArchivedError) as info:
        archive(hook, [url], s3_bucket)

    assert "output 0" in str(info.value)
    assert "download failed: RemoteProtocolError" in str(info.value)
    assert info.value.retryable
    assert files.requests["/cut.png"] == 2
    assert len(creates) == len(aborts) == 2  # one multipart upload per attempt, each aborted
    client = moto_s3.client()
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)
    assert keys_under(client, s3_bucket) == []


def test_a_rerun_aborts_uploads_an_unreachable_s3_left_behind(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    """When S3 was down mid-upload the abort could not be sent; the rerun cleans up its own key."""
    client = moto_s3.client()
    key = f"{RUN_DIR}/{REQUEST_ID}_0.png"
    client.create_multipart_upload(Bucket=s3_bucket, Key=key)  # the interrupted run's leftover
    client.create_multipart_upload(Bucket=s3_bucket, Key=f"{key}.other")  # someone else's: kept
    total = hook.part_size_bytes + 4 * MiB  # multipart
    url = files.serve("/big.png", Route(body=lambda: big_body(total, os.urandom(MiB)), length=total))
    archive(hook, [url], s3_bucket)
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == [f"{key}.other"]
