"""A review sample of a finished batch: every failure plus a few random successes, on one sheet.

What a person looks at before approving a batch for publication (see the example DAG
``nanobanana_review`` and docs/report.md). The sample is drawn with the run id as the seed, so a
re-run of the sampling task shows the reviewer the same edits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_nanobanana.media.keys import parse_s3_uri
from airflow_provider_nanobanana.report.publish import publish_report
from airflow_provider_nanobanana.report.rows import rows_from_batch, sample_rows
from airflow_provider_nanobanana.report.sheet import SheetLimits

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media.hook import S3MediaHook

#: A batch manifest holds a few hundred bytes per item; this bounds what is read for a sample.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
REVIEW_DIRNAME = "review"


def review_sample(
    context: Mapping[str, Any],
    media: S3MediaHook,
    manifest_uri: str,
    *,
    sample_size: int = 12,
    seed: str | None = None,
    limits: SheetLimits | None = None,
) -> dict[str, Any]:
    """Write ``.../_batch/review/contact_sheet.{png,html}`` for the batch of ``manifest_uri``.

    Returns the report's location (``html``, ``png``, ``url``, counts) plus ``batch_total`` and
    ``batch_failed``, the whole batch's numbers; raises if the sheet cannot be written (a review
    must not go ahead without it).
    """
    bucket, key = parse_s3_uri(manifest_uri)
    body = media.get_client().get_object(Bucket=bucket, Key=key)["Body"]
    try:
        manifest = json.loads(body.read(MAX_MANIFEST_BYTES))
    finally:
        body.close()
    rows = rows_from_batch(manifest.get("items") or [])
    ti = context.get("ti")
    picked = sample_rows(rows, sample_size, seed or str(getattr(ti, "run_id", "") or manifest_uri))
    limits = limits or SheetLimits(max_rows=max(1, min(len(picked), 200)))
    report = publish_report(
        context,
        media,
        picked,
        dest_uri=f"{manifest_uri.rsplit('/', 1)[0]}/{REVIEW_DIRNAME}/",
        title=f"Review sample: {len(picked)} of {len(rows)} edits",
        manifest_uri=manifest_uri,
        limits=limits,
        strict=True,
    )
    if report is None:  # unreachable with strict=True, which raises instead
        raise RuntimeError(f"the review sheet for {manifest_uri} was not written")
    return {**report, "batch_total": len(rows), "batch_failed": sum(1 for row in rows if row.failed)}
