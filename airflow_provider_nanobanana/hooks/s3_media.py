"""S3 side of an edit: turn input references into URLs RunComfy can fetch, and archive outputs safely.

Inputs (:meth:`S3MediaHook.resolve_inputs`). RunComfy fetches every input image itself, so a private
``s3://`` object becomes a SigV4 pre-signed GET URL and a local file is first staged to S3 under a
content-hash key. Every input is checked (exists, ``image/*``, at most 50 MB) before anything is uploaded
or submitted, so a bad input fails on the worker instead of costing a paid call.

Outputs (:meth:`S3MediaHook.archive_outputs`). RunComfy's output URLs are temporary, so each one is
streamed from the CDN straight into S3 (bounded memory, no temp files), then a JSON manifest is written
beside the images. The rules:

* Only http(s) URLs on ``allowed_output_hosts`` are fetched, redirects included, and without the API
  token: the output list comes from a remote JSON document and must not steer the worker elsewhere.
* An object counts as archived only when its metadata carries the request id, the output index **and**
  the sha256 of its bytes. The sha256 is known only at the end of a stream, so small outputs (one part)
  are written with a single ``PutObject`` carrying it, and multipart outputs get it by an in-place
  ``CopyObject`` after ``CompleteMultipartUpload``. An object without it (a crash between the two) is
  simply written again. A rerun therefore skips exactly the complete outputs, without fetching them.
* A failed multipart upload is aborted, so no orphaned parts are billed. (If S3 itself is unreachable
  the abort cannot be sent either; an ``AbortIncompleteMultipartUpload`` lifecycle rule covers that.)
* Transient failures (connection errors, 408/429/5xx, S3 throttling) are retried a bounded number of
  times per output. Whatever still fails is reported together in one :class:`OutputsNotArchivedError`;
  outputs that made it stay archived. The manifest is written last, only when every output is in, so
  its presence means the archive is complete.

Pre-signed URLs never appear in log lines, exception messages, the manifest or XCom; their signatures
are also registered with Airflow's secrets masker in case user code logs them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import botocore.exceptions
import httpx
from botocore.config import Config

from airflow_provider_nanobanana import __version__
from airflow_provider_nanobanana.archive import (
    ALL_EXTENSIONS,
    DEFAULT_KEY_TEMPLATE,
    DEFAULT_MANIFEST_TEMPLATE,
    META_MODEL_ID,
    META_OUTPUT_INDEX,
    META_PROMPT_SHA256,
    META_REQUEST_ID,
    META_SEED,
    META_SHA256,
    OWN_METADATA_KEYS,
    RESERVED_FIELDS,
    SNIFF_BYTES,
    NotAnImageError,
    ascii_metadata,
    build_manifest,
    common_prefix,
    content_type_from_url,
    extension_for,
    join_key,
    normalise_host_patterns,
    output_url_problem,
    parse_s3_prefix,
    parse_s3_uri,
    render_key,
    resolve_content_type,
    s3_uri,
    sha256_text,
    sniff_image_type,
    template_fields,
)
from airflow_provider_nanobanana.exceptions import ArchiveError, InvalidEditRequestError
from airflow_provider_nanobanana.models import (
    DEFAULT_MODEL_ID,
    MAX_INPUT_IMAGE_BYTES,
    validate_request_id,
)
from airflow_provider_nanobanana.redaction import mask_url_secrets, redact_httpx_logs, redact_text, redact_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

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
    "parse_s3_uri",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
#: S3's smallest allowed part (except the last one) and its largest single-request copy.
S3_MIN_PART_BYTES = 5 * MiB
S3_MAX_PARTS = 10_000
S3_MAX_COPY_BYTES = 5 * GiB
#: SigV4 pre-signed URLs are valid for at most seven days.
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
#: Read size from the output stream; the part buffer fills in steps of this.
READ_CHUNK_BYTES = 1 * MiB
MAX_REDIRECTS = 5

#: File-host answers meaning the temporary output URL is gone; retrying cannot bring it back.
_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
    }
)

T = TypeVar("T")


# --- Errors ----------------------------------------------------------------------------------------


class InvalidInputImageError(InvalidEditRequestError):
    """One or more ``image_urls`` entries cannot be used; the message names each one (``image_urls[i]``)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid input images: " + "; ".join(problems))
        self.problems = list(problems)


