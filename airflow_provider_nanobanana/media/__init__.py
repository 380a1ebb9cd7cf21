"""The S3 side of an edit: inputs RunComfy can fetch, and outputs archived safely.

=================  =====================================================================
``hook``           :class:`S3MediaHook`: settings, the boto3 client, the public methods
``inputs``         check, stage and pre-sign ``image_urls`` entries
``job``            plan an archive call before any I/O; what an earlier run left behind
``archiver``       stream outputs from the file host into S3, write the manifest
``multipart``      bounded-memory upload: one ``PutObject`` or a multipart upload
``quality``        the output quality gate: decodes each output as it streams (``on_bad_output``)
``retry``          which failures are transient; the tenacity policy
``errors``         the exceptions raised to users
``results``        ``ArchiveResult``, ``ArchivedOutput``, ``MissingOutput``
``keys``           S3 URIs, key templates and their escape guards (pure)
``content``        image sniffing and content types (pure)
``hosts``          the output-host allow-list (pure)
``manifest``       object metadata and the manifest document (pure)
=================  =====================================================================

Names are imported from their module on first access, so importing a pure rule (``media.keys``, as
operators do at DAG-parse time) does not load boto3's client machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_nanobanana._lazy import lazy_attributes

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media.errors import (
        InvalidInputImageError,
        OutputsNotArchivedError,
        OutputURLRefusedError,
    )
    from airflow_provider_nanobanana.media.hook import S3MediaHook
    from airflow_provider_nanobanana.media.keys import (
        DEFAULT_KEY_TEMPLATE,
        DEFAULT_MANIFEST_TEMPLATE,
        check_destination,
        fields_from_context,
        parse_s3_prefix,
        parse_s3_uri,
        render_key,
        sanitize_key_field,
    )
    from airflow_provider_nanobanana.media.results import ArchivedOutput, ArchiveResult, MissingOutput

_HOMES = {
    "S3MediaHook": "hook",
    "ArchiveResult": "results",
    "ArchivedOutput": "results",
    "MissingOutput": "results",
    "InvalidInputImageError": "errors",
    "OutputURLRefusedError": "errors",
    "OutputsNotArchivedError": "errors",
    "DEFAULT_KEY_TEMPLATE": "keys",
    "DEFAULT_MANIFEST_TEMPLATE": "keys",
    "check_destination": "keys",
    "fields_from_context": "keys",
    "parse_s3_prefix": "keys",
    "parse_s3_uri": "keys",
    "render_key": "keys",
    "sanitize_key_field": "keys",
}

__all__ = [
    "DEFAULT_KEY_TEMPLATE",
    "DEFAULT_MANIFEST_TEMPLATE",
    "ArchiveResult",
    "ArchivedOutput",
    "InvalidInputImageError",
    "MissingOutput",
    "OutputURLRefusedError",
    "OutputsNotArchivedError",
    "S3MediaHook",
    "check_destination",
    "fields_from_context",
    "parse_s3_prefix",
    "parse_s3_uri",
    "render_key",
    "sanitize_key_field",
]


__getattr__, __dir__ = lazy_attributes(__name__, _HOMES)
