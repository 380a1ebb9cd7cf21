"""Visual reports: a contact sheet (PNG + HTML) of edits, inputs beside outputs, failures marked.

=================  ======================================================================
``rows``           one row per edit, built from manifests and results; the cap and sampling (pure)
``sheet``          the PNG: thumbnails made one image at a time, bounded (Pillow, imported lazily)
``html``           the HTML page: escaped text, embedded thumbnails, no pre-signed URL
``writer``         render both and put them in S3 through the media hook's client
``publish``        write a task's report, push it to XCom; the batch operator's call
``link``           the "Contact sheet" operator extra link
``fleet``          the report of a mapped single-edit fleet: a function and an operator
``review``         a review sample of a finished batch (every failure, a few random successes)
=================  ======================================================================

Names are imported from their module on first access, so importing the pure parts does not load
Airflow or Pillow. See docs/report.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_nanobanana._lazy import lazy_attributes

if TYPE_CHECKING:
    from airflow_provider_nanobanana.report.fleet import NanoBananaContactSheetOperator, edits_report
    from airflow_provider_nanobanana.report.link import REPORT_XCOM_KEY, ContactSheetLink
    from airflow_provider_nanobanana.report.publish import publish_batch_report, publish_report
    from airflow_provider_nanobanana.report.review import review_sample
    from airflow_provider_nanobanana.report.rows import (
        ReportRow,
        RowStatus,
        Selection,
        rows_from_batch,
        rows_from_edits,
        sample_rows,
        select_rows,
    )
    from airflow_provider_nanobanana.report.sheet import SheetLimits, render_sheet
    from airflow_provider_nanobanana.report.writer import ReportLocation, ReportWriter

_HOMES = {
    "NanoBananaContactSheetOperator": "fleet",
    "edits_report": "fleet",
    "REPORT_XCOM_KEY": "link",
    "ContactSheetLink": "link",
    "publish_batch_report": "publish",
    "publish_report": "publish",
    "review_sample": "review",
    "ReportRow": "rows",
    "RowStatus": "rows",
    "Selection": "rows",
    "rows_from_batch": "rows",
    "rows_from_edits": "rows",
    "sample_rows": "rows",
    "select_rows": "rows",
    "SheetLimits": "sheet",
    "render_sheet": "sheet",
    "ReportLocation": "writer",
    "ReportWriter": "writer",
}

__all__ = [
    "REPORT_XCOM_KEY",
    "ContactSheetLink",
    "NanoBananaContactSheetOperator",
    "ReportLocation",
    "ReportRow",
    "ReportWriter",
    "RowStatus",
    "Selection",
    "SheetLimits",
    "edits_report",
    "publish_batch_report",
    "publish_report",
    "render_sheet",
    "review_sample",
    "rows_from_batch",
    "rows_from_edits",
    "sample_rows",
    "select_rows",
]


__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
