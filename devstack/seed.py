"""Input images for the local stack: small, distinct and labelled, so a person can match them up.

Each image gets its own background colour, a different shape and the text ``input N``; the emulator's
outputs are derived from the inputs, so the contact sheet shows at a glance which output belongs to
which input.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
IMAGE_SIZE = (256, 256)


@dataclass(frozen=True)
class SeededImage:
    """One uploaded input: where it is and what it looks like (for checks and the contact sheet)."""

    index: int
    bucket: str
    key: str
    shape: str
    size_bytes: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _colour(index: int, count: int, lightness: float) -> tuple[int, int, int]:
    """Evenly spaced hues, so neighbouring inputs never look alike."""
    r, g, b = colorsys.hls_to_rgb((index / max(count, 1)) % 1.0, lightness, 0.75)
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: Any) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=18)
    else:  # cross
        w = (x1 - x0) // 5
        draw.rectangle((cx - w, y0, cx + w, y1), fill=fill)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=fill)


def label_font(size: int = 28) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (Pillow >= 10.1), so labels are readable without system fonts."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def make_input_image(index: int, count: int, size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    """PNG bytes of input ``index`` (1-based) of ``count``: coloured field, shape, ``input N`` label."""
    image = Image.new("RGB", size, _colour(index - 1, count, 0.80))
    draw = ImageDraw.Draw(image)
    w, h = size
    shape = SHAPES[(index - 1) % len(SHAPES)]
    _draw_shape(draw, shape, (w // 4, h // 6, 3 * w // 4, 4 * h // 6), _colour(index - 1, count, 0.35))
    draw.text((w // 2, h - 36), f"input {index}", fill=(20, 20, 20), font=label_font(), anchor="mm")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def seed_inputs(s3: Any, bucket: str, prefix: str = "inputs/", count: int = 6) -> list[SeededImage]:
    """Create ``bucket`` (if needed) and upload ``count`` images as ``<prefix>input-NN.png``."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    seeded = []
    for index in range(1, count + 1):
        data = make_input_image(index, count)
        key = f"{prefix}input-{index:02d}.png"
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        seeded.append(SeededImage(index, bucket, key, SHAPES[(index - 1) % len(SHAPES)], len(data)))
    return seeded


def list_objects(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` (paginated), sorted."""
    paginator = s3.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def read_object(s3: Any, uri: str) -> bytes:
    bucket, key = parse_s3_uri(uri)
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body
