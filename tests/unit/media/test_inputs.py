"""Inputs (``media/inputs.py``) against a real S3 HTTP API: checks, staging, pre-signing, masking."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.media import InvalidInputImageError, S3MediaHook
from airflow_provider_nanobanana.models import MAX_INPUT_IMAGE_BYTES
from tests.unit.media.support import PNG, count_calls, keys_under, make_hook


def test_s3_input_becomes_a_sigv4_presigned_url_that_fetches_the_bytes(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str
) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="in/cat.png", Body=PNG, ContentType="image/png")

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/in/cat.png"])

    assert url.startswith(f"{moto_s3.endpoint_url}/{s3_bucket}/in/cat.png?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "X-Amz-Expires=21600" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == PNG


def test_http_inputs_pass_through_unchanged(hook: S3MediaHook) -> None:
    urls = ["https://example.com/a.png?X-Amz-Signature=x", "http://127.0.0.1:9/b.jpg"]
    assert hook.resolve_inputs(urls) == urls


def test_missing_s3_object_names_the_field_and_uri(hook: S3MediaHook, moto_s3: Any, s3_bucket: str) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="ok.png", Body=PNG, ContentType="image/png")
    with pytest.raises(InvalidEditRequestError) as info:
        hook.resolve_inputs([f"s3://{s3_bucket}/ok.png", f"s3://{s3_bucket}/nope.png"])
    assert f"image_urls[1]: s3://{s3_bucket}/nope.png does not exist" in str(info.value)
    assert "image_urls[0]" not in str(info.value)


def test_wrong_content_type_is_named(hook: S3MediaHook, moto_s3: Any, s3_bucket: str) -> None:
    moto_s3.client().put_object(
        Bucket=s3_bucket, Key="doc.png", Body=PNG, ContentType="application/octet-stream"
    )
    with pytest.raises(
        InvalidEditRequestError,
        match=r"image_urls\[0\]: .*doc.png has Content-Type 'application/octet-stream'",
    ):
        hook.resolve_inputs([f"s3://{s3_bucket}/doc.png"])


def test_oversized_object_reports_both_sizes(moto_s3: Any, s3_bucket: str) -> None:
    assert S3MediaHook(None).max_input_bytes == MAX_INPUT_IMAGE_BYTES
    hook = make_hook(moto_s3.endpoint_url, max_input_bytes=10)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="big.png", Body=PNG, ContentType="image/png")
    with pytest.raises(InvalidEditRequestError) as info:
        hook.resolve_inputs([f"s3://{s3_bucket}/big.png"])
    assert f"image_urls[0]: s3://{s3_bucket}/big.png is {len(PNG):,} bytes" in str(info.value)
    assert "at most 10 bytes" in str(info.value)


def test_folder_and_unsupported_schemes_are_refused(hook: S3MediaHook, s3_bucket: str) -> None:
    with pytest.raises(InvalidInputImageError) as info:
        hook.resolve_inputs(
            [f"s3://{s3_bucket}/folder/", "gs://bucket/key.png", "data:image/png;base64,AAAA", ""]
        )
    problems = info.value.problems
    assert problems[0].startswith("image_urls[0]: ")
    assert "names a bucket or folder" in problems[0]
    assert problems[1].startswith("image_urls[1]: ")
    assert "not supported" in problems[1]
    assert problems[2].startswith("image_urls[2]: ")
    assert "not supported" in problems[2]
    assert problems[3] == "image_urls[3]: must be a non-empty string"


def test_every_input_is_checked_before_anything_is_staged(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "local.png"
    local.write_bytes(PNG)
    with pytest.raises(InvalidInputImageError, match=r"image_urls\[1\]: .* does not exist"):
        hook.resolve_inputs(
            [str(local), f"s3://{s3_bucket}/missing.png"], staging_uri=f"s3://{s3_bucket}/staging/"
        )
    assert keys_under(moto_s3.client(), s3_bucket) == []


def test_local_file_is_staged_once_under_its_content_hash(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "photo.bin"  # the extension is wrong on purpose: the bytes decide the type
    local.write_bytes(PNG)
    puts = count_calls(hook, "PutObject")
    staging = f"s3://{s3_bucket}/staging"

    [first] = hook.resolve_inputs([str(local)], staging_uri=staging)
    [second] = hook.resolve_inputs([local.as_uri()], staging_uri=staging)

    expected_key = f"staging/{hashlib.sha256(PNG).hexdigest()}.png"
    assert keys_under(moto_s3.client(), s3_bucket) == [expected_key]
    assert len(puts) == 1
    assert first.split("?")[0] == second.split("?")[0] == f"{moto_s3.endpoint_url}/{s3_bucket}/{expected_key}"
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=expected_key)
    assert head["ContentType"] == "image/png"
    assert httpx.get(second).content == PNG


def test_local_file_problems(hook: S3MediaHook, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    image = tmp_path / "ok.png"
    image.write_bytes(PNG)
    with pytest.raises(InvalidInputImageError) as info:
        hook.resolve_inputs([str(tmp_path / "absent.png"), str(text), str(tmp_path), str(image)])
    problems = info.value.problems
    assert "does not exist" in problems[0]
    assert "not a recognised image" in problems[1]
    assert "not a regular file" in problems[2]
    assert problems[3].startswith("image_urls[3]: ")
    assert "set staging_uri" in problems[3]


def test_presigned_urls_stay_out_of_logs_and_errors_and_are_masked(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    # Our own log lines at every level; botocore's DEBUG output prints signatures of everything it signs.
    caplog.set_level(logging.DEBUG, logger="airflow_provider_nanobanana")

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])

    signature = dict(httpx.URL(url).params)["X-Amz-Signature"]
    assert len(signature) == 64
    assert any(r.name.startswith("airflow_provider_nanobanana") for r in caplog.records)
    assert signature not in caplog.text
    from airflow.sdk._shared.secrets_masker import redact

    assert signature not in str(redact(f"user code logged {url}"))
