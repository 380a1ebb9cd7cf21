"""``S3MediaHook`` itself: the boto3 client from an AWS connection, its settings, its public names."""

from __future__ import annotations

import sys
from typing import Any

import httpx
import pytest

from airflow_provider_nanobanana.media import S3MediaHook, parse_s3_uri
from tests.fakes import fresh_interpreter_prints
from tests.unit.media.support import PNG, MiB


def test_amazon_connection_supplies_credentials_endpoint_and_region(
    moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NB_MOTO", moto_s3.aws_conn_json())
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    hook = S3MediaHook("nb_moto", presign_expiry_s=600)

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])

    assert hook.get_client() is hook.get_client()
    assert url.startswith(moto_s3.endpoint_url)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "X-Amz-Expires=600" in url
    assert httpx.get(url).content == PNG


def test_a_missing_connection_falls_back_to_boto3_defaults(moto_s3: Any, s3_bucket: str) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    hook = S3MediaHook("nb_not_defined", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])
    assert httpx.get(url).content == PNG


def test_without_the_amazon_provider_boto3_defaults_are_used(
    moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.amazon.aws.hooks.s3", None)  # import now fails
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    hook = S3MediaHook("aws_default", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])

    assert "apache-airflow-providers-amazon is not installed" in caplog.text
    assert httpx.get(url).content == PNG


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"presign_expiry_s": 8 * 24 * 3600}, "presign_expiry_s"),
        ({"part_size_bytes": MiB}, "part_size_bytes"),
        ({"max_output_bytes": 6 * 1024 * MiB}, "max_output_bytes"),
        ({"allowed_output_hosts": ["*"]}, "allowed_output_hosts"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S3MediaHook(None, **kwargs)


def test_parse_s3_uri_is_exported() -> None:
    assert parse_s3_uri("s3://bucket/k/e.y") == ("bucket", "k/e.y")


def test_public_names_and_a_cheap_import_of_the_pure_rules() -> None:
    import airflow_provider_nanobanana.media as media

    for name in media.__all__:
        assert getattr(media, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        media.nope  # noqa: B018
    script = (
        "import sys; from airflow_provider_nanobanana.media.keys import check_destination; "
        "print(sorted(m for m in ('airflow_provider_nanobanana.media.hook', 'botocore.config', 'boto3') "
        "if m in sys.modules))"
    )
    assert fresh_interpreter_prints(script) == "[]"
