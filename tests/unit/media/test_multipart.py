"""Streamed uploads (``media/multipart.py``): checksum metadata, and no multipart upload left behind."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from airflow_provider_nanobanana.media import OutputsNotArchivedError, S3MediaHook
from tests.unit.media.support import (
    REQUEST_ID,
    RUN_DIR,
    FileServer,
    MiB,
    Route,
    archive,
    big_body,
    count_calls,
    keys_under,
)


def test_multipart_output_gets_checksum_metadata_and_leaves_no_uploads(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    block = os.urandom(MiB)
    total = 20 * MiB  # more than two 8 MiB parts
    url = files.serve("/big.png", Route(body=lambda: big_body(total, block), length=total, content_type=None))
    creates = count_calls(hook, "CreateMultipartUpload")

    result = archive(hook, [url], s3_bucket)

    expected = hashlib.sha256(b"".join(big_body(total, block))).hexdigest()
    client = moto_s3.client()
    head = client.head_object(Bucket=s3_bucket, Key=result.outputs[0].key)
    assert len(creates) == 1
    assert head["ContentLength"] == total
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["nanobanana-sha256"] == expected == result.outputs[0].sha256
    assert head["Metadata"]["nanobanana-request-id"] == REQUEST_ID
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)


def test_interrupted_download_aborts_the_multipart_upload(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    block = os.urandom(MiB)
    total = 30 * MiB
    url = files.serve(
        "/cut.png",
        Route(body=lambda: big_body(total, block), length=total, drop_after=12 * MiB, content_type=None),
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
    total = 20 * MiB
    url = files.serve("/big.png", Route(body=lambda: big_body(total, os.urandom(MiB)), length=total))
    archive(hook, [url], s3_bucket)
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == [f"{key}.other"]
