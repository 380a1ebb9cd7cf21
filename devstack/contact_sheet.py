"""A contact sheet: each input in the left column, its edited outputs to the right, all labelled.

It is the quickest way for a person to check a run: one PNG shows that every input got an output
and which one is which, without opening S3 or the Airflow UI.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from devstack.seed import label_font

THUMB = 220
PAD = 16
CAPTION_H = 44
HEADER_H = 56
BACKGROUND = (245, 245, 245)


@dataclass
class SheetRow:
    """One input and the outputs made from it."""

    label: str
    input_png: bytes
    outputs: list[bytes] = field(default_factory=list)
    output_labels: list[str] = field(default_factory=list)


def _thumbnail(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.contain(image.convert("RGB"), (THUMB, THUMB))


def _caption(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def render_contact_sheet(rows: Sequence[SheetRow], title: str, subtitle: str = "") -> Image.Image:
    """Lay out ``rows``; the sheet is as wide as the row with the most outputs."""
    columns = 1 + max((len(r.outputs) for r in rows), default=0)
    width = PAD + columns * (THUMB + PAD)
    height = HEADER_H + len(rows) * (THUMB + CAPTION_H + PAD) + PAD
    sheet = Image.new("RGB", (width, max(height, HEADER_H + PAD)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = label_font(20), label_font(14)
    draw.text((PAD, 8), title, fill=(0, 0, 0), font=font)
    draw.text((PAD, 34), _caption(subtitle, 60), fill=(90, 90, 90), font=small)
    for r, row in enumerate(rows):
        top = HEADER_H + r * (THUMB + CAPTION_H + PAD)
        cells = [(row.input_png, f"{row.label} (input)")]
        labels = row.output_labels or [f"output {i + 1}" for i in range(len(row.outputs))]
        cells += list(zip(row.outputs, labels, strict=True))
        for c, (data, caption) in enumerate(cells):
            left = PAD + c * (THUMB + PAD)
            thumb = _thumbnail(data)
            sheet.paste(thumb, (left + (THUMB - thumb.width) // 2, top + (THUMB - thumb.height) // 2))
            draw.rectangle((left - 1, top - 1, left + THUMB, top + THUMB), outline=(180, 180, 180))
            draw.text((left, top + THUMB + 6), _caption(caption), fill=(30, 30, 30), font=small)
        if not row.outputs:
            draw.text((PAD + THUMB + PAD, top + THUMB // 2), "no output", fill=(200, 0, 0), font=font)
    return sheet


def write_contact_sheet(rows: Sequence[SheetRow], path: Path, title: str, subtitle: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_contact_sheet(rows, title, subtitle).save(path, format="PNG")
    return path
