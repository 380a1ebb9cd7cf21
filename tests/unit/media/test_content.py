"""Pure content rules (``media/content.py``): sniffing beats what the server claims."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from airflow_provider_nanobanana.media.content import (
    ALL_EXTENSIONS,
    NotAnImageError,
    extension_for,
    resolve_content_type,
    sniff_image_type,
)


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


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
