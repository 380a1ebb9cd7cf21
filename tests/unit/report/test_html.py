"""The HTML page: every text escaped, thumbnails embedded, no pre-signed URL or signature in it."""

from __future__ import annotations

import base64
import re

from airflow_provider_nanobanana.report.html import CSP, display_uri, render_html
from airflow_provider_nanobanana.report.rows import ReportRow, RowStatus, select_rows

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/in/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Signature=deadbeefcafe1234&X-Amz-Expires=3600"
)
HOSTILE = '<script>alert("x")</script>&amp;\'"'


def page(rows: list[ReportRow], thumbnails: dict[str, bytes] | None = None) -> str:
    return render_html(
        select_rows(rows, 50),
        thumbnails or {},
        title=f"title {HOSTILE}",
        subtitle=f"run {HOSTILE}",
        manifest_uri="s3://b/out/_batch/manifest.json",
    )


def test_every_text_from_users_apis_and_keys_is_escaped() -> None:
    row = ReportRow(
        label=HOSTILE,
        status=RowStatus.FAILED,
        request_id=f"r-{HOSTILE}",
        inputs=(f"s3://b/in/{HOSTILE}.png",),
        error=f"server said {HOSTILE}",
    )
    html = page([row])
    assert "<script>" not in html
    assert 'alert("x")' not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;&#x27;&quot;") == 7
    tags = set(re.findall(r"<([a-z0-9]+)", html))
    assert tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "p",
        "code",
        "table",
        "thead",
        "tr",
        "th",
        "tbody",
        "td",
        "br",
        "span",
        "figure",
        "figcaption",
        "img",
    }


def test_no_pre_signed_url_or_signature_reaches_the_page() -> None:
    row = ReportRow(
        "a",
        RowStatus.SUCCEEDED,
        "r1",
        (PRESIGNED, "https://user:pw@cdn.example/x.png#frag"),
        ("s3://b/out/a.png",),
    )
    html = page([row], {PRESIGNED: b"\xff\xd8jpeg"})
    for secret in ("X-Amz-Signature", "deadbeefcafe1234", "X-Amz-Credential", "AKIAEXAMPLE", "user:pw", "?"):
        assert secret not in html.split("<style>")[0] + html.split("</style>")[1], secret
    assert "https://bucket.s3.amazonaws.com/in/a.png" in html
    assert "https://cdn.example/x.png<" in html


def test_thumbnails_are_embedded_and_nothing_external_may_load() -> None:
    jpeg = b"\xff\xd8\xff\xe0 fake jpeg"
    row = ReportRow("a", RowStatus.SUCCEEDED, "r1", ("s3://b/in/a.png",), ("s3://b/out/a.png",))
    html = page([row], {"s3://b/in/a.png": jpeg})
    assert f'src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}"' in html
    assert html.count("<img") == 1
    assert "no preview" in html
    assert f'content="{CSP.replace(chr(39), "&#x27;")}"' in html
    assert 'src="http' not in html


def test_the_summary_counts_failures_and_what_the_cap_left_out() -> None:
    rows = [ReportRow(f"i{n}", RowStatus.FAILED if n < 3 else RowStatus.SUCCEEDED) for n in range(10)]
    html = render_html(select_rows(rows, 4), {}, title="t")
    assert "10 edit(s), 3 not succeeded; showing 4 (failures first), 6 more in the manifest" in html
    assert html.count('<tr class="failed">') == 3


def test_display_uri_keeps_s3_keys_whole_and_drops_url_queries() -> None:
    assert display_uri("s3://b/k?x=1#y") == "s3://b/k?x=1#y"  # '?' and '#' are legal in S3 keys
    assert display_uri(PRESIGNED) == "https://bucket.s3.amazonaws.com/in/a.png"
    assert display_uri("https://u:p@h:8443/p/q.png?t=1#f") == "https://h:8443/p/q.png"
