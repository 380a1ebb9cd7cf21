"""What an edit *is*, independent of how its inputs are addressed: a versioned content fingerprint.

Two requests with the same fingerprint would be paid for the same work: the same model, every model
parameter (the seed included), the same prompt and the same input images, byte for byte and in the
same order. Inputs are identified by the sha256 of their bytes, never by their URL: a pre-signed URL
changes every run (new signature, new expiry) while the bytes do not.

The fingerprint is ``"v1:" + sha256(canonical JSON)``; the version changes whenever what goes into
it changes, so an old index entry can never be mistaken for a new one.

Hashing an input costs one streamed GET (S3 for ``s3://``, one HTTP GET for ``http(s)://``, a file
read for a local path), read 1 MiB at a time: memory stays flat whatever the image size.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

from airflow_provider_nanobanana import __version__
from airflow_provider_nanobanana.bodies import ACCEPT_ENCODING, BodyRefused, BoundedDecoder, decoded_chunks
from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.media.keys import parse_s3_uri
from airflow_provider_nanobanana.redaction import redact_httpx_logs, redact_url
from airflow_provider_nanobanana.tls import verified_context

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from airflow_provider_nanobanana.media.hook import S3MediaHook

FINGERPRINT_VERSION = "v1"
READ_BYTES = 1024 * 1024
MAX_REDIRECTS = 5


def fingerprint(
    *, model_id: str, parameters: Mapping[str, Any], prompt: str, input_sha256: Sequence[str]
) -> str:
    """``v1:<sha256 hex>`` of the canonical JSON of everything that decides an edit's outputs.

    ``parameters`` are every model parameter but the prompt and the images (seed included); the
    inputs are the hex sha256 of each image's bytes, in request order (order matters to the model).
    """
    document = {
        "version": FINGERPRINT_VERSION,
        "model_id": model_id,
        "parameters": dict(parameters),
        "prompt": prompt,
        "inputs": list(input_sha256),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{FINGERPRINT_VERSION}:{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def fingerprint_hex(value: str) -> str:
    """The hash part of a fingerprint (what names its index object); refuses anything malformed."""
    version, _, digest = value.partition(":")
    if (
        version != FINGERPRINT_VERSION
        or len(digest) != 64
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise ValueError(f"not a {FINGERPRINT_VERSION} fingerprint: {value[:80]!r}")
    return digest


class InputHasher:
    """Hashes input images by streaming their bytes once, within ``max_bytes`` each.

    :param s3_client: Returns the S3 client for ``s3://`` inputs (called only when one is hashed).
    :param max_bytes: Largest input accepted (the same cap as input resolution).
    :param timeout_s: Connect/read timeout of an http(s) GET, and the total deadline of one body.
    """

    def __init__(self, s3_client: Callable[[], S3Client], *, max_bytes: int, timeout_s: float = 60.0) -> None:
        self._s3 = s3_client
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def digest(self, ref: str, http: httpx.Client | None = None) -> str:
        """Hex sha256 of the bytes behind ``ref`` (``s3://``, ``http(s)://`` or a local path)."""
        scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
        if scheme == "s3":
            return self._sha256(self._s3_chunks(ref), ref)
        if scheme in ("http", "https"):
            if http is None:
                with self.http_client() as own:
                    return self._sha256(self._http_chunks(own, ref), ref)
            return self._sha256(self._http_chunks(http, ref), ref)
        path = ref[len("file://") :] if ref.lower().startswith("file://") else os.path.expanduser(ref)
        return self._sha256(_file_chunks(path), ref)

    def digests(self, refs: Sequence[str], *, threads: int = 1) -> list[str]:
        """Hex sha256 of each of ``refs``, in order; ``threads`` > 1 hashes several at once (batch)."""
        with self.http_client() as http:
            if threads <= 1 or len(refs) <= 1:
                return [self.digest(ref, http) for ref in refs]
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nanobanana-hash") as pool:
                return list(pool.map(lambda ref: self.digest(ref, http), refs))

    def http_client(self) -> httpx.Client:
        """No auth header: inputs are public or pre-signed URLs, and the API token must not reach them."""
        redact_httpx_logs()
        return httpx.Client(
            timeout=httpx.Timeout(self.timeout_s),
            verify=verified_context(),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={
                "User-Agent": f"airflow-provider-nanobanana/{__version__}",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
        )

    def _sha256(self, chunks: Iterable[bytes], ref: str) -> str:
        sha = hashlib.sha256()
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > self.max_bytes:
                    raise BodyRefused(f"the body is larger than {self.max_bytes} bytes")
                sha.update(chunk)
        except BodyRefused as exc:
            raise InvalidEditRequestError(f"{redact_url(ref)} cannot be an input: {exc}") from None
        return sha.hexdigest()

    def _s3_chunks(self, uri: str) -> Iterable[bytes]:
        bucket, key = parse_s3_uri(uri)
        body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(READ_BYTES)
        finally:
            body.close()

    def _http_chunks(self, http: httpx.Client, url: str) -> Iterable[bytes]:
        deadline = time.monotonic() + self.timeout_s * 5
        with http.stream("GET", url) as response:
            if response.status_code >= 300:
                raise InvalidEditRequestError(
                    f"{redact_url(url)} answered HTTP {response.status_code}; it cannot be hashed for reuse"
                )
            decoder = BoundedDecoder(response.headers.get("content-encoding", ""), self.max_bytes, deadline)
            yield from decoded_chunks(response.iter_raw(READ_BYTES), decoder)


def _file_chunks(path: str) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(READ_BYTES), b"")


def edit_fingerprint(
    media: S3MediaHook,
    *,
    model_id: str,
    parameters: Mapping[str, Any],
    prompt: str,
    image_urls: Sequence[str],
) -> str:
    """Hash each input once (streamed, through ``media``'s S3 client and limits) and fingerprint the edit."""
    hasher = InputHasher(media.get_client, max_bytes=media.max_input_bytes, timeout_s=media.http_timeout_s)
    digests = hasher.digests(list(image_urls))
    return fingerprint(model_id=model_id, parameters=parameters, prompt=prompt, input_sha256=digests)
