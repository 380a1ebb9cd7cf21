"""The contact sheet as a small, self-contained HTML page.

Every text that came from a user, an API or S3 (item ids, prompts' file names, errors, keys) is
escaped. Images are embedded as ``data:`` JPEG thumbnails, so the page needs no pre-signed URL (it
would hold a signature and expire) and loads nothing from elsewhere: its Content-Security-Policy
allows only inline images and styles. URIs are shown without their query strings.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape

from airflow_provider_nanobanana.report.rows import ReportRow, RowStatus, Selection
from airflow_provider_nanobanana.report.sheet import summary_line

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f5f5f5;color:#1e1e1e}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}
tr.failed td{background:#fde8e8}tr.unfinished td,tr.skipped td,tr.flagged td{background:#fff4e0}
.status-failed{color:#c81414;font-weight:bold}.status-unfinished,.status-skipped,.status-flagged{color:#c87800;font-weight:bold}
figure{display:inline-block;margin:0 .4em .4em 0}figcaption{font-size:.75em;color:#555;max-width:160px;
overflow-wrap:anywhere}.muted{color:#666}.placeholder{display:inline-block;width:128px;height:128px;
background:#e1e1e1;color:#666;font-size:.8em}
""".strip()


def display_uri(uri: str) -> str:
    """``uri`` as shown to a person: ``s3://`` URIs whole, URLs without user-info, query or fragment."""
    if uri.startswith("s3://"):
        return uri
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri.split("?", 1)[0].split("#", 1)[0]
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://{host}{slash}{path}".split("?", 1)[0].split("#", 1)[0]


def render_html(
    selection: Selection,
    thumbnails: Mapping[str, bytes],
    *,
    title: str,
    subtitle: str = "",
    manifest_uri: str | None = None,
    sheet_uri: str | None = None,
) -> str:
    """The page: a summary, then one table row per shown edit with its thumbnails."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="muted">{escape(subtitle)}</p>')
    summary_class = "status-failed" if selection.failed_total else "muted"
    parts.append(f'<p class="{summary_class}">{escape(summary_line(selection))}</p>')
    for name, uri in (("Manifest", manifest_uri), ("Contact sheet PNG", sheet_uri)):
        if uri:
            parts.append(f'<p class="muted">{name}: <code>{escape(display_uri(uri))}</code></p>')
    parts.append(
        "<table><thead><tr><th>item</th><th>status</th><th>request id</th><th>input</th>"
        "<th>outputs</th></tr></thead><tbody>"
    )
    parts += [_row(row, thumbnails) for row in selection.shown]
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"


def _row(row: ReportRow, thumbnails: Mapping[str, bytes]) -> str:
    status_class = "" if row.status is RowStatus.SUCCEEDED else row.status.value
    status = escape(row.status.value.upper() if row.failed else row.status.value)
    if row.error:
        status += f'<br><span class="muted">{escape(row.error)}</span>'
    inputs = "".join(_figure(uri, thumbnails) for uri in row.inputs) or '<span class="muted">none</span>'
    outputs = "".join(_figure(uri, thumbnails) for uri in row.outputs) or '<span class="muted">none</span>'
    return (
        f'<tr class="{status_class}"><td>{escape(row.label)}</td>'
        f'<td class="status-{escape(row.status.value)}">{status}</td>'
        f"<td><code>{escape(row.request_id or '')}</code></td><td>{inputs}</td><td>{outputs}</td></tr>"
    )


def _figure(uri: str, thumbnails: Mapping[str, bytes]) -> str:
    shown = escape(display_uri(uri))
    data = thumbnails.get(uri)
    if data is None:
        image = '<span class="placeholder">no preview</span>'
    else:
        encoded = base64.b64encode(data).decode("ascii")
        image = f'<img src="data:image/jpeg;base64,{encoded}" alt="{shown}">'
    return f"<figure>{image}<figcaption>{shown}</figcaption></figure>"
