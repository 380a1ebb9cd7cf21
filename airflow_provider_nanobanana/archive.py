"""Pure helpers for archiving edit outputs to S3: URIs, object keys, image sniffing, metadata, manifest.

Nothing here does I/O, so every rule that decides *where* a file lands or *what* is recorded about it can
be tested without a server. The S3 hook (``hooks/s3_media.py``) does the fetching and uploading.

Keys are built from a template whose fields partly come from user-controlled data (run ids, task ids,
request ids). Every field is squeezed into one safe path segment, and the rendered key is checked again,
so no value can climb out of the configured prefix (``..``), start a new root (``/``) or smuggle control
characters into a key.
"""

from __future__ import annotations

import hashlib
import os.path
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.redaction import redact_tree, redact_url

#: Where output ``index`` of a request lands, relative to the destination prefix. The task-instance
#: fields make the layout browsable; ``request_id`` makes a retry that resubmitted land beside, not over.
DEFAULT_KEY_TEMPLATE = "{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}_{index}.{ext}"
#: The manifest sits in the same folder as the images of the default layout.
DEFAULT_MANIFEST_TEMPLATE = "{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}.manifest.json"
MANIFEST_VERSION = 1

#: Fields the archiver fills in itself; callers may not pass them in ``fields``.
RESERVED_FIELDS = frozenset({"request_id", "index", "ext"})

#: S3 refuses keys longer than 1024 bytes (UTF-8).
MAX_KEY_BYTES = 1024
#: A field longer than this is cut and suffixed with a hash of the full value, so it stays unique.
MAX_FIELD_CHARS = 128

# User metadata (``x-amz-meta-*``) written on every archived object.
META_REQUEST_ID = "nanobanana-request-id"
META_OUTPUT_INDEX = "nanobanana-output-index"
META_MODEL_ID = "nanobanana-model-id"
META_PROMPT_SHA256 = "nanobanana-prompt-sha256"
META_SEED = "nanobanana-seed"
#: Written only once the object is complete: its presence marks an archived output (see the hook).
META_SHA256 = "nanobanana-sha256"
OWN_METADATA_KEYS = frozenset(
    {META_REQUEST_ID, META_OUTPUT_INDEX, META_MODEL_ID, META_PROMPT_SHA256, META_SEED, META_SHA256}
)

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

_UNSAFE_FIELD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")
# Printable ASCII except "%", which starts the escapes that carry everything else.
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_METADATA_KEY_UNSAFE = re.compile(r"[^a-z0-9-]")
MAX_METADATA_VALUE_CHARS = 256


class NotAnImageError(ValueError):
    """The bytes are recognisably not an image (an HTML error page served with status 200, say)."""


# --- S3 URIs -------------------------------------------------------------------------------------


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty (a bucket or prefix).

    The key is taken literally, like the AWS CLI does: ``?``, ``#`` and ``%`` are legal in S3 keys,
    so the URI is not parsed as a URL.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        scheme = uri.split("://", 1)[0] + "://" if isinstance(uri, str) and "://" in uri else None
        hint = f" (got scheme {scheme!r})" if scheme else ""
        raise InvalidEditRequestError(
            f"{redact_url(str(uri))!r} is not an s3:// URI{hint}; expected s3://bucket/key"
        )
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise InvalidEditRequestError(f"{uri!r} does not name a valid S3 bucket (3-63 of a-z, 0-9, '.', '-')")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_prefix(uri: str, *, what: str) -> tuple[str, str]:
    """``s3://bucket[/prefix[/]]`` as ``(bucket, "prefix/")``: a folder that keys are appended to."""
    try:
        bucket, prefix = parse_s3_uri(uri)
    except InvalidEditRequestError as exc:
        raise InvalidEditRequestError(f"{what}: {exc}") from None
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if prefix:
        check_relative_key(prefix.rstrip("/"), what=what)
    return bucket, prefix


# --- Object keys ---------------------------------------------------------------------------------


