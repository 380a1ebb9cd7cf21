"""Outputs: stream each output URL from the file host into S3, then write the manifest beside them.

RunComfy's output URLs are temporary, so each one is streamed from the CDN straight into S3 (bounded
memory, no temp files; see ``multipart.py``). The rules:

* Only http(s) URLs on the allowed hosts are fetched, redirects included (each hop is checked), and
  without the API token: the output list comes from a remote JSON document and must not steer the
  worker elsewhere.
* An object counts as archived only when its metadata carries the request id, the output index **and**
  the sha256 of its bytes. A rerun therefore skips exactly the complete outputs without reading them,
  even when their URLs have expired.
* Transient failures are retried a bounded number of times per output (``retry.py``). Whatever still
  fails is reported together in one :class:`OutputsNotArchivedError`; outputs that made it stay
  archived. The manifest is written last, only when every output is in, so its presence means the
  archive is complete.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_nanobanana import __version__
from airflow_provider_nanobanana.bodies import ACCEPT_ENCODING, BodyRefused, BoundedDecoder, decoded_chunks
from airflow_provider_nanobanana.exceptions import ArchiveError
from airflow_provider_nanobanana.media.content import SNIFF_BYTES, extension_for, resolve_content_type
from airflow_provider_nanobanana.media.errors import (
    FileHostStatus,
    OutputFailure,
    OutputsNotArchivedError,
)
from airflow_provider_nanobanana.media.hosts import output_url_problem
from airflow_provider_nanobanana.media.job import ArchiveJob, ExistingObjects
from airflow_provider_nanobanana.media.keys import common_prefix, s3_uri
from airflow_provider_nanobanana.media.manifest import (
    META_MODEL_ID,
    META_PROMPT_SHA256,
    META_REQUEST_ID,
    ascii_metadata,
    build_manifest,
)
from airflow_provider_nanobanana.media.multipart import archived_sha256, upload_stream
from airflow_provider_nanobanana.media.results import ArchivedOutput, ArchiveResult, MissingOutput
from airflow_provider_nanobanana.media.retry import call_with_retries
from airflow_provider_nanobanana.redaction import redact_httpx_logs, redact_url
from airflow_provider_nanobanana.tls import verified_context

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from airflow_provider_nanobanana.media.quality import QualityGate

log = logging.getLogger(__name__)

#: Read size from the output stream; the part buffer fills in steps of this.
READ_CHUNK_BYTES = 1024 * 1024
MAX_REDIRECTS = 5


class OutputArchiver:
    """Archives the outputs of planned :class:`ArchiveJob` s with one S3 client.

    :param client: Returns the S3 client (boto3 clients are thread-safe, so one serves many archivers).
    :param allowed_output_hosts: Normalised host patterns outputs and redirects may go to.
    :param http_timeout_s: Connect/read timeout of output downloads.
    :param part_size_bytes: Multipart part size, and the most of one output held in memory at a time.
    :param max_output_bytes: Outputs larger than this are refused.
    :param max_attempts: Tries per output for transient errors (the whole output is streamed again).
    :param retry_base_delay_s: First back-off delay; doubles per attempt, with jitter.
    """

    def __init__(
        self,
        client: Callable[[], S3Client],
        *,
        allowed_output_hosts: tuple[str, ...],
        http_timeout_s: float,
        part_size_bytes: int,
        max_output_bytes: int,
        max_attempts: int,
        retry_base_delay_s: float,
    ) -> None:
        self._client = client
        self.allowed_output_hosts = allowed_output_hosts
        self.http_timeout_s = http_timeout_s
        self.part_size_bytes = part_size_bytes
        self.max_output_bytes = max_output_bytes
        self._retry = partial(call_with_retries, max_attempts=max_attempts, base_delay_s=retry_base_delay_s)

    def archive(self, job: ArchiveJob, quality: QualityGate | None = None) -> ArchiveResult:
        """Copy every output of ``job`` into S3 and write its manifest; see ``S3MediaHook.archive_outputs``.

        With ``quality``, each output is inspected as it streams and rejected (never stored) or flagged
        per its policy; the manifest then carries ``quality`` and ``paid_requests`` (``media/quality.py``).
        """
        started_at, t0 = _utcnow(), time.monotonic()
        if quality is not None:
            quality.check_count(len(job.output_urls))  # before any download; raises unless kept
        archived, missing = self._archive_all(job, quality)
        if missing:
            raise OutputsNotArchivedError(job.request_id, missing, archived)
        finished_at, duration_s = _utcnow(), time.monotonic() - t0
        manifest = build_manifest(
            request_id=job.request_id,
            model_id=job.model_id,
            bucket=job.bucket,
            fields=job.fields,
            inputs=job.inputs,
            parameters=job.parameters,
            prompt_sha256=job.base_metadata.get(META_PROMPT_SHA256),
            outputs=[o.to_dict() for o in archived],
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
            fingerprint=job.fingerprint,
            cost_usd=job.cost_usd,
        )
        if quality is not None:
            manifest.update(quality.manifest_fields())
        self._write_manifest(job, manifest)
        return ArchiveResult(
            request_id=job.request_id,
            model_id=job.model_id,
            bucket=job.bucket,
            outputs=tuple(archived),
            manifest_uri=s3_uri(job.bucket, job.manifest_key),
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
        )

    def http_client(self) -> httpx.Client:
        """The client outputs are downloaded with, installing the httpx log redaction first.

        No auth header: outputs are public or pre-signed CDN URLs, and the API token must not leak to
        a file host. Redirects are followed by hand so every hop passes the host allow-list.
        """
        redact_httpx_logs()
        return httpx.Client(
            timeout=httpx.Timeout(self.http_timeout_s),
            verify=verified_context(),
            follow_redirects=False,
            headers={
                "User-Agent": f"airflow-provider-nanobanana/{__version__}",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
        )

    def _archive_all(
        self, job: ArchiveJob, quality: QualityGate | None = None
    ) -> tuple[list[ArchivedOutput], list[MissingOutput]]:
        archived: list[ArchivedOutput] = []
        missing: list[MissingOutput] = []
        with self.http_client() as http, ThreadPoolExecutor(1, "nanobanana-exists") as lookups:
            for index, url in enumerate(job.output_urls):
                one = partial(self._archive_one, job, http, lookups, index, quality)
                try:
                    archived.append(self._retry(one, f"output {index}"))
                except OutputFailure as failure:
                    log.error("Output %d (%s) not archived: %s", index, redact_url(url), failure.reason)
                    missing.append(MissingOutput(index, redact_url(url), failure.reason, failure.transient))
        return archived, missing

    def _archive_one(
        self,
        job: ArchiveJob,
        http: httpx.Client,
        lookups: ThreadPoolExecutor,
        index: int,
        quality: QualityGate | None = None,
    ) -> ArchivedOutput:
        """Skip the output if an earlier run archived it completely; otherwise stream it into S3.

        The existence check (a LIST) runs while the GET is being answered, not before it: it is one
        round trip off every archive's critical path. Its answer still comes first: an output an
        earlier run archived is skipped even when its URL has expired or its host is down (the GET's
        error is then ignored), and its body is never read.
        """
        t0 = time.monotonic()
        url = job.output_urls[index]
        client = self._client()
        looking = lookups.submit(_existing_objects, client, job.bucket, job.candidate_keys(index))
        with ExitStack() as stack:
            try:
                response = stack.enter_context(self._open_output(http, url))
            except Exception:
                if (done := looking.result().complete_for(job.request_id, index)) is not None:
                    return _already_archived(client, job, index, done)
                raise
            existing = looking.result()
            if (done := existing.complete_for(job.request_id, index)) is not None:
                return _already_archived(client, job, index, done)  # the response closes unread
            declared_size = int(response.headers.get("content-length") or 0)
            if declared_size > self.max_output_bytes:
                limit = self.max_output_bytes
                raise OutputFailure(
                    f"output is {declared_size:,} bytes, more than max_output_bytes={limit:,}",
                    transient=False,
                )
            # Decoded by hand, within the output cap per step: httpx would inflate a gzip (or a
            # stacked "gzip, gzip") body without limit before any size check could see it.
            try:
                decoder = BoundedDecoder(response.headers.get("content-encoding", ""), self.max_output_bytes)
            except BodyRefused as exc:
                raise OutputFailure(str(exc), transient=False) from None
            chunks = decoded_chunks(response.iter_raw(READ_CHUNK_BYTES), decoder)
            head_chunk = next(chunks, b"")
            if not head_chunk:
                if quality is None:
                    raise OutputFailure("the output is empty (0 bytes)", transient=False)
                quality.report(index, "the output is empty (0 bytes)")  # raises unless kept
            content_type = resolve_content_type(
                head_chunk[:SNIFF_BYTES], url=url, declared=response.headers.get("content-type")
            )
            key = job.key_for(index, extension_for(content_type))
            owner = existing.foreign_owner(key, job.request_id, index)
            if owner and not job.overwrite:
                raise OutputFailure(
                    f"{s3_uri(job.bucket, key)} already holds {owner}; refusing to overwrite it "
                    "(use a key_template with {request_id}, or overwrite=True)",
                    transient=False,
                )
            uploaded = upload_stream(
                client,
                bucket=job.bucket,
                key=key,
                chunks=_inspected(quality, index, itertools.chain([head_chunk], chunks), content_type),
                content_type=content_type,
                metadata=job.metadata_for(index),
                part_size=self.part_size_bytes,
                max_bytes=self.max_output_bytes,
            )
        size, digest = uploaded.size, uploaded.sha256
        seconds = time.monotonic() - t0
        log.info(
            "Archived output %d (%s, %s, %d bytes, sha256 %s) to %s in %.1f s",
            index,
            redact_url(url),
            content_type,
            size,
            digest,
            s3_uri(job.bucket, key),
            seconds,
        )
        return ArchivedOutput(
            index=index,
            source_url=redact_url(url),
            s3_uri=s3_uri(job.bucket, key),
            key=key,
            size_bytes=size,
            sha256=digest,
            content_type=content_type,
            checksum_sha256=uploaded.checksum_sha256,
            seconds=round(seconds, 3),
        )

    @contextmanager
    def _open_output(self, http: httpx.Client, url: str) -> Iterator[httpx.Response]:
        """GET ``url`` as a stream, following redirects only to allowed hosts; raise on error statuses."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            with http.stream("GET", current) as response:
                if response.is_redirect and "location" in response.headers:
                    target = str(response.url.join(response.headers["location"]))
                    problem = output_url_problem(target, self.allowed_output_hosts)
                    if problem:
                        raise OutputFailure(
                            f"redirected to {redact_url(target)}, which {problem}", transient=False
                        )
                    current = target
                    continue
                if response.status_code >= 300:
                    raise FileHostStatus(response.status_code)
                yield response
                return
        raise OutputFailure(f"more than {MAX_REDIRECTS} redirects", transient=False)

    def _write_manifest(self, job: ArchiveJob, manifest: dict[str, object]) -> None:
        body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        where = s3_uri(job.bucket, job.manifest_key)

        def put() -> None:
            self._client().put_object(
                Bucket=job.bucket,
                Key=job.manifest_key,
                Body=body,
                ContentType="application/json",
                Metadata=dict(ascii_metadata({META_REQUEST_ID: job.request_id, META_MODEL_ID: job.model_id})),
            )

        try:
            self._retry(put, "manifest")
        except OutputFailure as failure:
            raise ArchiveError(
                f"all {len(job.output_urls)} outputs of request {job.request_id} are archived, but the "
                f"manifest {where} could not be written: {failure.reason}"
            ) from None
        log.info("Wrote manifest %s", where)


