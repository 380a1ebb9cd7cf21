"""Render a report and put it in S3: ``contact_sheet.png`` and ``contact_sheet.html`` side by side.

Images are read through the media hook's S3 client, one at a time and never beyond
``SheetLimits.max_image_bytes``; the two files are written with the same client. What is returned
(and pushed to XCom for the UI link) holds ``s3://`` URIs and an unsigned browser URL only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow_provider_nanobanana.media.keys import parse_s3_uri, s3_uri
from airflow_provider_nanobanana.report.html import render_html
from airflow_provider_nanobanana.report.rows import ReportRow, select_rows
from airflow_provider_nanobanana.report.sheet import SheetLimits, render_sheet

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media.hook import S3MediaHook

log = logging.getLogger(__name__)

SHEET_FILENAME = "contact_sheet.png"
HTML_FILENAME = "contact_sheet.html"


@dataclass(frozen=True)
class ReportLocation:
    """Where a report went and what it covers; JSON-safe (it is pushed to XCom as a dict)."""

    html: str
    png: str
    #: What the UI link opens: the HTML object at the S3 endpoint (or the AWS console), unsigned.
    url: str
    total: int
    failed: int
    shown: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReportWriter:
    """Writes contact sheets with one S3 client (the media hook's)."""

    def __init__(self, media: S3MediaHook, limits: SheetLimits | None = None) -> None:
        self.media = media
        self.limits = limits or SheetLimits()

    def load(self, uri: str) -> bytes:
        """The bytes of ``s3://bucket/key``, refused before download when over the size limit."""
        if not uri.startswith("s3://"):
            raise ValueError("not on S3")
        bucket, key = parse_s3_uri(uri)
        response = self.media.get_client().get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            if int(response.get("ContentLength") or 0) > self.limits.max_image_bytes:
                raise ValueError(f"larger than {self.limits.max_image_bytes} bytes")
            data: bytes = body.read(self.limits.max_image_bytes + 1)
        finally:
            body.close()
        return data

    def write(
        self,
        rows: Sequence[ReportRow],
        *,
        dest_uri: str,
        title: str,
        subtitle: str = "",
        manifest_uri: str | None = None,
    ) -> ReportLocation:
        """Render ``rows`` (capped, failures first) and upload both files under ``dest_uri``."""
        bucket, prefix = parse_s3_uri(dest_uri.rstrip("/") + "/")
        png_key, html_key = f"{prefix}{SHEET_FILENAME}", f"{prefix}{HTML_FILENAME}"
        selection = select_rows(rows, self.limits.max_rows)
        sheet = render_sheet(selection, self.load, title=title, subtitle=subtitle, limits=self.limits)
        page = render_html(
            selection,
            sheet.thumbnails,
            title=title,
            subtitle=subtitle,
            manifest_uri=manifest_uri,
            sheet_uri=s3_uri(bucket, png_key),
        )
        client = self.media.get_client()
        client.put_object(Bucket=bucket, Key=png_key, Body=sheet.png, ContentType="image/png")
        client.put_object(
            Bucket=bucket, Key=html_key, Body=page.encode("utf-8"), ContentType="text/html; charset=utf-8"
        )
        location = ReportLocation(
            html=s3_uri(bucket, html_key),
            png=s3_uri(bucket, png_key),
            url=browser_url(client, bucket, html_key),
            total=selection.total,
            failed=selection.failed_total,
            shown=len(selection.shown),
        )
        log.info(
            "Contact sheet of %d edit(s) (%d failed): %s", location.total, location.failed, location.html
        )
        return location


def browser_url(client: Any, bucket: str, key: str) -> str:
    """A URL a person can open for ``bucket/key``, with no signature in it.

    On AWS that is the S3 console's page of the object (the console signs the person in); on any
    other endpoint (MinIO, moto, LocalStack) the path-style object URL.
    """
    endpoint = str(getattr(client.meta, "endpoint_url", "") or "").rstrip("/")
    host = urlsplit(endpoint).hostname or ""
    if not endpoint or host.endswith("amazonaws.com"):
        region = getattr(client.meta, "region_name", None) or "us-east-1"
        return (
            f"https://console.aws.amazon.com/s3/object/{quote(bucket)}"
            f"?region={quote(region)}&prefix={quote(key, safe='')}"
        )
    return f"{endpoint}/{quote(bucket)}/{quote(key)}"
