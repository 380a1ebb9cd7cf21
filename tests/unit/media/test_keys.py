"""Pure key rules (``media/keys.py``): S3 URIs, key rendering and its escape guards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.media.keys import (
    DEFAULT_KEY_TEMPLATE,
    MAX_FIELD_CHARS,
    check_destination,
    check_relative_key,
    common_prefix,
    fields_from_context,
    join_key,
    parse_s3_prefix,
    parse_s3_uri,
    render_key,
    sanitize_key_field,
)


def test_parse_s3_uri_splits_bucket_and_literal_key() -> None:
    assert parse_s3_uri("s3://my-bucket/a/b c?.png") == ("my-bucket", "a/b c?.png")
    assert parse_s3_uri("s3://my-bucket") == ("my-bucket", "")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://example.com/a.png", "not an s3:// URI \\(got scheme 'https://'\\)"),
        ("s3:/bucket/key", "not an s3:// URI"),
        ("/local/path.png", "not an s3:// URI"),
        ("s3://", "does not name a valid S3 bucket"),
        ("s3://a/key", "does not name a valid S3 bucket"),
        ("s3://bad_bucket!/key", "does not name a valid S3 bucket"),
    ],
)
def test_parse_s3_uri_rejects_non_s3(uri: str, message: str) -> None:
    with pytest.raises(InvalidEditRequestError, match=message):
        parse_s3_uri(uri)


def test_parse_s3_uri_never_echoes_a_signature() -> None:
    with pytest.raises(InvalidEditRequestError) as info:
        parse_s3_uri("https://h/a.png?X-Amz-Signature=deadbeefcafe")
    assert "deadbeefcafe" not in str(info.value)


def test_parse_s3_prefix_normalises_the_folder() -> None:
    assert parse_s3_prefix("s3://bkt/out", what="dest_uri") == ("bkt", "out/")
    assert parse_s3_prefix("s3://bkt/out/", what="dest_uri") == ("bkt", "out/")
    assert parse_s3_prefix("s3://bkt", what="dest_uri") == ("bkt", "")
    with pytest.raises(InvalidEditRequestError, match=r"dest_uri: .*'\.\.' path segment"):
        parse_s3_prefix("s3://bkt/a/../b/", what="dest_uri")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00_00_00_00_00"),
        ("../../etc", ".._.._etc"),
        ("..", "__"),
        (".", "_"),
        ("", "_"),
        ("/etc/passwd", "_etc_passwd"),
        ("a\\b", "a_b"),
        ("tab\there\x00nul\nnl", "tab_here_nul_nl"),
        ("café", "caf_"),
        (-1, "-1"),
    ],
)
def test_sanitize_key_field_makes_one_harmless_segment(value: object, expected: str) -> None:
    assert sanitize_key_field(value) == expected


def test_sanitize_key_field_keeps_long_values_distinct() -> None:
    a = sanitize_key_field("x" * 500 + "a")
    b = sanitize_key_field("x" * 500 + "b")
    assert len(a) == len(b) == MAX_FIELD_CHARS
    assert a != b


def test_render_default_template() -> None:
    fields = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    key = render_key(DEFAULT_KEY_TEMPLATE, {**fields, "request_id": "rid", "index": 0, "ext": "png"})
    assert key == "d/r/t/-1/rid_0.png"


@pytest.mark.parametrize(
    "hostile",
    ["../../etc", "/abs/path", "..", "a/../../b", "..\\..\\win", "x\x00y", "\r\n", "//double"],
)
def test_hostile_field_values_stay_inside_the_prefix(hostile: str) -> None:
    values = {
        "dag_id": hostile,
        "run_id": hostile,
        "task_id": hostile,
        "map_index": hostile,
        "request_id": "rid",
        "index": 0,
        "ext": "png",
    }
    key = join_key("archive/", render_key(DEFAULT_KEY_TEMPLATE, values), what="key_template")
    assert key.startswith("archive/")
    segments = key.split("/")
    assert len(segments) == 6  # prefix + the template's five segments: nothing added, nothing removed
    assert not any(segment in ("", ".", "..") for segment in segments)
    assert "\\" not in key
    assert "\x00" not in key
    assert "\n" not in key


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("../{index}.{ext}", "'..' path segment"),
        ("/{index}.{ext}", "starts with '/'"),
        ("a//{index}", "empty"),
        ("a\\{index}", "backslash"),
        ("{index.__class__}", "not allowed"),
        ("{index!r}", "not allowed"),
        ("{}", "not allowed"),
        ("{nope}/{index}", "unknown field \\{nope\\}"),
        ("{index", "expected '}'"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(InvalidEditRequestError, match=message):
        render_key(template, {"index": 0, "ext": "png"})


def test_template_format_spec_is_applied() -> None:
    assert render_key("img_{index:03d}.{ext}", {"index": 7, "ext": "png"}) == "img_007.png"


def test_key_length_limit() -> None:
    with pytest.raises(InvalidEditRequestError, match="1024-byte limit"):
        join_key("p/" * 600, "x.png", what="key_template")


def test_check_relative_key_accepts_plain_keys() -> None:
    check_relative_key("a/b.c/d_e-f.png", what="key")


def test_common_prefix_is_character_wise() -> None:
    assert common_prefix(["a/b/rid_0.png", "a/b/rid_0.jpg"]) == "a/b/rid_0."


def test_fields_from_context() -> None:
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=None)
    assert fields_from_context({"ti": ti}) == {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}


def test_check_destination_refuses_what_could_not_hold_the_outputs() -> None:
    fields = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    check_destination("s3://bkt/out/", DEFAULT_KEY_TEMPLATE, fields, outputs=2)
    with pytest.raises(InvalidEditRequestError, match=r"output_s3_uri: .*not an s3:// URI"):
        check_destination("https://bkt/out/", DEFAULT_KEY_TEMPLATE, fields)
    with pytest.raises(InvalidEditRequestError, match=r"must contain \{index\}"):
        check_destination("s3://bkt/out/", "{dag_id}/{request_id}.{ext}", fields, outputs=2)
    with pytest.raises(InvalidEditRequestError, match=r"s3_key_template: unknown field \{nope\}"):
        check_destination("s3://bkt/out/", "{nope}/{index}.{ext}", fields)


@pytest.mark.parametrize(
    "bucket",
    [
        "Bucket_Name",
        "MyBucket",
        "a..b",
        "a.-b",
        "a-.b",
        "192.168.0.1",
        "xn--bucket",
        "sthree-bucket",
        "amzn-s3-demo-bucket",
        "bucket-s3alias",
        "bucket--ol-s3",
        "bucket.mrap",
        "bucket--x-s3",
        "-bucket",
        "bucket-",
        "ab",
        "a" * 64,
    ],
)
def test_bucket_names_s3_refuses_are_refused_here(bucket: str) -> None:
    with pytest.raises(InvalidEditRequestError, match="valid S3 bucket"):
        parse_s3_uri(f"s3://{bucket}/key.png")


@pytest.mark.parametrize("bucket", ["abc", "my-bucket", "my.bucket.v2", "a" * 63, "123bucket"])
def test_valid_bucket_names_pass(bucket: str) -> None:
    assert parse_s3_uri(f"s3://{bucket}/k") == (bucket, "k")
