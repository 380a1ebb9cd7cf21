"""The contact sheet PNG: each edit's input on the left, its outputs to the right, failures in red.

Memory stays bounded however large the batch: the sheet shows at most ``SheetLimits.max_rows`` rows
(:func:`~airflow_provider_nanobanana.report.rows.select_rows` picks them), each source image is
loaded, shrunk and dropped one at a time, an image over ``max_image_bytes`` or ``max_image_pixels``
is never decoded, and only the small JPEG thumbnails are kept (the HTML page embeds them). Pillow is
imported here, lazily, so nothing else in the provider needs it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_nanobanana.report.rows import ReportRow, RowStatus, Selection

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

#: Reads the bytes of one image URI (``s3://...``); raises on anything it will not read.
ImageLoader = Callable[[str], bytes]

PAD = 12
CAPTION_H = 34
HEADER_H = 74
MIN_WIDTH = 640
BACKGROUND = (245, 245, 245)
TEXT = (30, 30, 30)
MUTED = (100, 100, 100)
FAILED_RED = (200, 20, 20)
UNFINISHED_AMBER = (200, 120, 0)  # unfinished or skipped: not a failure, still not done
FRAME = (180, 180, 180)


@dataclass(frozen=True)
class SheetLimits:
    """How much a report may show and read.

    :param max_rows: rows on the sheet (failures first, see ``select_rows``); the rest are counted.
    :param max_outputs: output cells per row; further outputs are counted as ``+N``.
    :param thumb_px: the longer side of a thumbnail.
    :param max_image_bytes: images larger than this are not read (a placeholder is drawn).
    :param max_image_pixels: images with more pixels are not decoded (decompression bombs).
    """

    max_rows: int = 50
    max_outputs: int = 4
    thumb_px: int = 128
    max_image_bytes: int = 25 * 1024 * 1024
    max_image_pixels: int = 64_000_000

    def __post_init__(self) -> None:
        if min(self.max_rows, self.max_outputs) < 1 or not 32 <= self.thumb_px <= 512:
            raise ValueError("max_rows and max_outputs must be >= 1 and thumb_px 32..512")
        if min(self.max_image_bytes, self.max_image_pixels) < 1:
            raise ValueError("max_image_bytes and max_image_pixels must be >= 1")


@dataclass(frozen=True)
class RenderedSheet:
    """The PNG and, per image URI shown, its JPEG thumbnail (for the HTML page)."""

    png: bytes
    thumbnails: dict[str, bytes]
    #: URI -> why it shows as a placeholder (missing, too large, not an image).
    unreadable: dict[str, str]
    size: tuple[int, int]


def render_sheet(
    selection: Selection,
    load: ImageLoader,
    *,
    title: str,
    subtitle: str = "",
    limits: SheetLimits | None = None,
) -> RenderedSheet:
    """Paint ``selection`` into one PNG, reading each image through ``load`` one at a time."""
    from PIL import Image, ImageDraw

    limits = limits or SheetLimits()
    rows = selection.shown[: limits.max_rows]
    columns = 1 + min(limits.max_outputs, max((len(r.outputs) for r in rows), default=0) or 1)
    cell = limits.thumb_px + PAD
    width = max(MIN_WIDTH, PAD + columns * cell)
    height = HEADER_H + len(rows) * (limits.thumb_px + CAPTION_H + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _header(draw, selection, title, subtitle, width)
    painter = _CellPainter(sheet, draw, load, limits)
    for r, row in enumerate(rows):
        painter.row(row, HEADER_H + r * (limits.thumb_px + CAPTION_H + PAD), width)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return RenderedSheet(buffer.getvalue(), painter.thumbnails, painter.unreadable, sheet.size)


def _header(draw: ImageDraw.ImageDraw, selection: Selection, title: str, subtitle: str, width: int) -> None:
    draw.text((PAD, 8), clip(title, 80), fill=(0, 0, 0), font=font(20))
    draw.text((PAD, 34), clip(subtitle, 100), fill=MUTED, font=font(13))
    line = summary_line(selection)
    colour = FAILED_RED if selection.failed_total else MUTED
    draw.text((PAD, 52), clip(line, max(20, width // 7)), fill=colour, font=font(13))


def summary_line(selection: Selection) -> str:
    """``120 edit(s), 3 not succeeded; showing 50 (failures first), 70 more in the manifest``."""
    text = f"{selection.total} edit(s), {selection.failed_total} not succeeded"
    if selection.hidden:
        text += f"; showing {len(selection.shown)} (failures first), {selection.hidden} more in the manifest"
    return text


class _CellPainter:
    """Paints rows cell by cell; holds one source image at a time."""

    def __init__(self, sheet: Image.Image, draw: ImageDraw.ImageDraw, load: ImageLoader, limits: SheetLimits):
        self.sheet, self.draw, self.load, self.limits = sheet, draw, load, limits
        self.thumbnails: dict[str, bytes] = {}
        self.unreadable: dict[str, str] = {}

    def row(self, row: ReportRow, top: int, width: int) -> None:
        size = self.limits.thumb_px
        if row.failed:
            colour = FAILED_RED if row.status is RowStatus.FAILED else UNFINISHED_AMBER
            self.draw.rectangle((2, top - 5, width - 3, top + size + CAPTION_H + 2), outline=colour, width=3)
        first_input = row.inputs[0] if row.inputs else None
        extra_inputs = f" (+{len(row.inputs) - 1} inputs)" if len(row.inputs) > 1 else ""
        self.cell(first_input, PAD, top, [clip(row.label, 22) + extra_inputs, "input"])
        shown = row.outputs[: self.limits.max_outputs]
        for n, uri in enumerate(shown):
            label = (
                row.output_labels[n] if n < len(row.output_labels) else (row.request_id or f"output {n + 1}")
            )
            more = (
                f" +{len(row.outputs) - len(shown)} more"
                if n == len(shown) - 1 and len(row.outputs) > len(shown)
                else ""
            )
            self.cell(uri, PAD + (n + 1) * (size + PAD), top, [clip(label, 22), f"output {n + 1}{more}"])
        if row.failed:
            left = PAD + (len(shown) + 1) * (size + PAD)
            word = row.status.value.upper()
            colour = FAILED_RED if row.status is RowStatus.FAILED else UNFINISHED_AMBER
            self.draw.text((left, top + size // 2 - 20), word, fill=colour, font=font(18))
            detail = clip(row.error, max(10, (width - left) // 7))
            self.draw.text((left, top + size // 2 + 4), detail, fill=colour, font=font(12))
            rid = f"request {row.request_id}" if row.request_id else "no request id"
            self.draw.text(
                (left, top + size // 2 + 22),
                clip(rid, max(10, (width - left) // 7)),
                fill=MUTED,
                font=font(12),
            )

    def cell(self, uri: str | None, left: int, top: int, captions: list[str]) -> None:
        size = self.limits.thumb_px
        thumb = self.thumbnail(uri) if uri else None
        if thumb is None:
            self.draw.rectangle((left, top, left + size - 1, top + size - 1), fill=(225, 225, 225))
            why = self.unreadable.get(uri or "", "no input image") if uri else "no input image"
            self.draw.text((left + 6, top + size // 2 - 6), clip(why, size // 7), fill=MUTED, font=font(11))
        else:
            self.sheet.paste(thumb, (left + (size - thumb.width) // 2, top + (size - thumb.height) // 2))
        self.draw.rectangle((left - 1, top - 1, left + size, top + size), outline=FRAME)
        for i, text in enumerate(captions):
            self.draw.text(
                (left, top + size + 3 + 15 * i), text, fill=TEXT if i == 0 else MUTED, font=font(12)
            )

    def thumbnail(self, uri: str) -> Image.Image | None:
        """The image at ``uri`` shrunk to a thumbnail; ``None`` (and the reason recorded) if unreadable."""
        if uri in self.unreadable:
            return None
        try:
            data = self.load(uri)
            if len(data) > self.limits.max_image_bytes:
                raise ValueError(f"larger than {self.limits.max_image_bytes} bytes")
            thumb = make_thumbnail(data, self.limits.thumb_px, self.limits.max_image_pixels)
        except Exception as exc:  # noqa: BLE001 - one unreadable image must not lose the whole report
            self.unreadable[uri] = _reason(exc)
            log.warning("Contact sheet: %s is shown as a placeholder: %s", uri, self.unreadable[uri])
            return None
        if uri not in self.thumbnails:
            buffer = io.BytesIO()
            thumb.save(buffer, format="JPEG", quality=75)
            self.thumbnails[uri] = buffer.getvalue()
        return thumb


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> Image.Image:
    """Decode ``data`` only if its header promises at most ``max_pixels``, then shrink it."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"{image.width}x{image.height} pixels is over the {max_pixels} limit")
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, not full size
        return ImageOps.contain(image.convert("RGB"), (size, size))


def _reason(exc: Exception) -> str:
    name = type(exc).__name__
    if name in {"NoSuchKey", "ClientError"} or "NoSuchKey" in str(exc):
        return "missing"
    if name == "UnidentifiedImageError":
        return "not an image"
    text = str(exc)
    return text[:60] if isinstance(exc, ValueError) and text else name


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, keeping the end (ids and file names differ at the end)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


_FONTS: dict[int, Any] = {}


def font(size: int) -> Any:
    """Pillow's bundled scalable font (Pillow >= 10.1), cached per size; a bitmap font before."""
    if size not in _FONTS:
        from PIL import ImageFont

        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]
