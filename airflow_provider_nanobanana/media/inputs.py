"""Inputs: turn each ``image_urls`` entry into a URL RunComfy can fetch, checking every one first.

RunComfy fetches every input image itself, so a private ``s3://`` object becomes a SigV4 pre-signed GET
URL, and a local file is first staged to S3 under the sha256 of its bytes (a rerun reuses it). Every
input is checked (exists, an image, at most ``max_input_bytes``) before anything is uploaded or
submitted, so a bad input fails on the worker instead of costing a paid call.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import botocore.exceptions

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.media.content import (
    SNIFF_BYTES,
    content_type_from_url,
    extension_for,
    sniff_image_type,
)
from airflow_provider_nanobanana.media.errors import InvalidInputImageError, s3_error_code, s3_error_text
from airflow_provider_nanobanana.media.keys import parse_s3_prefix, parse_s3_uri, s3_uri
from airflow_provider_nanobanana.redaction import mask_url_secrets, redact_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

_HASH_BLOCK_BYTES = 1024 * 1024
_NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


class InputResolver:
    """Checks, stages and pre-signs edit inputs with one S3 client.

    :param client: Returns the S3 client (called when first needed, so http(s)-only inputs need none).
    :param presign_expiry_s: Lifetime of the pre-signed URLs.
    :param max_input_bytes: Largest input image accepted.
    """

    def __init__(
        self, client: Callable[[], S3Client], *, presign_expiry_s: int, max_input_bytes: int
    ) -> None:
        self._client = client
        self.presign_expiry_s = presign_expiry_s
        self.max_input_bytes = max_input_bytes

    def resolve(self, image_urls: Sequence[str], *, staging_uri: str | None = None) -> list[str]:
        """Turn each input reference into a URL RunComfy can fetch; see ``S3MediaHook.resolve_inputs``."""
        problems: list[str] = []
        plans: list[Callable[[], str]] = []
        staging = None if staging_uri is None else parse_s3_prefix(staging_uri, what="staging_uri")
        for index, ref in enumerate(image_urls):
            try:
                plans.append(self._plan(ref, staging))
            except InvalidEditRequestError as exc:
                problems.append(f"image_urls[{index}]: {exc}")
        if problems:
            raise InvalidInputImageError(problems)
        return [plan() for plan in plans]

    def presign(self, bucket: str, key: str) -> str:
        """A SigV4 pre-signed GET URL, its secrets registered with Airflow's masker."""
        url: str = self._client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.presign_expiry_s
        )
        mask_url_secrets(url)
        log.info("Pre-signed %s for %d s", s3_uri(bucket, key), self.presign_expiry_s)
        return url

    def _plan(self, ref: str, staging: tuple[str, str] | None) -> Callable[[], str]:
        """Check one input now; return what produces its fetchable URL later."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidEditRequestError("must be a non-empty string")
        scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
        if scheme in ("http", "https"):
            mask_url_secrets(ref)  # a user's own pre-signed URL is passed on, never shown
            return lambda: ref
        if scheme == "s3":
            bucket, key = self._check_s3_object(ref)
            return lambda: self.presign(bucket, key)
        if scheme == "file" or (not scheme and not ref.startswith("data:")):
            path = _local_path(ref)
            digest, content_type = self._check_local_file(path, ref)
            if staging is None:
                raise InvalidEditRequestError(
                    f"{ref} is a local file; set staging_uri (s3://bucket/prefix/) so it can be uploaded"
                )
            return lambda: self._stage(path, digest, content_type, staging)
        raise InvalidEditRequestError(
            f"{redact_url(ref)[:80]!r} is not supported; use https://, s3://bucket/key or a local file path"
        )

    def _check_s3_object(self, uri: str) -> tuple[str, str]:
        bucket, key = parse_s3_uri(uri)
        if not key or key.endswith("/"):
            raise InvalidEditRequestError(f"{uri} names a bucket or folder, not an object")
        try:
            head = self._client().head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            code = s3_error_code(exc)
            if code in _NOT_FOUND_CODES:
                raise InvalidEditRequestError(f"{uri} does not exist") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise InvalidEditRequestError(f"{uri}: access denied (or it does not exist)") from None
            raise InvalidEditRequestError(f"{uri} could not be checked: {s3_error_text(exc)}") from None
        content_type = str(head.get("ContentType") or "")
        if not content_type.split(";", 1)[0].strip().lower().startswith("image/"):
            raise InvalidEditRequestError(
                f"{uri} has Content-Type {content_type or '(none)'!r}, expected image/*; "
                "upload it with an image Content-Type"
            )
        self._check_size(uri, int(head.get("ContentLength", 0)))
        return bucket, key

    def _check_local_file(self, path: Path, ref: str) -> tuple[str, str]:
        try:
            info = path.stat()
        except FileNotFoundError:
            raise InvalidEditRequestError(f"local file {ref} does not exist") from None
        except OSError as exc:
            raise InvalidEditRequestError(f"local file {ref} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidEditRequestError(f"{ref} is not a regular file")
        self._check_size(ref, info.st_size)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
            digest.update(head)
            for block in iter(lambda: handle.read(_HASH_BLOCK_BYTES), b""):
                digest.update(block)
        content_type = sniff_image_type(head) or content_type_from_url(path.name)
        if content_type is None:
            raise InvalidEditRequestError(
                f"local file {ref} is not a recognised image (PNG, JPEG, WEBP, GIF)"
            )
        return digest.hexdigest(), content_type

    def _check_size(self, ref: str, size: int) -> None:
        if size <= 0:
            raise InvalidEditRequestError(f"{ref} is empty")
        if size > self.max_input_bytes:
            raise InvalidEditRequestError(
                f"{ref} is {size:,} bytes; input images may be at most {self.max_input_bytes:,} bytes"
            )

    def _stage(self, path: Path, digest: str, content_type: str, staging: tuple[str, str]) -> str:
        """Upload ``path`` under its content hash unless that object is already there, then pre-sign it."""
        bucket, prefix = staging
        key = f"{prefix}{digest}.{extension_for(content_type)}"
        client = self._client()
        if not _object_exists(client, bucket, key):
            with path.open("rb") as body:
                client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
            log.info("Staged %s to %s", path, s3_uri(bucket, key))
        else:
            log.info("Staging skipped: %s is already at %s", path, s3_uri(bucket, key))
        return self.presign(bucket, key)


def _object_exists(client: S3Client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if s3_error_code(exc) in _NOT_FOUND_CODES:
            return False
        raise
    return True


def _local_path(ref: str) -> Path:
    if ref.lower().startswith("file://"):
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise InvalidEditRequestError(
                f"{ref} points at another host; only local file:// paths are supported"
            )
        return Path(url2pathname(unquote(parts.path)))
    return Path(os.path.expanduser(ref))
