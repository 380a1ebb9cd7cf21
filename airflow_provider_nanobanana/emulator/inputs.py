"""Fetching and checking a job's input images, as the real service does before it runs the model.

The failures a client meets in production come from here: a URL the service cannot reach, a page
instead of an image, a file too large, or a pre-signed URL that expired while the job sat in the
queue. The last one needs care: moto (local S3) serves expired SigV4 URLs happily, so the expiry in
the query string is checked here. URLs are only ever shown redacted, since their signatures grant
access.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit

import httpx
from PIL import Image

from airflow_provider_nanobanana.emulator.images import make_thumbnail
from airflow_provider_nanobanana.models import EditRequest
from airflow_provider_nanobanana.redaction import redact_url


class InputError(Exception):
    """An input URL cannot be used; the message is what the job's error reports."""


@dataclass(frozen=True)
class LoadedInputs:
    """What the job keeps of its inputs: the first one's size and a thumbnail, nothing more."""

    first_size: tuple[int, int]
    thumbnail: bytes
    digest: str


def sigv4_expired(url: str, now: float | None = None) -> bool:
    """Whether an AWS SigV4 pre-signed URL is past ``X-Amz-Date + X-Amz-Expires``."""
    params = {key.lower(): value for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    signed_at, lifetime = params.get("x-amz-date"), params.get("x-amz-expires")
    if not signed_at or not lifetime:
        return False
    try:
        start = datetime.strptime(signed_at, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        expires_at = start + int(lifetime)
    except ValueError:
        return False
    return (time.time() if now is None else now) > expires_at


def inspect_image(data: bytes, *, thumbnail: bool) -> tuple[tuple[int, int], bytes]:
    """Check that Pillow can decode ``data``; return its size and, if asked, a thumbnail.

    Blocking: call through :func:`asyncio.to_thread`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if not thumbnail:
                image.verify()
                return size, b""
            return size, make_thumbnail(image)


Inspection = tuple[tuple[int, int], bytes]


class InputLoader:
    """Fetches the inputs of running jobs over one shared client, a bounded number at a time.

    Decoding an input costs ~15 ms of CPU; benchmarks send the same few images thousands of times,
    so what Pillow found is remembered by the bytes' digest and each distinct image is decoded once.
    """

    def __init__(self, client: httpx.AsyncClient, *, concurrency: int = 32, cache_entries: int = 256) -> None:
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._inspected: OrderedDict[tuple[bytes, bool], Inspection] = OrderedDict()
        self._cache_entries = cache_entries
        self.fetches = 0
        self.failures = 0

    async def load(self, request: EditRequest, *, max_bytes: int, timeout_s: float) -> LoadedInputs:
        """Fetch and check every input; raise :class:`InputError` naming the first bad one."""
        results = await asyncio.gather(
            *(self._check(i, url, max_bytes, timeout_s) for i, url in enumerate(request.image_urls)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        first = results[0]
        assert isinstance(first, tuple)
        size, thumbnail = first
        return LoadedInputs(size, thumbnail, hashlib.sha256(thumbnail).hexdigest())

    async def _check(self, index: int, url: str, max_bytes: int, timeout_s: float) -> Inspection:
        where = f"image_urls[{index}] ({redact_url(url)})"
        if sigv4_expired(url):
            self.failures += 1
            raise InputError(f"{where}: input URL expired (X-Amz-Date + X-Amz-Expires is in the past)")
        try:
            async with self._slots:
                self.fetches += 1
                data = await self._fetch(where, url, max_bytes, timeout_s)
        except InputError:
            self.failures += 1
            raise
        key = (hashlib.sha256(data).digest(), index == 0)
        cached = self._inspected.get(key)
        if cached is not None:
            self._inspected.move_to_end(key)
            return cached
        try:
            inspection = await asyncio.to_thread(inspect_image, data, thumbnail=index == 0)
        except Exception as exc:  # noqa: BLE001 - whatever a decoder raises, the bytes are not a usable image
            self.failures += 1
            raise InputError(f"{where}: not an image Pillow can open ({type(exc).__name__})") from None
        self._inspected[key] = inspection
        if len(self._inspected) > self._cache_entries:
            self._inspected.popitem(last=False)
        return inspection

    async def _fetch(self, where: str, url: str, max_bytes: int, timeout_s: float) -> bytes:
        try:
            async with self._client.stream("GET", url, timeout=timeout_s) as response:
                if not response.is_success:
                    raise InputError(f"{where}: fetching it returned HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "")
                if not content_type.lower().startswith("image/"):
                    raise InputError(f"{where}: Content-Type is {content_type or 'missing'!r}, not image/*")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise InputError(f"{where}: {declared} bytes is larger than the {max_bytes}-byte limit")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise InputError(f"{where}: larger than the {max_bytes}-byte limit")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise InputError(f"{where}: unreachable ({type(exc).__name__})") from None