class OutputURLRefusedError(ArchiveError):
    """An output URL is not http(s) on an allowed host; nothing was fetched."""


class OutputsNotArchivedError(ArchiveError):
    """Some outputs could not be archived. Those in :attr:`archived` are safely in S3; rerun for the rest."""

    def __init__(
        self, request_id: str, missing: Sequence[MissingOutput], archived: Sequence[ArchivedOutput]
    ) -> None:
        lines = [f"output {m.index} ({m.source_url}): {m.reason}" for m in missing]
        total = len(missing) + len(archived)
        super().__init__(
            f"{len(missing)} of {total} outputs of request {request_id} were not archived "
            f"({len(archived)} archived, no manifest written): " + "; ".join(lines)
        )
        self.request_id = request_id
        self.missing = list(missing)
        self.archived = list(archived)

    @property
    def retryable(self) -> bool:
        """True when a later rerun may succeed (every failure was transient, e.g. S3 or the CDN was down)."""
        return all(m.transient for m in self.missing)


class _OutputFailure(Exception):
    """Internal: why one output (or the manifest) failed, and whether trying again might help."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class _FileHostStatus(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


# --- Results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedOutput:
    """One output that is safely in S3."""

    index: int
    #: The output URL with any credential parameters blanked.
    source_url: str
    s3_uri: str
    key: str
    size_bytes: int
    sha256: str
    content_type: str
    #: True when an earlier run had already archived it, so nothing was fetched this time.
    reused: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MissingOutput:
    index: int
    source_url: str
    reason: str
    transient: bool


@dataclass(frozen=True)
class ArchiveResult:
    """What :meth:`S3MediaHook.archive_outputs` stored; :meth:`to_xcom` is JSON-safe and secret-free."""

    request_id: str
    model_id: str
    bucket: str
    outputs: tuple[ArchivedOutput, ...]
    manifest_uri: str
    started_at: str
    finished_at: str
    duration_s: float

    @property
    def s3_uris(self) -> list[str]:
        """Archived objects in output order."""
        return [o.s3_uri for o in self.outputs]

    @property
    def total_bytes(self) -> int:
        return sum(o.size_bytes for o in self.outputs)

    @property
    def fetched_bytes(self) -> int:
        return sum(o.size_bytes for o in self.outputs if not o.reused)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "bucket": self.bucket,
            "s3_uris": self.s3_uris,
            "manifest_uri": self.manifest_uri,
            "total_bytes": self.total_bytes,
            "fetched_bytes": self.fetched_bytes,
            "reused_count": sum(o.reused for o in self.outputs),
            "outputs": [o.to_dict() for o in self.outputs],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class _ArchiveJob:
    """Everything fixed for one ``archive_outputs`` call, validated up front."""

    request_id: str
    model_id: str
    bucket: str
    prefix: str
    key_template: str
    fields: Mapping[str, object]
    base_metadata: Mapping[str, str]
    output_count: int
    overwrite: bool

    def key_for(self, index: int, ext: str) -> str:
        values = {**self.fields, "request_id": self.request_id, "index": index, "ext": ext}
        return join_key(self.prefix, render_key(self.key_template, values), what="key_template")

    def candidate_keys(self, index: int) -> set[str]:
        """Every key output ``index`` could have been written to, whatever type the bytes turned out to be."""
        return {self.key_for(index, ext) for ext in ALL_EXTENSIONS}

    def metadata_for(self, index: int) -> dict[str, str]:
        return {**self.base_metadata, META_OUTPUT_INDEX: str(index)}


@dataclass
class _ExistingObjects:
    """What S3 already holds at an output's candidate keys (filled by one LIST and a HEAD per hit)."""

    heads: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def complete_for(self, request_id: str, index: int) -> tuple[str, Mapping[str, Any]] | None:
        for key, head in sorted(self.heads.items()):
            meta = head.get("Metadata", {})
            if (
                meta.get(META_REQUEST_ID) == request_id
                and meta.get(META_OUTPUT_INDEX) == str(index)
                and meta.get(META_SHA256)
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


# --- The hook ------------------------------------------------------------------------------------


class S3MediaHook:
    """Stage and pre-sign edit inputs on S3, and archive edit outputs to S3.

    A plain class rather than a ``BaseHook``: it has no connection type of its own. Credentials come from
    an Amazon Web Services connection (``aws_conn_id``) through the Amazon provider when it is installed,
    otherwise from boto3's default chain (environment, profile, instance role).

    :param aws_conn_id: Airflow AWS connection; ``None`` uses boto3's default credential chain.
    :param endpoint_url: S3 endpoint override (MinIO, moto, ...). Wins over the connection's.
    :param region_name: Region override. Pre-signed URLs are signed for this region, so it must be the
        bucket's region (set it here or as ``region_name`` in the connection extras).
    :param presign_expiry_s: Lifetime of pre-signed input URLs. Must cover queueing plus processing.
        Temporary credentials (STS, instance roles) end a URL's life early when they expire.
    :param allowed_output_hosts: Hosts outputs may be fetched from: exact names or ``*.suffix``.
    :param http_timeout_s: Connect/read timeout for output downloads and for S3 calls.
    :param part_size_bytes: Multipart part size, and the most of one output held in memory at a time.
    :param max_output_bytes: Outputs larger than this are refused (also bounds an in-place copy's 5 GiB).
    :param max_input_bytes: Largest input image accepted (RunComfy recommends 50 MB).
    :param max_attempts: Tries per output for transient errors (the whole output is streamed again).
    :param retry_base_delay_s: First back-off delay; doubles per attempt, with jitter.
    :param s3_max_attempts: botocore's own retry budget per S3 call ("standard" mode).
    """

    def __init__(
        self,
        aws_conn_id: str | None = "aws_default",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        presign_expiry_s: int = 6 * 3600,
        allowed_output_hosts: Iterable[str] = (),
        http_timeout_s: float = 60.0,
        part_size_bytes: int = 8 * MiB,
        max_output_bytes: int = 2 * GiB,
        max_input_bytes: int = MAX_INPUT_IMAGE_BYTES,
        max_attempts: int = 3,
        retry_base_delay_s: float = 1.0,
        s3_max_attempts: int = 5,
    ) -> None:
        if not 1 <= presign_expiry_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(
                f"presign_expiry_s must be 1..{MAX_PRESIGN_EXPIRY_S} (SigV4 limit), got {presign_expiry_s}"
            )
        if part_size_bytes < S3_MIN_PART_BYTES:
            raise ValueError(f"part_size_bytes must be at least {S3_MIN_PART_BYTES} (S3 minimum part size)")
        if not 0 < max_output_bytes <= min(S3_MAX_COPY_BYTES, part_size_bytes * S3_MAX_PARTS):
            raise ValueError("max_output_bytes must be positive, at most 5 GiB and at most 10,000 parts")
        if max_attempts < 1 or s3_max_attempts < 1:
            raise ValueError("max_attempts and s3_max_attempts must be at least 1")
        self.aws_conn_id = aws_conn_id
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.presign_expiry_s = presign_expiry_s
        self.allowed_output_hosts = normalise_host_patterns(allowed_output_hosts)
        self.http_timeout_s = http_timeout_s
        self.part_size_bytes = part_size_bytes
        self.max_output_bytes = max_output_bytes
        self.max_input_bytes = max_input_bytes
        self.max_attempts = max_attempts
        self.retry_base_delay_s = retry_base_delay_s
        self.s3_max_attempts = s3_max_attempts
        self._client: S3Client | None = None
        self._client_lock = threading.Lock()

    # -- client --

    def get_client(self) -> S3Client:
        """The boto3 S3 client, created on first use and cached (boto3 clients are thread-safe; the
        batch operator archives several requests at once through one hook)."""
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _botocore_config(self) -> Config:
        # SigV4 always: SigV2 pre-signed URLs are refused by newer regions and most S3 clones.
        return Config(
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": self.s3_max_attempts},
            connect_timeout=self.http_timeout_s,
            read_timeout=self.http_timeout_s,
        )

    def _build_client(self) -> S3Client:
        amazon_hook = self._amazon_s3_hook()
        if amazon_hook is None:
            import boto3

            return boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region_name,
                config=self._botocore_config(),
            )
        # Build from the connection's session (credentials, role assumption, region, endpoint, botocore
        # config from the extras) rather than calling get_conn(): that client may presign with SigV2.
        conn = amazon_hook.conn_config
        region = self.region_name or conn.region_name
        session = amazon_hook.get_session(region_name=region)
        client: S3Client = session.client(
            "s3",
            region_name=region,
            endpoint_url=self.endpoint_url or conn.get_service_endpoint_url("s3"),
            config=amazon_hook.config.merge(self._botocore_config()),
            verify=amazon_hook.verify,
        )
        return client

    def _amazon_s3_hook(self) -> Any | None:
        if self.aws_conn_id is None:
            return None
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError:
            log.warning(
                "aws_conn_id=%r is ignored: apache-airflow-providers-amazon is not installed "
                "(install airflow-provider-nanobanana[amazon]); using boto3's default credentials.",
                self.aws_conn_id,
            )
            return None
        return S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    # -- inputs --

    def resolve_inputs(self, image_urls: Sequence[str], *, staging_uri: str | None = None) -> list[str]:
        """Turn each input reference into a URL RunComfy can fetch, checking every one first.

        * ``https://`` / ``http://``: returned unchanged.
        * ``s3://bucket/key``: must exist, have an ``image/*`` Content-Type and be at most
          ``max_input_bytes``; becomes a SigV4 pre-signed GET URL valid for ``presign_expiry_s``.
        * a local path or ``file://`` URL: must be an image file within the size limit; uploaded to
          ``staging_uri`` under the sha256 of its bytes (so re-runs reuse it), then pre-signed.

        All problems are collected and raised together as :class:`InvalidInputImageError`, before any
        upload, so nothing is staged or submitted for a request that cannot run.
        """
        problems: list[str] = []
        plans: list[Callable[[], str]] = []
        staging = self._staging_prefix(staging_uri)
        for index, ref in enumerate(image_urls):
            try:
                plans.append(self._plan_input(ref, staging))
            except InvalidEditRequestError as exc:
                problems.append(f"image_urls[{index}]: {exc}")
        if problems:
            raise InvalidInputImageError(problems)
        return [plan() for plan in plans]

    @staticmethod
    def _staging_prefix(staging_uri: str | None) -> tuple[str, str] | None:
        return None if staging_uri is None else parse_s3_prefix(staging_uri, what="staging_uri")

    def _plan_input(self, ref: str, staging: tuple[str, str] | None) -> Callable[[], str]:
        """Check one input now; return what produces its fetchable URL later."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidEditRequestError("must be a non-empty string")
        scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
        if scheme in ("http", "https"):
            return lambda: ref
        if scheme == "s3":
            bucket, key = self._check_s3_input(ref)
            return lambda: self._presign(bucket, key)
        if scheme == "file" or (not scheme and not ref.startswith("data:")):
            path = _local_path(ref)
            digest, content_type = self._check_local_input(path, ref)
            if staging is None:
                raise InvalidEditRequestError(
                    f"{ref} is a local file; set staging_uri (s3://bucket/prefix/) so it can be uploaded"
                )
            return lambda: self._stage_local(path, digest, content_type, staging)
        raise InvalidEditRequestError(
            f"{redact_url(ref)[:80]!r} is not supported; use https://, s3://bucket/key or a local file path"
        )

    def _check_s3_input(self, uri: str) -> tuple[str, str]:
        bucket, key = parse_s3_uri(uri)
        if not key or key.endswith("/"):
            raise InvalidEditRequestError(f"{uri} names a bucket or folder, not an object")
        try:
            head = self.get_client().head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code = _s3_error_code(exc)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise InvalidEditRequestError(f"{uri} does not exist") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise InvalidEditRequestError(f"{uri}: access denied (or it does not exist)") from None
            raise InvalidEditRequestError(f"{uri} could not be checked: {_s3_error_text(exc)}") from None
        content_type = str(head.get("ContentType") or "")
        if not content_type.split(";", 1)[0].strip().lower().startswith("image/"):
            raise InvalidEditRequestError(
                f"{uri} has Content-Type {content_type or '(none)'!r}, expected image/*; "
                "upload it with an image Content-Type"
            )
        self._check_input_size(uri, int(head.get("ContentLength", 0)))
        return bucket, key

    def _check_local_input(self, path: Path, ref: str) -> tuple[str, str]:
        try:
            info = path.stat()
        except FileNotFoundError:
            raise InvalidEditRequestError(f"local file {ref} does not exist") from None
        except OSError as exc:
            raise InvalidEditRequestError(f"local file {ref} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidEditRequestError(f"{ref} is not a regular file")
        self._check_input_size(ref, info.st_size)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
            digest.update(head)
            for block in iter(lambda: handle.read(READ_CHUNK_BYTES), b""):
                digest.update(block)
        content_type = sniff_image_type(head) or content_type_from_url(path.name)
        if content_type is None:
            raise InvalidEditRequestError(
                f"local file {ref} is not a recognised image (PNG, JPEG, WEBP, GIF)"
            )
        return digest.hexdigest(), content_type

    def _check_input_size(self, ref: str, size: int) -> None:
        if size <= 0:
            raise InvalidEditRequestError(f"{ref} is empty")
        if size > self.max_input_bytes:
            raise InvalidEditRequestError(
                f"{ref} is {size:,} bytes; input images may be at most {self.max_input_bytes:,} bytes"
            )

    def _stage_local(self, path: Path, digest: str, content_type: str, staging: tuple[str, str]) -> str:
        """Upload ``path`` under its content hash unless that object is already there, then pre-sign it."""
        bucket, prefix = staging
        key = f"{prefix}{digest}.{extension_for(content_type)}"
        client = self.get_client()
        if not _object_exists(client, bucket, key):
            with path.open("rb") as body:
                client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
            log.info("Staged %s to %s", path, s3_uri(bucket, key))
        else:
            log.info("Staging skipped: %s is already at %s", path, s3_uri(bucket, key))
        return self._presign(bucket, key)

    def _presign(self, bucket: str, key: str) -> str:
        url: str = self.get_client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.presign_expiry_s
        )
        mask_url_secrets(url)
        log.info("Pre-signed %s for %d s", s3_uri(bucket, key), self.presign_expiry_s)
        return url

    # -- outputs --

    def archive_outputs(
        self,
        output_urls: Sequence[str],
        *,
        request_id: str,
        dest_uri: str,
        fields: Mapping[str, str | int],
        key_template: str = DEFAULT_KEY_TEMPLATE,
        manifest_template: str = DEFAULT_MANIFEST_TEMPLATE,
        model_id: str = DEFAULT_MODEL_ID,
        prompt: str | None = None,
        seed: int | None = None,
        inputs: Sequence[str] = (),
        parameters: Mapping[str, Any] | None = None,
        extra_metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> ArchiveResult:
        """Copy every output of ``request_id`` into ``dest_uri`` and write a manifest beside them.

        :param output_urls: The job's output URLs, in output order (``ResultResponse.images``).
        :param dest_uri: ``s3://bucket/prefix/`` under which keys are rendered.
        :param fields: Values for the template, e.g. ``dag_id``, ``run_id``, ``task_id``, ``map_index``
            (see :func:`archive.fields_from_context`). ``request_id``, ``index`` and ``ext`` are filled in.
        :param key_template: Object key of output ``index`` relative to the prefix; must use ``{index}``
            when there are several outputs. ``{ext}`` comes from the sniffed bytes.
        :param manifest_template: Manifest key relative to the prefix (``{index}``/``{ext}`` unavailable).
        :param prompt: Stored as its sha256 in object metadata (the text itself may go in ``parameters``).
        :param inputs: The input references as the user gave them (``s3://`` URIs, URLs); recorded
            redacted in the manifest. Pass these, not the pre-signed URLs.
        :param parameters: Edit parameters for the manifest (URLs in it are redacted).
        :param extra_metadata: More S3 user metadata for every image (ASCII-escaped).
        :param overwrite: Replace objects at the target keys that belong to another request (or to no
            request at all). Off by default, so a custom template cannot silently destroy other archives.
        :raises OutputURLRefusedError: an output URL is not allowed; nothing was fetched.
        :raises OutputsNotArchivedError: some outputs failed after retries; the rest are archived.
        :raises ArchiveError: all images are archived but the manifest could not be written.
        """
        started_at, t0 = _utcnow(), time.monotonic()
        job = self._plan_archive(
            output_urls,
            request_id=request_id,
            dest_uri=dest_uri,
            fields=fields,
            key_template=key_template,
            model_id=model_id,
            prompt=prompt,
            seed=seed,
            extra_metadata=extra_metadata,
            overwrite=overwrite,
        )
        manifest_key = join_key(
            job.prefix,
            render_key(manifest_template, {**job.fields, "request_id": request_id}, what="manifest_template"),
            what="manifest_template",
        )
        archived, missing = self._archive_all(job, output_urls)
        if missing:
            raise OutputsNotArchivedError(request_id, missing, archived)
        finished_at, duration_s = _utcnow(), time.monotonic() - t0
        manifest = build_manifest(
            request_id=request_id,
            model_id=model_id,
            bucket=job.bucket,
            fields=job.fields,
            inputs=inputs,
            parameters=parameters or {},
            prompt_sha256=job.base_metadata.get(META_PROMPT_SHA256),
            outputs=[o.to_dict() for o in archived],
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
        )
        self._write_manifest(job, manifest_key, manifest)
        return ArchiveResult(
            request_id=request_id,
            model_id=model_id,
            bucket=job.bucket,
            outputs=tuple(archived),
            manifest_uri=s3_uri(job.bucket, manifest_key),
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
        )

    def _plan_archive(
        self,
        output_urls: Sequence[str],
        *,
        request_id: str,
        dest_uri: str,
        fields: Mapping[str, str | int],
        key_template: str,
        model_id: str,
        prompt: str | None,
        seed: int | None,
        extra_metadata: Mapping[str, str] | None,
        overwrite: bool,
    ) -> _ArchiveJob:
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
            if (problem := output_url_problem(url, self.allowed_output_hosts))
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
        job = _ArchiveJob(
            request_id=request_id,
            model_id=model_id,
            bucket=bucket,
            prefix=prefix,
            key_template=key_template,
            fields=dict(fields),
            base_metadata={**extra, **ascii_metadata(own)},
            output_count=len(output_urls),
            overwrite=overwrite,
        )
        job.candidate_keys(0)  # renders once, so a bad template or missing field fails before any I/O
        return job

    def _archive_all(
        self, job: _ArchiveJob, output_urls: Sequence[str]
    ) -> tuple[list[ArchivedOutput], list[MissingOutput]]:
        archived: list[ArchivedOutput] = []
        missing: list[MissingOutput] = []
        with self._http_client() as http:
            for index, url in enumerate(output_urls):
                try:
                    archive_one = partial(self._archive_one, job, http, index, url)
                    archived.append(self._with_retries(archive_one, f"output {index}"))
                except _OutputFailure as failure:
                    log.error("Output %d (%s) not archived: %s", index, redact_url(url), failure.reason)
                    missing.append(MissingOutput(index, redact_url(url), failure.reason, failure.transient))
        return archived, missing

    def _http_client(self) -> httpx.Client:
        # No auth header: outputs are public or pre-signed CDN URLs, and the API token must not leak to
        # a file host. Redirects are followed by hand so every hop passes the host allowlist. httpx logs
        # every request's full (signed) URL, so its log filter goes in first.
        redact_httpx_logs()
        return httpx.Client(
            timeout=httpx.Timeout(self.http_timeout_s),
            follow_redirects=False,
            headers={"User-Agent": f"airflow-provider-nanobanana/{__version__}"},
        )

    def _with_retries(self, call: Callable[[], T], what: str) -> T:
        """Run ``call``, retrying transient failures a bounded number of times with jittered back-off."""
        for attempt in itertools.count(1):
            try:
                return call()
            except Exception as exc:  # classified below; unknown errors propagate
                failure = _classify(exc)
                if failure is None:
                    raise
                if not failure.transient or attempt >= self.max_attempts:
                    if failure is exc:
                        raise
                    raise failure from exc
                delay = self.retry_base_delay_s * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                log.warning(
                    "%s: %s; retrying in %.1f s (attempt %d of %d)",
                    what,
                    failure.reason,
                    delay,
                    attempt,
                    self.max_attempts,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _archive_one(self, job: _ArchiveJob, http: httpx.Client, index: int, url: str) -> ArchivedOutput:
        """Skip the output if an earlier run archived it completely; otherwise stream it into S3."""
        t0 = time.monotonic()
        client = self.get_client()
        existing = _existing_objects(client, job.bucket, job.candidate_keys(index))
        done = existing.complete_for(job.request_id, index)
        if done is not None:
            key, head = done
            log.info(
                "Output %d already archived at %s; not fetching it again", index, s3_uri(job.bucket, key)
            )
            return ArchivedOutput(
                index=index,
                source_url=redact_url(url),
                s3_uri=s3_uri(job.bucket, key),
                key=key,
                size_bytes=int(head.get("ContentLength", 0)),
                sha256=head["Metadata"][META_SHA256],
                content_type=str(head.get("ContentType") or ""),
                reused=True,
            )
        with self._open_output(http, url) as response:
            declared_size = int(response.headers.get("content-length") or 0)
            if declared_size > self.max_output_bytes:
                limit = self.max_output_bytes
                raise _OutputFailure(
                    f"output is {declared_size:,} bytes, more than max_output_bytes={limit:,}",
                    transient=False,
                )
            chunks = response.iter_bytes(READ_CHUNK_BYTES)
            head_chunk = next(chunks, b"")
            if not head_chunk:
                raise _OutputFailure("the output is empty (0 bytes)", transient=False)
            content_type = resolve_content_type(
                head_chunk[:SNIFF_BYTES], url=url, declared=response.headers.get("content-type")
            )
            key = job.key_for(index, extension_for(content_type))
            owner = existing.foreign_owner(key, job.request_id, index)
            if owner and not job.overwrite:
                raise _OutputFailure(
                    f"{s3_uri(job.bucket, key)} already holds {owner}; refusing to overwrite it "
                    "(use a key_template with {request_id}, or overwrite=True)",
                    transient=False,
                )
            size, digest = _upload_stream(
                client,
                bucket=job.bucket,
                key=key,
                chunks=itertools.chain([head_chunk], chunks),
                content_type=content_type,
                metadata=job.metadata_for(index),
                part_size=self.part_size_bytes,
                max_bytes=self.max_output_bytes,
            )
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
                        raise _OutputFailure(
                            f"redirected to {redact_url(target)}, which {problem}", transient=False
                        )
                    current = target
                    continue
                if response.status_code >= 300:
                    raise _FileHostStatus(response.status_code)
                yield response
                return
        raise _OutputFailure(f"more than {MAX_REDIRECTS} redirects", transient=False)

    def _write_manifest(self, job: _ArchiveJob, key: str, manifest: Mapping[str, Any]) -> None:
        body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")

        def put() -> None:
            self.get_client().put_object(
                Bucket=job.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                Metadata=dict(ascii_metadata({META_REQUEST_ID: job.request_id, META_MODEL_ID: job.model_id})),
            )

        try:
            self._with_retries(put, "manifest")
        except _OutputFailure as failure:
            raise ArchiveError(
                f"all {job.output_count} outputs of request {job.request_id} are archived, but the manifest "
                f"{s3_uri(job.bucket, key)} could not be written: {failure.reason}"
            ) from None
        log.info("Wrote manifest %s", s3_uri(job.bucket, key))


# --- Streaming upload ------------------------------------------------------------------------------


def _upload_stream(
    client: S3Client,
    *,
    bucket: str,
    key: str,
    chunks: Iterable[bytes],
    content_type: str,
    metadata: Mapping[str, str],
    part_size: int,
    max_bytes: int,
) -> tuple[int, str]:
    """Stream ``chunks`` into ``bucket/key`` holding at most about one part in memory; return (size, sha256).

    One part or less: a single ``PutObject`` with the sha256 in its metadata. More: a multipart upload,
    then an in-place ``CopyObject`` that adds the sha256 (only known at the end). Any failure before the
    upload completes aborts it, so no parts are left behind.
    """
    sha = hashlib.sha256()
    size = 0
    buffer = bytearray()
    upload: _MultipartUpload | None = None
    try:
        for chunk in chunks:
            sha.update(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise _OutputFailure(f"output is larger than max_output_bytes={max_bytes:,}", transient=False)
            buffer += chunk
            if len(buffer) >= part_size:
                if upload is None:
                    upload = _MultipartUpload.start(client, bucket, key, content_type, metadata)
                upload.add_part(bytes(buffer))
                buffer.clear()
        digest = sha.hexdigest()
        final_metadata = {**metadata, META_SHA256: digest}
        if upload is None:
            client.put_object(
                Bucket=bucket, Key=key, Body=bytes(buffer), ContentType=content_type, Metadata=final_metadata
            )
            return size, digest
        if buffer:
            upload.add_part(bytes(buffer))
        etag = upload.complete()
        upload = None  # completed: nothing left to abort
        client.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            CopySourceIfMatch=etag,
            MetadataDirective="REPLACE",
            ContentType=content_type,
            Metadata=final_metadata,
        )
        return size, digest
    except BaseException:
        if upload is not None:
            upload.abort()
        raise


@dataclass
class _MultipartUpload:
    client: S3Client
    bucket: str
    key: str
    upload_id: str
    parts: list[CompletedPartTypeDef] = field(default_factory=list)

    @classmethod
    def start(
        cls, client: S3Client, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]
    ) -> _MultipartUpload:
        _abort_stale_uploads(client, bucket, key)
        response = client.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=content_type, Metadata=dict(metadata)
        )
        return cls(client, bucket, key, response["UploadId"])

    def add_part(self, body: bytes) -> None:
        number = len(self.parts) + 1
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def complete(self) -> str:
        response = self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )
        return str(response["ETag"])

    def abort(self) -> None:
        """Best effort: if S3 is unreachable the parts stay until a lifecycle rule removes them."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning(
                "Could not abort multipart upload of %s (%s); its parts remain until an "
                "AbortIncompleteMultipartUpload lifecycle rule removes them",
                s3_uri(self.bucket, self.key),
                type(exc).__name__,
            )


