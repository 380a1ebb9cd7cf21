"""Every rule that keeps credentials out of logs, exceptions, XCom, trigger events and manifests.

URLs are redacted by **allow-list**. A URL that is kept anywhere keeps its scheme, host, port and
path; its user-info (``user:password@``) and fragment are dropped; in its query string every
parameter keeps its *name*, so a reader can still see that something was there, but its *value*
becomes ``***`` unless the name is in :data:`HARMLESS_QUERY_PARAMS`. A credential under a new or
unusual name (``access_token``, ``api_key``, ``key``, ``%61ccess_token``, a bare ``?token``) is
therefore hidden without anyone having to know its name. ``s3://`` URIs are kept as they are: S3
keys are literal, so ``?`` in one is part of the object name, not a query.

Free text (error bodies, exception messages, log lines) goes through :func:`redact_text`, which
redacts every URL inside it the same way, query strings without a scheme, ``Bearer <token>`` and
``Authorization: ...`` values.

Nothing here runs on import. Whoever creates an httpx client calls :func:`redact_httpx_logs` (once is
enough; it is idempotent), because httpx logs every request's full URL at INFO.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

__all__ = [
    "HARMLESS_QUERY_PARAMS",
    "REDACTED",
    "RedactURLsFilter",
    "mask_secret",
    "mask_url_secrets",
    "redact_httpx_logs",
    "redact_text",
    "redact_tree",
    "redact_url",
    "secret_values",
]

REDACTED = "***"

#: Query parameters whose values are shown (compared case-insensitively, after percent-decoding):
#: image-shaping knobs, and the parts of a pre-signed URL that say when and how it was signed but
#: grant nothing, which is what one needs to tell an expired link from a bad one. Everything else,
#: ``X-Amz-Signature``, ``X-Amz-Credential`` and ``X-Amz-Security-Token`` included, is ``***``.
HARMLESS_QUERY_PARAMS = frozenset(
    {
        "format",
        "width",
        "height",
        "quality",
        "expires",
        "x-amz-algorithm",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-goog-algorithm",
        "x-goog-date",
        "x-goog-expires",
        "x-goog-signedheaders",
    }
)

# RFC 3986, appendix B, for URLs that have an authority ("scheme://"): scheme, authority, path,
# query, fragment. Never fails, unlike urlsplit (which refuses a bad port or a broken IPv6 host).
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?:#.*)?",
    re.DOTALL,
)
# In free text: a URL, which ends at white space, quotes or angle brackets; or else a query
# parameter without a URL around it (after "?", "&" or ";": a name, "=", a value). A scheme starts
# a run of scheme characters and is at most 32 long, so a long word costs linear time, not quadratic.
_IN_TEXT = re.compile(
    r"(?P<url>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s\"'<>`]+)"
    r"|(?P<lead>[?&;])(?P<name>[^\s\"'<>`#=&;?]+)=(?P<value>[^\s\"'<>`#&;]*)"
)
# Sentence punctuation right after a URL belongs to the sentence.
_TRAILING_PUNCTUATION = ".,;:!?)]}"
_QUERY_SEPARATORS = re.compile(r"([&;])")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9\-._~+/]{8,}=*")
_AUTHORIZATION = re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,;}]+")


def redact_url(url: str) -> str:
    """``url`` without credentials: user-info and fragment dropped, non-harmless query values ``***``.

    ``https://user:pw@host:8443/a.png?X-Amz-Expires=60&X-Amz-Signature=abc#f`` becomes
    ``https://host:8443/a.png?X-Amz-Expires=60&X-Amz-Signature=***``. A string that is not one URL
    (no ``scheme://``, or white space in it) is redacted as free text by :func:`redact_text`.
    """
    match = _URL.fullmatch(url)
    if match is None or any(c.isspace() for c in url):
        return redact_text(url)
    scheme = match["scheme"]
    if scheme.lower() == "s3":
        return url
    host = match["authority"].rpartition("@")[2]
    query = match["query"]
    redacted = f"{scheme}://{host}{match['path']}"
    return f"{redacted}?{_redact_query(query)}" if query else redacted


def redact_text(text: str) -> str:
    """Free text with every credential it might quote blanked.

    URLs inside it are redacted like :func:`redact_url`; so are query strings without a scheme
    (``/v1/files?token=abc``), ``Bearer <token>`` and the value of an ``Authorization`` header, as
    servers echo them in error bodies. Text with none of these is returned unchanged.
    """
    text = _IN_TEXT.sub(_redact_in_text, text)
    text = _BEARER.sub(rf"\1\2{REDACTED}", text)
    return _AUTHORIZATION.sub(rf"\1{REDACTED}", text)


def redact_tree(node: Any) -> Any:
    """A JSON-ready copy of ``node`` (dicts, lists, scalars) with every string run through :func:`redact_text`."""
    if isinstance(node, str):
        return redact_text(node)
    if isinstance(node, Mapping):
        return {str(k): redact_tree(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_tree(v) for v in node]
    if node is None or isinstance(node, (bool, int, float)):
        return node
    return redact_text(str(node))


def secret_values(url: str) -> list[str]:
    """What :func:`redact_url` hides in ``url``, for Airflow's secrets masker.

    Every non-harmless query value (as written, and percent-decoded when that differs), the
    password of the user-info, or the user name when there is no password (``https://TOKEN@host``).
    """
    match = _URL.fullmatch(url)
    if match is None or match["scheme"].lower() == "s3":
        return []
    found: list[str] = []
    userinfo, at, _host = match["authority"].rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += [secret for _shown, secret in _query_pieces(match["query"] or "") if secret is not None]
    raw = [v for v in found if v]
    return list(dict.fromkeys([*raw, *(unquote_plus(v) for v in raw)]))


def mask_url_secrets(url: str) -> None:
    """Register what :func:`redact_url` hides in ``url`` with Airflow's secrets masker.

    This package never logs such values, but user code, a library or a server's error echo might;
    the masker then turns them into ``***`` in task logs.
    """
    for value in secret_values(url):
        mask_secret(value)


def mask_secret(secret: Any, name: str | None = None) -> None:
    """Ask Airflow to redact ``secret`` from task logs and rendered fields; a no-op outside Airflow."""
    if not secret:
        return
    # Imported here: this module is pure Python, so the emulator can use it without loading Airflow.
    from airflow_provider_nanobanana._compat import airflow_mask_secret

    mask = airflow_mask_secret()
    if mask is not None:
        mask(secret, name)


class RedactURLsFilter(logging.Filter):
    """Redacts log records of libraries that log whole URLs (httpx logs every request at INFO, and
    input and output URLs are pre-signed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_redact_arg(a) for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        return True


def redact_httpx_logs() -> None:
    """Install :class:`RedactURLsFilter` on httpx's logger, once however often it is called.

    Called by every piece of code that creates an httpx client, right before it does.
    """
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, RedactURLsFilter) for f in httpx_log.filters):
        httpx_log.addFilter(RedactURLsFilter())


def _harmless(name: str) -> bool:
    return unquote_plus(name).strip().lower() in HARMLESS_QUERY_PARAMS


def _redact_query(query: str) -> str:
    return "".join(shown for shown, _secret in _query_pieces(query))


def _query_pieces(query: str) -> list[tuple[str, str | None]]:
    """Each piece of a query string, separators included, as shown redacted and the value it hides."""
    pieces: list[tuple[str, str | None]] = []
    for piece in _QUERY_SEPARATORS.split(query):
        name, eq, value = piece.partition("=")
        if piece in ("", "&", ";") or (eq and _harmless(name)):
            pieces.append((piece, None))
        elif eq:
            pieces.append((f"{name}={REDACTED}", value))
        else:  # a bare value (``?TOKEN``): there is no name to keep
            pieces.append((REDACTED, piece))
    return pieces


def _redact_in_text(match: re.Match[str]) -> str:
    url = match["url"]
    if url:
        core = url.rstrip(_TRAILING_PUNCTUATION)
        return redact_url(core) + url[len(core) :]
    if _harmless(match["name"]):
        return match[0]
    return f"{match['lead']}{match['name']}={REDACTED}"


def _redact_arg(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    text = str(value)
    redacted = redact_text(text)
    return redacted if redacted != text else value
