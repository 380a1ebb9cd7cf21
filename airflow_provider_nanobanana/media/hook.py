"""``S3MediaHook``: the S3 side of an edit, as users and operators see it.

It holds the settings and the one boto3 client (built from an Airflow AWS connection), and hands the
work to the modules that do it: :mod:`.inputs` resolves, checks and pre-signs inputs; :mod:`.job` plans
an archive call; :mod:`.archiver` streams outputs into S3 and writes the manifest.

Pre-signed URLs never appear in log lines, exception messages, the manifest or XCom; what they hide
is also registered with Airflow's secrets masker in case user code logs them
(:mod:`airflow_provider_nanobanana.redaction`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.config import Config

from airflow_provider_nanobanana.media.archiver import OutputArchiver
from airflow_provider_nanobanana.media.hosts import normalise_host_patterns
from airflow_provider_nanobanana.media.inputs import InputResolver
from airflow_provider_nanobanana.media.job import ArchiveJob
from airflow_provider_nanobanana.media.keys import (
    DEFAULT_KEY_TEMPLATE,
    DEFAULT_MANIFEST_TEMPLATE,
    MAX_PRESIGN_EXPIRY_S,
)
from airflow_provider_nanobanana.media.results import ArchiveResult
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, MAX_INPUT_IMAGE_BYTES

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from airflow_provider_nanobanana.media.quality import QualityGate

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
#: S3's smallest allowed part (except the last one) and its largest single-request copy.
S3_MIN_PART_BYTES = 5 * MiB
S3_MAX_PARTS = 10_000
S3_MAX_COPY_BYTES = 5 * GiB
#: Up to this size an output is one ``PutObject``; above, the size of each part. Two are in memory at
#: most. 16 MiB rather than boto3's 8: most edits (up to 4K PNGs) go up in one request, and a large
#: one in half the parts, each request being a fixed cost (docs/benchmarks.md, section 4).
DEFAULT_PART_BYTES = 16 * MiB
#: SigV4 pre-signed URLs are valid for at most seven days.


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
        part_size_bytes: int = DEFAULT_PART_BYTES,
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
        return self.inputs.resolve(image_urls, staging_uri=staging_uri)

    @property
    def inputs(self) -> InputResolver:
        """What resolves inputs with this hook's client and settings."""
        return InputResolver(
            self.get_client, presign_expiry_s=self.presign_expiry_s, max_input_bytes=self.max_input_bytes
        )

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
        quality: QualityGate | None = None,
        fingerprint: str | None = None,
        cost_usd: float | None = None,
    ) -> ArchiveResult:
        """Copy every output of ``request_id`` into ``dest_uri`` and write a manifest beside them.

        :param output_urls: The job's output URLs, in output order (``ResultResponse.images``).
        :param dest_uri: ``s3://bucket/prefix/`` under which keys are rendered.
        :param fields: Values for the template, e.g. ``dag_id``, ``run_id``, ``task_id``, ``map_index``
            (see :func:`media.keys.fields_from_context`). ``request_id``, ``index`` and ``ext`` are filled in.
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
        :param quality: The output quality gate (``media/quality.py``): each output is inspected as it
            streams, and rejected (not stored) or flagged in the manifest per its policy. ``None``: no check.
        :param fingerprint: The edit's content fingerprint (``spend/fingerprint.py``), for the manifest.
        :param cost_usd: What RunComfy reported the job cost, for the manifest (``cost_usd``).
        :raises OutputURLRefusedError: an output URL is not allowed; nothing was fetched.
        :raises OutputsNotArchivedError: some outputs failed after retries; the rest are archived.
        :raises ArchiveError: all images are archived but the manifest could not be written.
        """
        job = ArchiveJob.plan(
            output_urls,
            request_id=request_id,
            dest_uri=dest_uri,
            fields=fields,
            key_template=key_template,
            manifest_template=manifest_template,
            model_id=model_id,
            prompt=prompt,
            seed=seed,
            inputs=inputs,
            parameters=parameters,
            extra_metadata=extra_metadata,
            overwrite=overwrite,
            allowed_output_hosts=self.allowed_output_hosts,
            fingerprint=fingerprint,
            cost_usd=cost_usd,
        )
        return self.archiver.archive(job, quality)

    @property
    def archiver(self) -> OutputArchiver:
        """What archives outputs with this hook's client and settings."""
        return OutputArchiver(
            self.get_client,
            allowed_output_hosts=self.allowed_output_hosts,
            http_timeout_s=self.http_timeout_s,
            part_size_bytes=self.part_size_bytes,
            max_output_bytes=self.max_output_bytes,
            max_attempts=self.max_attempts,
            retry_base_delay_s=self.retry_base_delay_s,
        )

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
