"""The demo's contact sheet: each input in the left column, its edited outputs to the right, labelled.

It is the quickest way for a person to check a run: one PNG shows that every input got an output
and which one is which, without opening S3 or the Airflow UI. The drawing is the provider's own
(:mod:`airflow_provider_nanobanana.report.sheet`, the sheet the batch operator writes); this module
only feeds it images the demo already holds in memory.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from airflow_provider_nanobanana.report.rows import ReportRow, RowStatus, select_rows
from airflow_provider_nanobanana.report.sheet import SheetLimits, render_sheet

THUMB = 220
#: The demo seeds at most 500 images; a sheet of more than this many rows would be too tall to read.
MAX_ROWS = 100


@dataclass
class SheetRow:
    """One input and the outputs made from it."""

    label: str
    input_png: bytes
    outputs: list[bytes] = field(default_factory=list)
    output_labels: list[str] = field(default_factory=list)


def _report_rows(rows: Sequence[SheetRow]) -> tuple[list[ReportRow], dict[str, bytes]]:
    """The rows as the provider's report rows, with in-memory images behind ``mem://`` names."""
    images: dict[str, bytes] = {}
    report_rows = []
    for r, row in enumerate(rows):
        images[f"mem://{r}/input"] = row.input_png
        outputs = []
        for c, data in enumerate(row.outputs):
            images[f"mem://{r}/{c}"] = data
            outputs.append(f"mem://{r}/{c}")
        report_rows.append(
            ReportRow(
                label=row.label,
                status=RowStatus.SUCCEEDED if outputs else RowStatus.FAILED,
                inputs=(f"mem://{r}/input",),
                outputs=tuple(outputs),
                output_labels=tuple(row.output_labels),
                error="" if outputs else "no output",
            )
        )
    return report_rows, images


def render_contact_sheet(rows: Sequence[SheetRow], title: str, subtitle: str = "") -> Image.Image:
    """Lay out ``rows``; the sheet is as wide as the row with the most outputs."""
    report_rows, images = _report_rows(rows)
    limits = SheetLimits(
        thumb_px=THUMB,
        max_rows=max(1, min(len(rows), MAX_ROWS)),
        max_outputs=max([1, *(len(r.outputs) for r in rows)]),
    )
    selection = select_rows(report_rows, limits.max_rows)
    sheet = render_sheet(selection, images.__getitem__, title=title, subtitle=subtitle, limits=limits)
    return Image.open(io.BytesIO(sheet.png))


def write_contact_sheet(rows: Sequence[SheetRow], path: Path, title: str, subtitle: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_contact_sheet(rows, title, subtitle).save(path, format="PNG")
    return path
