from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

import httpx
import pytest
from PIL import UnidentifiedImageError

from airflow_provider_nanobanana.emulator.inputs import InputError, InputLoader, inspect_image, sigv4_expired
from airflow_provider_nanobanana.models import EditRequest
from tests.emulator.support import png_bytes

PNG = png_bytes((300, 200))


def _amz_date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def test_sigv4_expiry_comes_from_the_query_string() -> None:
    now = time.time()
    url = "https://bucket.s3.amazonaws.com/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={}&X-Amz-Expires={}"
    assert sigv4_expired(url.format(_amz_date(now - 120), 60), now)
    assert not sigv4_expired(url.format(_amz_date(now - 30), 60), now)
    assert sigv4_expired(url.format(_amz_date(now - 30), 60).lower(), now + 60)  # names are case-insensitive
    assert not sigv4_expired("https://example.com/a.png?X-Amz-Date=garbage&X-Amz-Expires=10", now)
    assert not sigv4_expired("https://example.com/a.png", now)


def test_inspect_image_reports_size_and_refuses_junk() -> None:
    size, thumbnail = inspect_image(PNG, thumbnail=True)
    assert size == (300, 200)
    assert thumbnail.startswith(b"\xff\xd8")
    assert inspect_image(PNG, thumbnail=False) == ((300, 200), b"")
    with pytest.raises(UnidentifiedImageError):
        inspect_image(b"not an image", thumbnail=False)


Handler = Callable[[httpx.Request], httpx.Response]


async def _load(handler: Handler, *urls: str, max_bytes: int = 10_000_000) -> InputLoader:
    loader = InputLoader(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    request = EditRequest.model_validate(
        {"prompt": "p", "image_urls": list(urls)}, context={"allow_insecure_inputs": True}
    )
    await loader.load(request, max_bytes=max_bytes, timeout_s=5)
    return loader


def _png(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "image/png"}, content=PNG)


@pytest.mark.asyncio
async def test_loader_fetches_every_input() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return _png(request)

    loader = await _load(handler, "http://h/a.png", "http://h/b.png")
    assert sorted(seen) == ["http://h/a.png", "http://h/b.png"]
    assert (loader.fetches, loader.failures) == (2, 0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(403, text="denied"), "returned HTTP 403"),
        (httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html>"), "not image/*"),
        (httpx.Response(200, content=PNG), "Content-Type is 'missing'"),
        (httpx.Response(200, headers={"Content-Type": "image/png"}, content=b"junk"), "not an image Pillow"),
        (httpx.Response(200, headers={"Content-Type": "image/png"}, content=PNG * 10), "byte limit"),
    ],
)
async def test_loader_names_the_bad_input(response: httpx.Response, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return response if request.url.path == "/bad.png" else _png(request)

    with pytest.raises(InputError, match=message) as caught:
        await _load(handler, "http://h/ok.png", "http://h/bad.png?sig=SECRET", max_bytes=len(PNG) + 10)
    assert "image_urls[1]" in str(caught.value)
    assert "SECRET" not in str(caught.value)


@pytest.mark.asyncio
async def test_loader_stops_reading_an_oversized_body_without_content_length() -> None:
    chunks_sent = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            chunks_sent.append(1)
            yield b"\x00" * 1024

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "image/png"}, content=endless())

    with pytest.raises(InputError, match="larger than the 5000-byte limit"):
        await _load(handler, "http://h/a.png", max_bytes=5000)
    assert len(chunks_sent) < 10


@pytest.mark.asyncio
async def test_loader_reports_unreachable_hosts() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(InputError, match=r"unreachable \(ConnectError\)"):
        await _load(handler, "http://h/a.png")


@pytest.mark.asyncio
async def test_loader_refuses_expired_presigned_urls_without_fetching() -> None:
    fetched: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(request)
        return _png(request)

    signed_at = _amz_date(time.time() - 3600)
    url = f"http://h/a.png?X-Amz-Date={signed_at}&X-Amz-Expires=60&X-Amz-Signature=abcdef"
    with pytest.raises(InputError, match="input URL expired") as caught:
        await _load(handler, url)
    assert fetched == []
    assert "abcdef" not in str(caught.value)
