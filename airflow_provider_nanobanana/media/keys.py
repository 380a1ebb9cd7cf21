"""Where an archived file lands: S3 URIs, object-key templates and the guards that keep keys in place.

Nothing here does I/O, so every rule that decides *where* a file lands can be tested without a server.

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
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.redaction import redact_url

#: Where output ``index`` of a request lands, relative to the destination prefix. The task-instance
#: fields make the layout browsable; ``request_id`` makes a retry that resubmitted land beside, not over.
DEFAULT_KEY_TEMPLATE = "{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}_{index}.{ext}"
#: The manifest sits in the same folder as the images of the default layout.
DEFAULT_MANIFEST_TEMPLATE = "{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}.manifest.json"

#: Fields the archiver fills in itself; callers may not pass them in ``fields``.
RESERVED_FIELDS = frozenset({"request_id", "index", "ext"})

#: SigV4 pre-signed URLs live at most seven days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
#: S3 refuses keys longer than 1024 bytes (UTF-8).
MAX_KEY_BYTES = 1024
#: A field longer than this is cut and suffixed with a hash of the full value, so it stays unique.
MAX_FIELD_CHARS = 128

_UNSAFE_FIELD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
#: S3's naming rules (general purpose buckets): checked up front, because a name S3 refuses would
#: otherwise only fail when the outputs of a paid job are being archived.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


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
    if problem := bucket_name_problem(bucket):
        raise InvalidEditRequestError(f"{redact_url(uri)!r} does not name a valid S3 bucket: {problem}")
    return bucket, key


def bucket_name_problem(bucket: str) -> str | None:
    """Why S3 would refuse ``bucket`` as a bucket name, or None."""
    if not _BUCKET_NAME.match(bucket):
        return "3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return "no '..', '.-' or '-.'"
    if _IP_ADDRESS.match(bucket):
        return "not shaped like an IP address"
    if bucket.startswith(_RESERVED_BUCKET_PREFIXES) or bucket.endswith(_RESERVED_BUCKET_SUFFIXES):
        return (
            "prefixes "
            + ", ".join(_RESERVED_BUCKET_PREFIXES)
            + " and suffixes "
            + ", ".join(_RESERVED_BUCKET_SUFFIXES)
            + " are reserved by S3"
        )
    return None


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