def sanitize_key_field(value: object) -> str:
    """Turn any value into one harmless path segment.

    Anything outside ``A-Za-z0-9._-`` (slashes, backslashes, control characters, spaces, ``:``,
    ``+``, non-ASCII) becomes ``_``; a segment made only of dots (``.``, ``..``) becomes underscores;
    overlong values are cut and suffixed with a hash of the original so distinct values stay distinct.
    """
    text = str(value)
    safe = _UNSAFE_FIELD_CHARS.sub("_", text)
    if not safe.strip("."):
        safe = "_" * max(len(safe), 1)
    if len(safe) > MAX_FIELD_CHARS:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = f"{safe[: MAX_FIELD_CHARS - 17]}-{digest}"
    return safe


def _parse_template(template: str, *, what: str) -> list[tuple[str, str | None, str]]:
    """``(literal, field name, format spec)`` triples, refusing positional fields, attribute or index
    access and conversions: ``str.format`` would happily evaluate ``{request_id.__class__}``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidEditRequestError(f"{what}: {exc} in {template!r}") from None
    result = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not name.isidentifier() or conversion):
            shown = name + (f"!{conversion}" if conversion else "")
            raise InvalidEditRequestError(
                f"{what}: {{{shown}}} is not allowed; use plain {{field}} or {{field:spec}} placeholders"
            )
        result.append((literal, name, spec or ""))
    return result


def template_fields(template: str, *, what: str = "key_template") -> list[str]:
    """Names of the fields ``template`` uses."""
    return [name for _literal, name, _spec in _parse_template(template, what=what) if name is not None]


def render_key(template: str, values: Mapping[str, object], *, what: str = "key_template") -> str:
    """Fill ``template`` with sanitised ``values`` and check that the result stays a relative key."""
    parts: list[str] = []
    for literal, name, spec in _parse_template(template, what=what):
        parts.append(literal)
        if name is None:
            continue
        if name not in values:
            known = ", ".join(sorted(values))
            raise InvalidEditRequestError(f"{what}: unknown field {{{name}}}; available fields: {known}")
        try:
            text = format(values[name], spec)
        except (TypeError, ValueError) as exc:
            raise InvalidEditRequestError(f"{what}: cannot format {{{name}:{spec}}}: {exc}") from None
        parts.append(sanitize_key_field(text))
    key = "".join(parts)
    check_relative_key(key, what=what)
    return key


def check_relative_key(key: str, *, what: str) -> None:
    """Refuse keys that could escape a prefix or confuse tools (fields are safe; templates may not be)."""
    if not key:
        raise InvalidEditRequestError(f"{what}: renders to an empty key")
    problem = None
    if key.startswith("/"):
        problem = "starts with '/'"
    elif "\\" in key:
        problem = "contains a backslash"
    elif _CONTROL_CHARS.search(key):
        problem = "contains control characters"
    elif any(segment in ("", ".", "..") for segment in key.split("/")):
        problem = "contains an empty, '.' or '..' path segment"
    if problem:
        raise InvalidEditRequestError(f"{what}: key {key!r} {problem}")


def join_key(prefix: str, relative: str, *, what: str) -> str:
    key = prefix + relative
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidEditRequestError(
            f"{what}: key is longer than S3's {MAX_KEY_BYTES}-byte limit: {key[:80]}..."
        )
    return key


def common_prefix(keys: Iterable[str]) -> str:
    # Character-wise on purpose: S3 prefixes are plain string prefixes, not path components.
    return os.path.commonprefix(list(keys))  # noqa: RUF071


def fields_from_context(context: Mapping[str, Any]) -> dict[str, str | int]:
    """The task-instance fields of :data:`DEFAULT_KEY_TEMPLATE`, from an Airflow task context."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": -1 if map_index is None else int(map_index),
    }


# --- Content sniffing ----------------------------------------------------------------------------


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


# --- Output-host allowlist (SSRF guard) ----------------------------------------------------------