def _already_archived(
    client: S3Client, job: ArchiveJob, index: int, done: tuple[str, Mapping[str, Any]]
) -> ArchivedOutput:
    key, head = done
    log.info("Output %d already archived at %s; not fetching it again", index, s3_uri(job.bucket, key))
    return ArchivedOutput(
        index=index,
        source_url=redact_url(job.output_urls[index]),
        s3_uri=s3_uri(job.bucket, key),
        key=key,
        size_bytes=int(head.get("ContentLength", 0)),
        sha256=archived_sha256(client, job.bucket, key, head),
        content_type=str(head.get("ContentType") or ""),
        checksum_sha256=str(head.get("ChecksumSHA256") or ""),
        reused=True,
    )


def _existing_objects(client: S3Client, bucket: str, candidates: set[str]) -> ExistingObjects:
    """HEAD whichever candidate keys exist, found with one LIST over their common prefix.

    Pages are followed by hand rather than with ``get_paginator``: a worker builds a new client per
    task, and loading the paginator model is a cost the one-page answer almost always here does not need.
    """
    found = ExistingObjects()
    prefix, token = common_prefix(candidates), ""
    while True:
        page = (
            client.list_objects_v2(Bucket=bucket, Prefix=prefix, ContinuationToken=token)
            if token
            else client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        )
        for item in page.get("Contents", []):
            if item["Key"] in candidates:
                found.heads[item["Key"]] = client.head_object(
                    Bucket=bucket, Key=item["Key"], ChecksumMode="ENABLED"
                )
        token = page.get("NextContinuationToken", "") if page.get("IsTruncated") else ""
        if not token:
            return found


def _inspected(
    quality: QualityGate | None, index: int, chunks: Iterator[bytes], content_type: str
) -> Iterator[bytes]:
    return chunks if quality is None else quality.watch(index, chunks, content_type)


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
