"""The reuse index (``spend/reuse.py``) over a real S3 API: record, verify, copy, and distrust when stale."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_provider_nanobanana.media import S3MediaHook
from airflow_provider_nanobanana.media.results import ArchiveResult
from airflow_provider_nanobanana.spend.reuse import ReuseIndex
from tests.unit.media.support import FIELDS, PNG, REQUEST_ID, FileServer, Route, archive

FP = "v1:" + "ab" * 32


def archived(hook: S3MediaHook, files: FileServer, bucket: str) -> ArchiveResult:
    urls = [files.serve("/a.png", Route(body=PNG)), files.serve("/b.png", Route(body=PNG + b"2"))]
    return archive(hook, urls, bucket, fingerprint=FP)


def test_a_recorded_archive_is_found_and_copied_into_another_run(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    first = archived(hook, files, s3_bucket)
    index = ReuseIndex(moto_s3.client(), f"s3://{s3_bucket}/archive/")
    index.record(FP, first)

    assert index.known() == {FP}
    entry = index.usable(FP)
    assert entry is not None
    other_run = {**FIELDS, "run_id": "manual__2"}
    copied = index.copy_into_run(
        entry, fields=other_run, key_template=None, prompt="p", inputs=["s3://b/in.png"], parameters={}
    )

    client = moto_s3.client()
    assert [o.key for o in copied.outputs] != [o.key for o in first.outputs]
    assert all("/manual__2/" in o.key for o in copied.outputs)
    for old, new in zip(first.outputs, copied.outputs, strict=True):
        assert client.get_object(Bucket=s3_bucket, Key=new.key)["Body"].read() == (
            client.get_object(Bucket=s3_bucket, Key=old.key)["Body"].read()
        )
        assert new.sha256 == old.sha256
        assert new.reused
    manifest_key = copied.manifest_uri.split("/", 3)[3]
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read())
    assert manifest["reused_from"]["request_id"] == REQUEST_ID
    assert manifest["reused_from"]["manifest"] == first.manifest_uri
    assert manifest["fingerprint"] == FP
    first_manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key=first.manifest_uri.split("/", 3)[3])["Body"].read()
    )
    assert first_manifest["fingerprint"] == FP  # the paid run's manifest records it too


@pytest.mark.parametrize("damage", ["delete", "overwrite"])
def test_a_stale_entry_is_not_trusted_and_says_so(
    hook: S3MediaHook,
    moto_s3: Any,
    s3_bucket: str,
    files: FileServer,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = archived(hook, files, s3_bucket)
    client = moto_s3.client()
    index = ReuseIndex(client, f"s3://{s3_bucket}/archive/")
    index.record(FP, first)
    key = first.outputs[1].key
    if damage == "delete":
        client.delete_object(Bucket=s3_bucket, Key=key)
    else:
        client.put_object(Bucket=s3_bucket, Key=key, Body=PNG + b"3", ChecksumAlgorithm="SHA256")

    with caplog.at_level(logging.WARNING):
        assert index.usable(FP) is None
    assert "stale" in caplog.text
    assert "paid again" in caplog.text


def test_absent_or_unreadable_entries_are_misses(moto_s3: Any, s3_bucket: str) -> None:
    client = moto_s3.client()
    index = ReuseIndex(client, f"s3://{s3_bucket}/archive/")
    assert index.usable(FP) is None
    client.put_object(Bucket=s3_bucket, Key=index.key_for(FP), Body=b"{not json")
    assert index.usable(FP) is None
    other = "v1:" + "cd" * 32
    client.put_object(
        Bucket=s3_bucket,
        Key=index.key_for(FP),
        Body=json.dumps(
            {"fingerprint": other, "request_id": "r", "model_id": "m", "manifest_key": "k", "outputs": []}
        ).encode(),
    )
    assert index.usable(FP) is None
