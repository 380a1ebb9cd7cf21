"""Content-addressed reuse over real HTTP (emulator, POSTs counted) and a real S3 API (moto server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_nanobanana.spend.reuse import ReuseIndex
from tests.conftest import png_bytes
from tests.fakes import new_context
from tests.integration.test_batch_emulator import batch_context, batch_operator, run_batch, seed_inputs
from tests.integration.test_operator_emulator import operator, run_deferred

pytestmark = pytest.mark.usefixtures("airflow_connections")


def presigned(moto_s3: Any, input_image: str, expires: int) -> str:
    bucket, _, key = input_image[5:].partition("/")
    url: str = moto_s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
    )
    return url


def body_of(moto_s3: Any, uri: str) -> bytes:
    bucket, _, key = uri[5:].partition("/")
    data: bytes = moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def manifest_of(moto_s3: Any, uri: str) -> dict[str, Any]:
    return dict(json.loads(body_of(moto_s3, uri)))


def test_a_second_run_over_the_same_images_pays_nothing_and_archives_the_same_bytes(
    emulator, moto_s3, input_image, s3_bucket
):
    """Each run pre-signs its input anew (another URL); the bytes, and so the fingerprint, are the same."""
    emulator.configure(queue_s=0.2, run_s=0.2)
    first = run_deferred(
        operator(presigned(moto_s3, input_image, 600), s3_bucket, reuse_outputs=True),
        new_context(run_id="manual__1"),
    )
    assert emulator.counters()["submits"] == 1
    second_context = new_context(run_id="manual__2")
    second = operator(presigned(moto_s3, input_image, 900), s3_bucket, reuse_outputs=True).execute(
        second_context
    )

    assert emulator.counters()["submits"] == 1  # the second run sent no POST at all
    assert first["reused"] is False
    assert second["reused"] is True
    assert second["request_id"] == first["request_id"]
    assert second["reused_from"]["request_id"] == first["request_id"]
    assert len(second["archived"]) == len(first["archived"]) == 2
    assert all("/manual__2/" in uri for uri in second["archived"])
    assert [body_of(moto_s3, u) for u in second["archived"]] == [
        body_of(moto_s3, u) for u in first["archived"]
    ]
    manifest = manifest_of(moto_s3, second["manifest"])
    assert manifest["reused_from"]["request_id"] == first["request_id"]
    assert manifest["fingerprint"] == manifest_of(moto_s3, first["manifest"])["fingerprint"]
    assert second_context["ti"].xcom["nanobanana_fingerprint"] == manifest["fingerprint"]


def test_a_changed_seed_pays_and_reuse_off_always_pays(emulator, moto_s3, input_image, s3_bucket):
    emulator.configure(queue_s=0, run_s=0.1)
    operator(input_image, s3_bucket, reuse_outputs=True, deferrable=False).execute(new_context(run_id="r1"))
    operator(input_image, s3_bucket, reuse_outputs=True, deferrable=False, seed=1).execute(
        new_context(run_id="r2")
    )
    result = operator(input_image, s3_bucket, deferrable=False).execute(new_context(run_id="r3"))
    assert emulator.counters()["submits"] == 3
    assert result["reused"] is False


def test_a_stale_index_entry_pays_again(emulator, moto_s3, input_image, s3_bucket, caplog):
    emulator.configure(queue_s=0, run_s=0.1)
    first = operator(input_image, s3_bucket, reuse_outputs=True, deferrable=False).execute(
        new_context(run_id="r1")
    )
    bucket, _, key = first["archived"][1][5:].partition("/")
    moto_s3.client().delete_object(Bucket=bucket, Key=key)  # someone cleaned up the first run
    second = operator(input_image, s3_bucket, reuse_outputs=True, deferrable=False).execute(
        new_context(run_id="r2")
    )
    assert emulator.counters()["submits"] == 2
    assert second["reused"] is False
    assert "stale" in caplog.text
    # The new archive re-indexed the edit, so a third run reuses the second.
    third = operator(input_image, s3_bucket, reuse_outputs=True, deferrable=False).execute(
        new_context(run_id="r3")
    )
    assert emulator.counters()["submits"] == 2
    assert third["reused_from"]["request_id"] == second["request_id"]


def test_a_rerun_of_a_batch_pays_nothing_and_says_what_it_reused(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 12)
    # Two distinct images among the 12, so reuse is by content, per item, not by batch.
    moto_s3.client().put_object(
        Bucket=s3_bucket,
        Key="inputs/img_0003.png",
        Body=png_bytes((1, 2, 3), (32, 32)),
        ContentType="image/png",
    )
    emulator.configure(queue_s=0.05, run_s=0.05)
    first = run_batch(batch_operator(s3_bucket, reuse_outputs=True), batch_context())
    assert emulator.counters()["submits"] == 12
    second_context = new_context(task_id="batch", run_id="manual__2", map_index=-1)
    second = run_batch(batch_operator(s3_bucket, reuse_outputs=True), second_context)

    assert emulator.counters()["submits"] == 12  # 0 POSTs on the re-run
    assert first["reused"] == 0
    assert second["reused"] == second["succeeded"] == 12
    manifest = manifest_of(moto_s3, second["manifest"])
    first_items = {i["id"]: i for i in manifest_of(moto_s3, first["manifest"])["items"]}
    for item in manifest["items"]:
        assert item["state"] == "archived"
        assert item["reused_from"] == first_items[item["id"]]["request_id"]
        assert item["fingerprint"] == first_items[item["id"]]["fingerprint"]
        assert body_of(moto_s3, item["archived"][0]) == body_of(
            moto_s3, first_items[item["id"]]["archived"][0]
        )
    assert len(ReuseIndex(moto_s3.client(), f"s3://{s3_bucket}/out/").known()) == 12


def test_a_kept_but_flagged_archive_is_never_reused(emulator, moto_s3, input_image, s3_bucket):
    emulator.configure(queue_s=0, run_s=0.1)
    kw = {"reuse_outputs": True, "deferrable": False, "on_bad_output": "keep"}
    bad = "turn the sky purple [bad_output:blank]"
    first = operator(input_image, s3_bucket, prompt=bad, **kw).execute(new_context(run_id="r1"))
    assert first["quality"]  # archived, but flagged
    assert ReuseIndex(moto_s3.client(), f"s3://{s3_bucket}/edited/").known() == set()
    second = operator(input_image, s3_bucket, prompt=bad, **kw).execute(new_context(run_id="r2"))
    assert second["reused"] is False
    assert emulator.counters()["submits"] == 2


def test_a_retry_that_reattaches_still_indexes_its_archive(emulator, moto_s3, input_image, s3_bucket):
    """Airflow clears XCom on a new try: the re-attached try recomputes the fingerprint for the index."""
    from airflow_provider_nanobanana._compat import TaskDeferred
    from tests.fakes import StateStore

    emulator.configure(queue_s=0.3, run_s=0.1)
    store = StateStore()
    with pytest.raises(TaskDeferred):  # try 1 pays and defers, then dies
        operator(input_image, s3_bucket, reuse_outputs=True, wait_before_defer=0).execute(new_context(store))
    retry = operator(input_image, s3_bucket, reuse_outputs=True)
    first = run_deferred(retry, new_context(store, try_number=2))
    assert first["reused"] is False
    assert emulator.counters()["submits"] == 1
    assert ReuseIndex(moto_s3.client(), f"s3://{s3_bucket}/edited/").known() != set()
    again = operator(input_image, s3_bucket, reuse_outputs=True, deferrable=False).execute(
        new_context(run_id="r2")
    )
    assert again["reused"] is True
    assert emulator.counters()["submits"] == 1
