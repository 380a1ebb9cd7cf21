"""The contact sheet PNG: layout, failures marked in red, bounded reads, a cap on rows."""

from __future__ import annotations

import collections
import io
import itertools

import pytest
from PIL import Image

from airflow_provider_nanobanana.report.rows import ReportRow, RowStatus, select_rows
from airflow_provider_nanobanana.report.sheet import (
    CAPTION_H,
    FAILED_RED,
    HEADER_H,
    MIN_WIDTH,
    PAD,
    SheetLimits,
    render_sheet,
)
from tests.conftest import png_bytes

LIMITS = SheetLimits(thumb_px=64)
ROW_H = 64 + CAPTION_H + PAD


class Store:
    """An image loader over a dict that counts reads."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.reads: list[str] = []

    def __call__(self, uri: str) -> bytes:
        self.reads.append(uri)
        return self.images[uri]


def ok(n: int, outputs: int = 1) -> ReportRow:
    outs = tuple(f"s3://b/o/{n}_{i}.png" for i in range(outputs))
    return ReportRow(f"item-{n}", RowStatus.SUCCEEDED, f"r{n}", (f"s3://b/i/{n}.png",), outs)


def failed(n: int) -> ReportRow:
    return ReportRow(f"item-{n}", RowStatus.FAILED, f"r{n}", (f"s3://b/i/{n}.png",), (), "model refused")


def store_for(rows: list[ReportRow]) -> Store:
    colours = itertools.cycle([(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60)])
    return Store({uri: png_bytes(next(colours), (80, 60)) for r in rows for uri in (*r.inputs, *r.outputs)})


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


def red_pixels_in_band(image: Image.Image, top: int, bottom: int) -> int:
    return sum(image.getpixel((x, y)) == FAILED_RED for x in range(6) for y in range(top, bottom))


def test_one_row_per_edit_a_column_per_output_and_failures_framed_red() -> None:
    rows = [ok(1, outputs=2), failed(2), ok(3, outputs=2)]
    sheet = render_sheet(select_rows(rows, 10), store_for(rows), title="t", limits=LIMITS)
    image = open_png(sheet.png)
    assert sheet.size == image.size == (max(MIN_WIDTH, PAD + 3 * (64 + PAD)), HEADER_H + 3 * ROW_H + PAD)
    bands = [(HEADER_H + i * ROW_H - 5, HEADER_H + (i + 1) * ROW_H - PAD) for i in range(3)]
    assert [red_pixels_in_band(image, top, bottom) > 20 for top, bottom in bands] == [False, True, False]
    # every image shown got a thumbnail for the HTML page, and the input's pixels are on the sheet
    assert set(sheet.thumbnails) == {uri for r in rows for uri in (*r.inputs, *r.outputs)}
    left, top = PAD + 32, HEADER_H + 32
    assert image.getpixel((left, top)) == (200, 60, 60)


def test_an_unreadable_image_is_a_placeholder_not_a_lost_report() -> None:
    rows = [ok(1), ok(2)]
    store = store_for(rows)
    del store.images["s3://b/o/1_0.png"]
    store.images["s3://b/i/2.png"] = b"not an image"
    sheet = render_sheet(select_rows(rows, 10), store, title="t", limits=LIMITS)
    assert set(sheet.unreadable) == {"s3://b/o/1_0.png", "s3://b/i/2.png"}
    assert sheet.unreadable["s3://b/i/2.png"] == "not an image"
    assert "s3://b/o/1_0.png" not in sheet.thumbnails


def test_images_over_the_byte_or_pixel_limit_are_never_decoded() -> None:
    rows = [ok(1)]
    store = store_for(rows)
    store.images["s3://b/i/1.png"] = png_bytes((1, 2, 3), (2000, 1000))  # 2 M pixels, a few KB
    store.images["s3://b/o/1_0.png"] = png_bytes((1, 2, 3), (10, 10)) + b"\0" * 60_000
    limits = SheetLimits(thumb_px=64, max_image_pixels=1_000_000, max_image_bytes=50_000)
    assert len(store.images["s3://b/i/1.png"]) < 50_000
    sheet = render_sheet(select_rows(rows, 10), store, title="t", limits=limits)
    assert "pixels" in sheet.unreadable["s3://b/i/1.png"]
    assert "bytes" in sheet.unreadable["s3://b/o/1_0.png"]


def test_a_thousand_edits_make_a_sheet_of_max_rows_with_bounded_reads() -> None:
    rows = [failed(n) if n % 100 == 7 else ok(n, outputs=6) for n in range(1000)]
    one = png_bytes((9, 9, 9), (80, 60))
    store = Store(collections.defaultdict(lambda: one))
    limits = SheetLimits(thumb_px=64, max_rows=20, max_outputs=3)
    selection = select_rows(rows, limits.max_rows)
    sheet = render_sheet(selection, store, title="t", limits=limits)
    assert sheet.size[1] == HEADER_H + 20 * ROW_H + PAD
    assert sum(r.failed for r in selection.shown) == 10, "every failure is on the sheet"
    assert len(store.reads) == 10 * 1 + 10 * (1 + 3), "one input and at most max_outputs outputs per row"


@pytest.mark.parametrize("bad", [{"max_rows": 0}, {"thumb_px": 8}, {"max_image_bytes": 0}])
def test_limits_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        SheetLimits(**bad)
