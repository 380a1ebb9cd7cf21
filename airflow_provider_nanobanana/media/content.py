"""What an output is: image types recognised by their leading bytes, never by what the CDN claims.

An output's type decides its key's extension and its ``Content-Type`` in S3. The bytes are trusted
first, then the URL, then the server's header; a body that is plainly markup or JSON (an error page
served with status 200) is refused instead of being archived as ``..._0.png``.
"""

from __future__ import annotations

import os.path
from urllib.parse import urlsplit

_CONTENT_TYPE_EXT = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/heic": "heic",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "image/svg+xml": "svg",
}
_URL_SUFFIX_TYPE = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".avif": "image/avif",
    ".heic": "image/heic",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".svg": "image/svg+xml",
}
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
UNKNOWN_EXT = "bin"
#: Every extension a key can get; the archiver looks for all of them when checking for earlier runs.
ALL_EXTENSIONS = (*dict.fromkeys(_CONTENT_TYPE_EXT.values()), UNKNOWN_EXT)

#: Enough leading bytes to recognise every format :func:`sniff_image_type` knows.
SNIFF_BYTES = 32


class NotAnImageError(ValueError):
    """The bytes are recognisably not an image (an HTML error page served with status 200, say)."""


def sniff_image_type(head: bytes) -> str | None:
    """The image type announced by the magic number at the start of ``head``, or ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    return None


def content_type_from_url(url: str) -> str | None:
    suffix = os.path.splitext(urlsplit(url).path)[1].lower()
    return _URL_SUFFIX_TYPE.get(suffix)


def resolve_content_type(head: bytes, *, url: str, declared: str | None) -> str:
    """Decide an output's type: the bytes first, because the CDN may lie; then the URL, then the header.

    Raises :class:`NotAnImageError` when the body is plainly markup or JSON (an error page served with
    200), so it is not archived as ``..._0.png``.
    """
    sniffed = sniff_image_type(head)
    if sniffed:
        return sniffed
    declared_type = (declared or "").split(";", 1)[0].strip().lower()
    if head.lstrip()[:1] in (b"<", b"{", b"[") and declared_type != "image/svg+xml":
        shown = declared_type or "no Content-Type"
        raise NotAnImageError(f"the body is not an image (it starts like markup or JSON; {shown})")
    by_url = content_type_from_url(url)
    if by_url:
        return by_url
    if declared_type.startswith("image/"):
        return declared_type
    return UNKNOWN_CONTENT_TYPE


def extension_for(content_type: str) -> str:
    return _CONTENT_TYPE_EXT.get(content_type, UNKNOWN_EXT)
