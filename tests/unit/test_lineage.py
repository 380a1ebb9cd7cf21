"""Lineage reports S3 objects only, reading their URIs the way the archiver writes them."""

from __future__ import annotations

from airflow_provider_nanobanana.lineage import openlineage_facets, output_asset


def test_only_s3_objects_become_datasets_with_literal_keys() -> None:
    lineage = openlineage_facets(
        [
            "s3://in-bucket/cats/a?b#c.png",
            "https://h/x.png?X-Amz-Signature=abc",
            "s3://bad_bucket!/k",
            "/tmp/a.png",
        ],
        ["s3://out-bucket/edits/req_0.png"],
    )
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://in-bucket", "cats/a?b#c.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://out-bucket", "edits/req_0.png")]


def test_output_asset_only_for_a_literal_prefix() -> None:
    assert output_asset(None) is None
    assert output_asset("s3://b/{{ ds }}/") is None
    asset = output_asset("s3://b/out/")
    assert asset is not None
    assert asset.uri.rstrip("/") == "s3://b/out"  # Airflow normalises the trailing slash
