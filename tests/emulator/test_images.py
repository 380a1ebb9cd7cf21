from __future__ import annotations

import asyncio
import io
from itertools import product

import pytest
from PIL import Image, ImageStat

from airflow_provider_nanobanana.emulator import images
from airflow_provider_nanobanana.emulator.images import (
    RESOLUTION_LONG_SIDE,
    PaddedFile,
    RenderCache,
    RenderSpec,
    make_thumbnail,
    output_size,
    render_output,
)
from tests.emulator.support import png_bytes

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "first_input", "expected"),
    [
        ("1:1", "1K", None, (1024, 1024)),
        ("16:9", "1K", None, (1024, 576)),
        ("9:16", "2K", None, (1152, 2048)),
        ("4:3", "4K", None, (4096, 3072)),
        ("21:9", "0.5K", None, (512, 216)),  # 219.4 rounds to 216
        ("3:2", "1K", None, (1024, 680)),  # 682.7 rounds to 680
        ("2:3", "0.5K", None, (344, 512)),  # 341.3 rounds to 344
        ("auto", "1K", (300, 200), (1024, 680)),
        ("auto", "2K", (200, 400), (1024, 2048)),
        ("auto", "0.5K", None, (512, 512)),
        ("auto", "1K", (10_000, 10), (1024, 8)),  # never below 8
    ],
)
def test_output_size(
    aspect_ratio: str, resolution: str, first_input: tuple[int, int] | None, expected: tuple[int, int]
) -> None:
    assert output_size(aspect_ratio, resolution, first_input) == expected


@pytest.mark.parametrize(("aspect_ratio", "resolution"), list(product(ASPECT_RATIOS, RESOLUTION_LONG_SIDE)))
def test_output_size_long_side_and_multiple_of_8(aspect_ratio: str, resolution: str) -> None:
    width, height = output_size(aspect_ratio, resolution, (123, 456))
    ratio_w, ratio_h = (int(part) for part in aspect_ratio.split(":"))
    assert max(width, height) == RESOLUTION_LONG_SIDE[resolution]
    assert width % 8 == 0
    assert height % 8 == 0
    assert (width >= height) == (ratio_w >= ratio_h)
    assert abs(width / height - ratio_w / ratio_h) < 0.05


def _spec(**changes: object) -> RenderSpec:
    fields: dict[str, object] = {
        "width": 256,
        "height": 144,
        "seed": 7,
        "index": 0,
        "prompt": "make the sky purple and add a dragon",
        "output_format": "png",
        "source": None,
    }
    fields.update(changes)
    return RenderSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("output_format", "magic", "pillow_format"),
    [("png", b"\x89PNG", "PNG"), ("jpeg", b"\xff\xd8", "JPEG"), ("webp", b"RIFF", "WEBP")],
)
def test_render_output_format_and_size(output_format: str, magic: bytes, pillow_format: str) -> None:
    data = render_output(_spec(output_format=output_format))
    assert data.startswith(magic)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == pillow_format
        assert image.size == (256, 144)


def test_render_output_is_deterministic_per_seed_and_index() -> None:
    source = make_thumbnail(Image.open(io.BytesIO(png_bytes((300, 200)))))
    first = render_output(_spec(source=source))
    assert render_output(_spec(source=source)) == first
    assert render_output(_spec(source=source, seed=8)) != first
    assert render_output(_spec(source=source, index=1)) != first


def _mean_rgb(data: bytes) -> list[float]:
    with Image.open(io.BytesIO(data)) as image:
        top = image.convert("RGB").crop((0, 0, image.width, image.height // 2))
        return list(ImageStat.Stat(top).mean)


def test_render_output_is_visibly_derived_from_the_first_input() -> None:
    red = make_thumbnail(Image.new("RGB", (300, 200), (230, 10, 10)))
    blue = make_thumbnail(Image.new("RGB", (300, 200), (10, 10, 230)))
    red_out = _mean_rgb(render_output(_spec(source=red)))
    blue_out = _mean_rgb(render_output(_spec(source=blue)))
    assert red_out[0] > red_out[2] + 60
    assert blue_out[2] > blue_out[0] + 60


def test_make_thumbnail_is_a_small_jpeg() -> None:
    thumbnail = make_thumbnail(Image.new("RGB", (2000, 1000), (1, 2, 3)))
    with Image.open(io.BytesIO(thumbnail)) as image:
        assert image.format == "JPEG"
        assert image.size == (images.THUMBNAIL_SIDE, images.THUMBNAIL_SIDE // 2)


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_padded_file_is_a_valid_image_of_about_the_target_size(output_format: str) -> None:
    base = render_output(_spec(output_format=output_format))
    target = 3 * 1024 * 1024 + 12_345
    padded = PaddedFile(base, output_format, target)
    chunks = list(padded.chunks())
    data = b"".join(chunks)
    assert len(data) == padded.length
    assert target - 16 <= len(data) <= target
    # Streamed in bounded pieces: nothing near the file's size is ever built in memory.
    assert max(len(chunk) for chunk in chunks) <= max(len(base), 1_100_000)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (256, 144)
    if output_format == "png":
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # checks every chunk's CRC, including the padding's


def test_padded_file_below_the_base_size_is_the_base() -> None:
    base = render_output(_spec())
    padded = PaddedFile(base, "png", 10)
    assert padded.length == len(base)
    assert b"".join(padded.chunks()) == base


@pytest.fixture
def render_calls(monkeypatch: pytest.MonkeyPatch) -> list[RenderSpec]:
    calls: list[RenderSpec] = []

    def counting_render(spec: RenderSpec) -> bytes:
        calls.append(spec)
        return render_output(spec)

    monkeypatch.setattr(images, "render_output", counting_render)
    return calls


@pytest.mark.asyncio
async def test_render_cache_renders_a_spec_once(render_calls: list[RenderSpec]) -> None:
    calls = render_calls
    cache = RenderCache()
    results = await asyncio.gather(*(cache.get(_spec()) for _ in range(5)))
    again = await cache.get(_spec())
    other = await cache.get(_spec(index=2))
    assert len(calls) == 2
    assert all(result == results[0] for result in results)
    assert again == results[0]
    assert other != again


@pytest.mark.asyncio
async def test_render_cache_keeps_nothing_beyond_its_byte_budget(render_calls: list[RenderSpec]) -> None:
    cache = RenderCache(max_bytes=1)
    first = await cache.get(_spec())
    second = await cache.get(_spec())
    assert first == second
    assert len(render_calls) == 2
