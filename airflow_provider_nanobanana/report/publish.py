"""Write a task's report and make it findable: XCom (for the "Contact sheet" link) and the result.

A report is a convenience: when it cannot be written (S3 refuses, an image library problem) the task
logs a warning and goes on, because the edits and their manifests are already safe.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_nanobanana.batch.state import BatchState, manifest_entry
from airflow_provider_nanobanana.report.link import REPORT_XCOM_KEY
from airflow_provider_nanobanana.report.rows import ReportRow, rows_from_batch
from airflow_provider_nanobanana.report.sheet import SheetLimits
from airflow_provider_nanobanana.report.writer import ReportWriter

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media.hook import S3MediaHook

log = logging.getLogger(__name__)


def publish_report(
    context: Mapping[str, Any],
    media: S3MediaHook,
    rows: Sequence[ReportRow],
    *,
    dest_uri: str,
    title: str,
    manifest_uri: str | None = None,
    limits: SheetLimits | None = None,
    strict: bool = False,
) -> dict[str, Any] | None:
    """Write the report under ``dest_uri`` and push where it is; ``None`` (logged) if it failed,
    unless ``strict`` (a task whose only job is the report fails instead)."""
    ti = context.get("ti")
    subtitle = " / ".join(
        str(getattr(ti, name)) for name in ("dag_id", "run_id", "task_id") if getattr(ti, name, None)
    )
    try:
        location = ReportWriter(media, limits).write(
            rows, dest_uri=dest_uri, title=title, subtitle=subtitle, manifest_uri=manifest_uri
        )
    except Exception as exc:  # the edits are archived; a missing report must not fail them
        if strict:
            raise
        log.warning("Could not write the contact sheet under %s: %s", dest_uri, exc, exc_info=True)
        return None
    report = location.as_dict()
    if ti is not None:
        ti.xcom_push(key=REPORT_XCOM_KEY, value=report)
    return report


def publish_batch_report(
    context: Mapping[str, Any],
    media: S3MediaHook,
    state: BatchState,
    *,
    manifest_uri: str,
    limits: SheetLimits | None = None,
) -> dict[str, Any] | None:
    """The batch operator's report, beside its manifest (``.../_batch/contact_sheet.{png,html}``)."""
    dest_uri = manifest_uri.rsplit("/", 1)[0] + "/"
    rows = rows_from_batch(manifest_entry(item) for item in state.items)
    return publish_report(
        context,
        media,
        rows,
        dest_uri=dest_uri,
        title="Batch edit: inputs and outputs",
        manifest_uri=manifest_uri,
        limits=limits,
    )
