"""One archive call, planned before any I/O: validated settings, rendered keys, metadata, manifest key.

:meth:`ArchiveJob.plan` refuses a bad request id, template, destination or output URL before a single
byte is fetched, so a mistake never leaves half an archive behind. :class:`ExistingObjects` is what an
earlier run left at an output's keys, and decides whether that output is already archived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_nanobanana.exceptions import ArchiveError, InvalidEditRequestError
from airflow_provider_nanobanana.media.content import ALL_EXTENSIONS
from airflow_provider_nanobanana.media.errors import OutputURLRefusedError
from airflow_provider_nanobanana.media.hosts import output_url_problem
from airflow_provider_nanobanana.media.keys import (
    RESERVED_FIELDS,
    join_key,
    parse_s3_prefix,
    render_key,
    template_fields,
)
from airflow_provider_nanobanana.media.manifest import (
    META_MODEL_ID,
    META_OUTPUT_INDEX,
    META_PROMPT_SHA256,
    META_REQUEST_ID,
    META_SEED,
    META_SHA256,
    OWN_METADATA_KEYS,
    ascii_metadata,
    sha256_text,
)
from airflow_provider_nanobanana.models import validate_request_id
from airflow_provider_nanobanana.redaction import mask_url_secrets, redact_url


@dataclass(frozen=True)
class ArchiveJob:
    """Everything fixed for one ``archive_outputs`` call, validated up front."""

    request_id: str
    model_id: str
    bucket: str
    prefix: str
    key_template: str
    manifest_key: str
    fields: Mapping[str, object]
    base_metadata: Mapping[str, str]
    output_urls: tuple[str, ...]
    inputs: tuple[str, ...]
    parameters: Mapping[str, Any]
    overwrite: bool
    #: The edit's content fingerprint (``spend/fingerprint.py``), recorded in the manifest when known.
    fingerprint: str | None = None
    #: What RunComfy reported the job cost (USD, ``result?include_cost=true``), when it did.
    cost_usd: float | None = None

    @classmethod
    def plan(
        cls,
        output_urls: Sequence[str],
        *,
        request_id: str,
        dest_uri: str,
        fields: Mapping[str, str | int],
        key_template: str,
        manifest_template: str,
        model_id: str,
        prompt: str | None,
        seed: int | None,
        inputs: Sequence[str],
        parameters: Mapping[str, Any] | None,
        extra_metadata: Mapping[str, str] | None,
        overwrite: bool,
        allowed_output_hosts: Sequence[str],
        fingerprint: str | None = None,
        cost_usd: float | None = None,
    ) -> ArchiveJob:
        """Validate everything that needs no network, and refuse disallowed URLs before any fetch."""
        try:
            validate_request_id(request_id)
        except ValueError as exc:
            raise InvalidEditRequestError(str(exc)) from None
        if not output_urls:
            raise ArchiveError(f"request {request_id} has no output URLs to archive")
        reserved = RESERVED_FIELDS.intersection(fields)
        if reserved:
            raise InvalidEditRequestError(
                f"fields: {sorted(reserved)} are filled in by the archiver; remove them"
            )
        if len(output_urls) > 1 and "index" not in template_fields(key_template):
            raise InvalidEditRequestError("key_template must contain {index}: there are several outputs")
        bucket, prefix = parse_s3_prefix(dest_uri, what="dest_uri")
        for url in output_urls:
            mask_url_secrets(url)  # output URLs carry CDN signatures too
        refused = [
            f"output {i} ({redact_url(url)}) {problem}"
            for i, url in enumerate(output_urls)
            if (problem := output_url_problem(url, allowed_output_hosts))
        ]
        if refused:
            raise OutputURLRefusedError(
                "refusing to fetch outputs, nothing was downloaded: " + "; ".join(refused)
            )
        own = {
            META_REQUEST_ID: request_id,
            META_MODEL_ID: model_id,
            META_PROMPT_SHA256: sha256_text(prompt) if prompt is not None else None,
            META_SEED: seed,
        }
        extra = {k: v for k, v in ascii_metadata(extra_metadata or {}).items() if k not in OWN_METADATA_KEYS}
        manifest_values = {**fields, "request_id": request_id}
        job = cls(
            request_id=request_id,
            model_id=model_id,
            bucket=bucket,
            prefix=prefix,
            key_template=key_template,
            manifest_key=join_key(
                prefix,
                render_key(manifest_template, manifest_values, what="manifest_template"),
                what="manifest_template",
            ),
            fields=dict(fields),
            base_metadata={**extra, **ascii_metadata(own)},
            output_urls=tuple(output_urls),
            inputs=tuple(inputs),
            parameters=dict(parameters or {}),
            overwrite=overwrite,
            fingerprint=fingerprint,
            cost_usd=cost_usd,
        )
        job.candidate_keys(0)  # renders once, so a bad template or missing field fails before any I/O
        return job

    def key_for(self, index: int, ext: str) -> str:
        values = {**self.fields, "request_id": self.request_id, "index": index, "ext": ext}
        return join_key(self.prefix, render_key(self.key_template, values), what="key_template")

    def candidate_keys(self, index: int) -> set[str]:
        """Every key output ``index`` could have been written to, whatever type the bytes turned out to be."""
        return {self.key_for(index, ext) for ext in ALL_EXTENSIONS}

    def metadata_for(self, index: int) -> dict[str, str]:
        return {**self.base_metadata, META_OUTPUT_INDEX: str(index)}


@dataclass
class ExistingObjects:
    """What S3 already holds at an output's candidate keys (filled by one LIST and a HEAD per hit).

    The HEADs are sent with ``ChecksumMode="ENABLED"``, so each carries S3's ``ChecksumSHA256``.
    """

    heads: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def complete_for(self, request_id: str, index: int) -> tuple[str, Mapping[str, Any]] | None:
        """The key and HEAD of an object an earlier run archived completely for this output, if any.

        Complete means: our request id and output index in its metadata (written with the object, so
        they are there from the moment it exists: a multipart object only appears once completed)
        and an integrity record, S3's SHA-256 checksum or (objects archived by 0.1.0) our sha256.
        """
        for key, head in sorted(self.heads.items()):
            meta = head.get("Metadata", {})
            if (
                meta.get(META_REQUEST_ID) == request_id
                and meta.get(META_OUTPUT_INDEX) == str(index)
                and (head.get("ChecksumSHA256") or meta.get(META_SHA256))
            ):
                return key, head
        return None

    def foreign_owner(self, key: str, request_id: str, index: int) -> str | None:
        """Describe who else owns ``key``, or ``None`` if it is free or an unfinished write of ours."""
        head = self.heads.get(key)
        if head is None:
            return None
        meta = head.get("Metadata", {})
        if meta.get(META_REQUEST_ID) == request_id and meta.get(META_OUTPUT_INDEX) == str(index):
            return None
        if META_REQUEST_ID in meta:
            return f"output {meta.get(META_OUTPUT_INDEX)} of request {meta[META_REQUEST_ID]}"
        return "an object not written by this provider"