def normalise_host_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """Lower-case host patterns: exact hosts (``model-api.runcomfy.net``) or ``*.suffix`` wildcards."""
    result = []
    for raw in patterns:
        pattern = str(raw).strip().lower().rstrip(".").strip("[]")
        if pattern.startswith("*."):
            suffix = pattern[2:]
            if not suffix or "*" in suffix or "." not in suffix.strip("."):
                raise ValueError(f"allowed_output_hosts: {raw!r} is too broad; use e.g. '*.runcomfy.net'")
        elif not pattern or "*" in pattern or "/" in pattern:
            raise ValueError(f"allowed_output_hosts: {raw!r} is not a host name or '*.suffix' pattern")
        result.append(pattern)
    return tuple(dict.fromkeys(result))


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def output_url_problem(url: str, patterns: Sequence[str]) -> str | None:
    """Why ``url`` may not be fetched (``None`` if it may): only http(s) to an allowed host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"has scheme {parts.scheme or '(none)'!r}; only http and https outputs are fetched"
    if not host:
        return "has no host"
    if not host_allowed(host, patterns):
        allowed = ", ".join(patterns) or "(none configured)"
        return f"is on host {host!r}, which is not in allowed_output_hosts ({allowed})"
    return None


# --- Metadata and manifest -----------------------------------------------------------------------


def ascii_metadata(values: Mapping[str, object]) -> dict[str, str]:
    """S3 user metadata that survives HTTP headers: ASCII keys and values, percent-escaping the rest."""
    result = {}
    for raw_key, raw_value in values.items():
        key = _METADATA_KEY_UNSAFE.sub("-", str(raw_key).lower()).strip("-")
        if not key or raw_value is None:
            continue
        value = quote(str(raw_value).strip(), safe=_METADATA_SAFE)
        result[key] = value[:MAX_METADATA_VALUE_CHARS]
    return result


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_manifest(
    *,
    request_id: str,
    model_id: str,
    bucket: str,
    fields: Mapping[str, object],
    inputs: Sequence[str],
    parameters: Mapping[str, Any],
    prompt_sha256: str | None,
    outputs: Sequence[Mapping[str, Any]],
    started_at: str,
    finished_at: str,
    duration_s: float,
) -> dict[str, Any]:
    """The manifest document, written as ``{request_id}.manifest.json`` once every output is archived.

    Top level: ``manifest_version``, ``request_id``, ``model_id``, ``bucket``, ``fields`` (template
    values), ``inputs`` (as the user gave them, credentials blanked), ``parameters``, ``prompt_sha256``,
    ``output_count``, ``total_bytes``, ``started_at``/``finished_at`` (UTC ISO-8601) and ``duration_s``.
    Each of ``outputs``: ``index``, ``source_url`` (redacted), ``s3_uri``, ``key``, ``size_bytes``,
    ``sha256``, ``content_type`` (sniffed), ``reused`` (archived by an earlier run) and ``seconds``.
    """
    return {
        "manifest_version": MANIFEST_VERSION,
        "request_id": request_id,
        "model_id": model_id,
        "bucket": bucket,
        "fields": redact_tree(dict(fields)),
        "inputs": redact_tree(list(inputs)),
        "parameters": redact_tree(dict(parameters)),
        "prompt_sha256": prompt_sha256,
        "outputs": [dict(o) for o in outputs],
        "output_count": len(outputs),
        "total_bytes": sum(int(o["size_bytes"]) for o in outputs),
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": round(duration_s, 3),
    }


def check_destination(
    dest_uri: str,
    key_template: str,
    fields: Mapping[str, object],
    *,
    outputs: int = 1,
    what: str = "output_s3_uri",
) -> None:
    """Refuse a destination that could not hold the outputs, before anything is paid for.

    The same checks :meth:`S3MediaHook.archive_outputs` makes, run with a sample request id, so a
    bad ``output_s3_uri`` or ``s3_key_template`` fails the task up front instead of after the job
    completed (when the outputs would then be at risk).
    """
    parse_s3_prefix(dest_uri, what=what)
    render_key(
        key_template, {**fields, "request_id": "request-id", "index": 0, "ext": "png"}, what="s3_key_template"
    )
    if outputs > 1 and "index" not in template_fields(key_template, what="s3_key_template"):
        raise InvalidEditRequestError("s3_key_template must contain {index}: there are several outputs")
