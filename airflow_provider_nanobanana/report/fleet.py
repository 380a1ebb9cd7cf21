"""A contact sheet for a fleet of mapped single-edit tasks (``NanoBananaEditOperator.partial().expand()``).

Each mapped task returns ``{"request_id", "archived", "manifest", ...}``; its per-request manifest
records the inputs, which is how an output is put beside its input. A mapped task that failed leaves
no result, so the expand list (``inputs``) is passed too: every input no result covers is a failed
row. Use :class:`NanoBananaContactSheetOperator` after the mapped task (it runs when some edits
failed too), or call :func:`edits_report` from your own ``@task``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_nanobanana.media.keys import (
    fields_from_context,
    parse_s3_prefix,
    parse_s3_uri,
    sanitize_key_field,
)
from airflow_provider_nanobanana.report.link import ContactSheetLink
from airflow_provider_nanobanana.report.publish import publish_report
from airflow_provider_nanobanana.report.rows import rows_from_edits
from airflow_provider_nanobanana.report.sheet import SheetLimits

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_nanobanana.media.hook import S3MediaHook

#: Per-request manifests are small JSON documents; anything larger is not read.
MAX_MANIFEST_BYTES = 1024 * 1024
REPORTS_DIRNAME = "_reports"


def edits_report(
    context: Mapping[str, Any],
    media: S3MediaHook,
    results: Sequence[Mapping[str, Any] | None],
    *,
    output_s3_uri: str,
    inputs: Sequence[Sequence[str] | str] | None = None,
    limits: SheetLimits | None = None,
    strict: bool = True,
) -> dict[str, Any] | None:
    """Write the fleet's contact sheet under ``output_s3_uri/_reports/{dag_id}/{run_id}/{task_id}/``."""
    bucket, prefix = parse_s3_prefix(output_s3_uri, what="output_s3_uri")
    fields = fields_from_context(context)
    where = "/".join(sanitize_key_field(fields[name]) for name in ("dag_id", "run_id", "task_id"))
    results = [results[i] for i in range(len(results))]  # a lazy XCom sequence: index, do not iterate
    manifest_inputs = {
        str(result["request_id"]): _manifest_inputs(media, str(result["manifest"]))
        for result in results
        if result and result.get("request_id") and result.get("manifest")
    }
    expected = [inputs[i] for i in range(len(inputs))] if inputs is not None else None
    rows = rows_from_edits(results, manifest_inputs, expected)
    return publish_report(
        context,
        media,
        rows,
        dest_uri=f"s3://{bucket}/{prefix}{REPORTS_DIRNAME}/{where}/",
        title="Edits: inputs and outputs",
        limits=limits,
        strict=strict,
    )


def _manifest_inputs(media: S3MediaHook, uri: str) -> list[str]:
    bucket, key = parse_s3_uri(uri)
    body = media.get_client().get_object(Bucket=bucket, Key=key)["Body"]
    try:
        document = json.loads(body.read(MAX_MANIFEST_BYTES))
    finally:
        body.close()
    inputs = document.get("inputs") if isinstance(document, dict) else None
    return [str(u) for u in inputs] if isinstance(inputs, list) else []


class NanoBananaContactSheetOperator(BaseOperator):
    """Write a contact sheet (PNG + HTML) of a mapped edit task's results, linked from the task.

    :param results: the mapped edit task's output (``edits.output``), templated.
    :param inputs: the list the edit task was expanded over (one ``image_urls`` list or URI per
        task), templated; inputs without a result are shown as failed.
    :param output_s3_uri: ``s3://bucket/prefix/``; the report goes under ``_reports/`` below it.
    :param aws_conn_id: AWS connection used to read the images and write the report.
    :param max_rows: rows on the sheet (every failure first); the rest are counted.
    """

    template_fields: Sequence[str] = ("results", "inputs", "output_s3_uri")
    operator_extra_links = (ContactSheetLink(),)
    ui_color = "#ffe680"

    def __init__(
        self,
        *,
        results: Any,
        output_s3_uri: str,
        inputs: Any = None,
        aws_conn_id: str | None = "aws_default",
        max_rows: int = SheetLimits.max_rows,
        trigger_rule: str = "all_done",
        **kwargs: Any,
    ) -> None:
        super().__init__(trigger_rule=trigger_rule, **kwargs)
        self.results = results
        self.inputs = inputs
        self.output_s3_uri = output_s3_uri
        self.aws_conn_id = aws_conn_id
        self.limits = SheetLimits(max_rows=max_rows)

    def execute(self, context: Context) -> dict[str, Any] | None:
        from airflow_provider_nanobanana.media.hook import S3MediaHook

        return edits_report(
            context,
            S3MediaHook(self.aws_conn_id),
            self.results or [],
            output_s3_uri=self.output_s3_uri,
            inputs=self.inputs,
            limits=self.limits,
        )
