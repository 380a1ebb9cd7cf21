"""What is recorded about an archived output: S3 user metadata on each object, and the manifest.

Nothing here does I/O. The metadata is what makes archiving idempotent (an object counts as archived
only when it carries the request id, the output index and the sha256 of its bytes); the manifest is
written beside the images once every output is in, so its presence means the archive is complete.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from airflow_provider_nanobanana.redaction import redact_tree

MANIFEST_VERSION = 1

# User metadata (``x-amz-meta-*``) written on every archived object.
META_REQUEST_ID = "nanobanana-request-id"
META_OUTPUT_INDEX = "nanobanana-output-index"
META_MODEL_ID = "nanobanana-model-id"
META_PROMPT_SHA256 = "nanobanana-prompt-sha256"
META_SEED = "nanobanana-seed"
#: Written only once the object is complete: its presence marks an archived output (see archiver.py).
META_SHA256 = "nanobanana-sha256"
OWN_METADATA_KEYS = frozenset(
    {META_REQUEST_ID, META_OUTPUT_INDEX, META_MODEL_ID, META_PROMPT_SHA256, META_SEED, META_SHA256}
)

# Printable ASCII except "%", which starts the escapes that carry everything else.
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
_METADATA_KEY_UNSAFE = re.compile(r"[^a-z0-9-]")
MAX_METADATA_VALUE_CHARS = 256


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
    fingerprint: str | None = None,
    reused_from: Mapping[str, Any] | None = None,
    cost_usd: float | None = None,
) -> dict[str, Any]:
    """The manifest document, written as ``{request_id}.manifest.json`` once every output is archived.

    Top level: ``manifest_version``, ``request_id``, ``model_id``, ``bucket``, ``fields`` (template
    values), ``inputs`` (as the user gave them, credentials blanked), ``parameters``, ``prompt_sha256``,
    ``output_count``, ``total_bytes``, ``started_at``/``finished_at`` (UTC ISO-8601) and ``duration_s``.
    Each of ``outputs``: ``index``, ``source_url`` (redacted), ``s3_uri``, ``key``, ``size_bytes``,
    ``sha256``, ``checksum_sha256`` (S3's), ``content_type`` (sniffed), ``reused`` (archived by an
    earlier run) and ``seconds``. With content-addressed reuse (``spend/reuse.py``): ``fingerprint``
    (what the edit was, see ``spend/fingerprint.py``) and, for outputs copied from an earlier run
    instead of paid for again, ``reused_from`` (``request_id`` and ``manifest`` of that run).
    """
    extra: dict[str, Any] = {}
    if fingerprint is not None:
        extra["fingerprint"] = fingerprint
    if reused_from is not None:
        extra["reused_from"] = dict(reused_from)
    if cost_usd is not None:
        extra["cost_usd"] = cost_usd  # as RunComfy reported it (``result?include_cost=true``)
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
        **extra,
    }