def _abort_stale_uploads(client: S3Client, bucket: str, key: str) -> None:
    """Abort unfinished uploads an earlier, interrupted run left at this exact key.

    Keys are deterministic per request and output, so such uploads are ours: when S3 was down
    mid-upload the earlier abort could not be sent, and the rerun is the first chance to clean up.
    """
    response = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for upload in response.get("Uploads", []):
        if upload.get("Key") == key:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            log.info("Aborted a stale multipart upload of %s left by an interrupted run", s3_uri(bucket, key))


# --- Helpers -------------------------------------------------------------------------------------


def _existing_objects(client: S3Client, bucket: str, candidates: set[str]) -> _ExistingObjects:
    """HEAD whichever candidate keys exist, found with one LIST over their common prefix."""
    found = _ExistingObjects()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=common_prefix(candidates)):
        for item in page.get("Contents", []):
            if item["Key"] in candidates:
                found.heads[item["Key"]] = client.head_object(Bucket=bucket, Key=item["Key"])
    return found


def _object_exists(client: S3Client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if _s3_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _classify(exc: BaseException) -> _OutputFailure | None:
    """Map an exception to a failure reason and whether retrying may help; ``None`` for unknown errors."""
    if isinstance(exc, _OutputFailure):
        return exc
    if isinstance(exc, _FileHostStatus):
        code = exc.status_code
        if code in _EXPIRED_STATUSES:
            return _OutputFailure(
                f"the output URL expired before archiving (file host answered HTTP {code}); "
                "RunComfy keeps outputs only for a limited time",
                transient=False,
            )
        return _OutputFailure(f"file host answered HTTP {code}", transient=code in (408, 429) or code >= 500)
    if isinstance(exc, httpx.TransportError):
        return _OutputFailure(f"download failed: {type(exc).__name__}: {_safe_text(exc)}", transient=True)
    if isinstance(exc, httpx.HTTPError):
        return _OutputFailure(f"download failed: {type(exc).__name__}: {_safe_text(exc)}", transient=False)
    if isinstance(exc, NotAnImageError):
        return _OutputFailure(str(exc), transient=False)
    if isinstance(exc, botocore.exceptions.ClientError):
        s3_code = _s3_error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return _OutputFailure(
            f"S3 error: {_s3_error_text(exc)}", transient=s3_code in _TRANSIENT_S3_CODES or status >= 500
        )
    if isinstance(exc, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return _OutputFailure(f"S3 unreachable: {type(exc).__name__}: {_safe_text(exc)}", transient=True)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return _OutputFailure(f"S3 client error: {type(exc).__name__}: {_safe_text(exc)}", transient=False)
    return None


def _s3_error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _s3_error_text(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    operation = getattr(exc, "operation_name", "")
    return _safe_text(f"{operation} {error.get('Code', '')} {error.get('Message', '')}".strip())


def _safe_text(value: object) -> str:
    """Exception text with any URL credentials blanked, kept short."""
    return redact_text(str(value))[:300]


def _local_path(ref: str) -> Path:
    if ref.lower().startswith("file://"):
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise InvalidEditRequestError(
                f"{ref} points at another host; only local file:// paths are supported"
            )
        return Path(url2pathname(unquote(parts.path)))
    return Path(os.path.expanduser(ref))


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
