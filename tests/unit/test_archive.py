"""Pure archive helpers: URIs, key rendering and its escape guards, sniffing, host allowlist, metadata."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
from PIL import Image

from airflow_provider_nanobanana.archive import (
    ALL_EXTENSIONS,
    DEFAULT_KEY_TEMPLATE,
    MAX_FIELD_CHARS,
    NotAnImageError,
    ascii_metadata,
    build_manifest,
    check_relative_key,
    common_prefix,
    extension_for,
    fields_from_context,
    host_allowed,
    join_key,
    normalise_host_patterns,
    output_url_problem,
    parse_s3_prefix,
    parse_s3_uri,
    render_key,
    resolve_content_type,
    sanitize_key_field,
    sniff_image_type,
)
from airflow_provider_nanobanana.exceptions import InvalidEditRequestError


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


# --- S3 URIs ---


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


# --- Keys ---


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


# --- Sniffing ---


@pytest.mark.parametrize(
    ("fmt", "content_type", "ext"),
    [
        ("PNG", "image/png", "png"),
        ("JPEG", "image/jpeg", "jpg"),
        ("WEBP", "image/webp", "webp"),
        ("GIF", "image/gif", "gif"),
    ],
)
def test_sniff_real_images(fmt: str, content_type: str, ext: str) -> None:
    head = image_bytes(fmt)[:32]
    assert sniff_image_type(head) == content_type
    assert extension_for(content_type) == ext
    assert ext in ALL_EXTENSIONS


def test_sniffed_bytes_beat_a_lying_server() -> None:
    png = image_bytes("PNG")[:32]
    assert resolve_content_type(png, url="https://cdn/x.jpg", declared="image/jpeg") == "image/png"


def test_unknown_bytes_fall_back_to_url_then_header() -> None:
    unknown = b"\x00\x01unknown-format-bytes"
    assert resolve_content_type(unknown, url="https://cdn/x.JPEG?sig=1", declared="image/png") == "image/jpeg"
    assert resolve_content_type(unknown, url="https://cdn/x", declared="image/heic; q=1") == "image/heic"
    assert resolve_content_type(unknown, url="https://cdn/x", declared=None) == "application/octet-stream"
    assert extension_for("application/octet-stream") == "bin"


@pytest.mark.parametrize(
    "body", [b"<!DOCTYPE html><html>", b'  {"error": "expired"}', b"<?xml version='1.0'?>"]
)
def test_markup_or_json_body_is_not_an_image(body: bytes) -> None:
    with pytest.raises(NotAnImageError, match="not an image"):
        resolve_content_type(body, url="https://cdn/x.png", declared="image/png")


# --- Host allowlist ---


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("files.runcomfy.net", True),
        ("a.b.runcomfy.net", True),
        ("FILES.RunComfy.NET.", True),
        ("runcomfy.net", False),
        ("evilruncomfy.net", False),
        ("runcomfy.net.evil.com", False),
        ("model-api.runcomfy.com", True),
        ("127.0.0.1", False),
    ],
)
def test_host_patterns(host: str, allowed: bool) -> None:
    patterns = normalise_host_patterns(["*.runcomfy.net", "model-api.runcomfy.com"])
    assert host_allowed(host, patterns) is allowed


@pytest.mark.parametrize("pattern", ["*", "*.", "*.com", "a*.runcomfy.net", "", "http://x.com/"])
def test_too_broad_or_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="allowed_output_hosts"):
        normalise_host_patterns([pattern])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://files.runcomfy.net/a.png", None),
        ("ftp://files.runcomfy.net/a.png", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("https://files.runcomfy.net@169.254.169.254/latest", "host '169.254.169.254'"),
        ("http://169.254.169.254/latest/meta-data", "not in allowed_output_hosts"),
        ("https:///nohost", "no host"),
    ],
)
def test_output_url_problem(url: str, problem: str | None) -> None:
    found = output_url_problem(url, normalise_host_patterns(["*.runcomfy.net"]))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --- Metadata and manifest ---


def test_ascii_metadata_escapes_and_cleans() -> None:
    meta = ascii_metadata({"Team Name": "café\n", "seed": 7, "skip": None, "long": "x" * 400, "%": "a%b"})
    assert meta == {"team-name": "caf%C3%A9", "seed": "7", "long": "x" * 256}
    assert all(v.isascii() for v in meta.values())


def test_build_manifest_totals_and_redaction() -> None:
    manifest = build_manifest(
        request_id="rid",
        model_id="m",
        bucket="b",
        fields={"dag_id": "d"},
        inputs=["s3://b/in.png", "https://h/x.png?sig=secret"],
        parameters={"prompt": "p", "image_urls": ["https://h/x.png?X-Amz-Signature=secret"]},
        prompt_sha256="abc",
        outputs=[{"index": 0, "size_bytes": 3}, {"index": 1, "size_bytes": 4}],
        started_at="s",
        finished_at="f",
        duration_s=1.23456,
    )
    assert manifest["total_bytes"] == 7
    assert manifest["output_count"] == 2
    assert manifest["duration_s"] == 1.235
    assert "secret" not in json.dumps(manifest)
    assert manifest["manifest_version"] == 1
