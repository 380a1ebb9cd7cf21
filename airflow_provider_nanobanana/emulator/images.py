"""Output images: real files with the requested size and format, visibly made from the first input.

A client under test must archive, re-open and compare real images, so the outputs are valid files
whose pixel size, format and bytes follow the request. They are a pure function of
(first input, size, seed, index, prompt, format): re-running the same request gives the same bytes,
which lets tests compare archives by hash. Rendering is CPU work and always runs in a worker thread.
Files can also be padded to hundreds of megabytes without holding them in memory, to exercise
streaming archivers.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageFont, ImageOps

OutputFormat = Literal["png", "jpeg", "webp"]

RESOLUTION_LONG_SIDE: dict[str, int] = {"0.5K": 512, "1K": 1024, "2K": 2048, "4K": 4096}
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FILE_EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
FORMAT_BY_EXTENSION: dict[str, str] = {ext: fmt for fmt, ext in FILE_EXTENSIONS.items()}

#: Inputs are kept only as small JPEG thumbnails, shared by digest: 10,000 jobs over a handful of
#: input images must not hold 10,000 decoded copies.
THUMBNAIL_SIDE = 384
_TINT_ALPHA = 0.35
_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def output_size(
    aspect_ratio: str, resolution: str, first_input_size: tuple[int, int] | None
) -> tuple[int, int]:
    """Pixel size of an output: the long side from ``resolution``, the shape from ``aspect_ratio``.

    ``auto`` takes the first input's shape (square when it is unknown). Both sides are rounded to a
    multiple of 8, as image models generate in 8-pixel latent blocks, and are never below 8.
    """
    long_side = RESOLUTION_LONG_SIDE[resolution]
    if aspect_ratio == "auto":
        ratio_w, ratio_h = first_input_size if first_input_size and min(first_input_size) > 0 else (1, 1)
    else:
        left, _, right = aspect_ratio.partition(":")
        ratio_w, ratio_h = int(left), int(right)
    if ratio_w >= ratio_h:
        width, height = float(long_side), long_side * ratio_h / ratio_w
    else:
        width, height = long_side * ratio_w / ratio_h, float(long_side)
    return _round8(width), _round8(height)


def _round8(value: float) -> int:
    return max(8, int(value / 8 + 0.5) * 8)


def tint_colour(seed: int, index: int) -> tuple[int, int, int]:
    rng = random.Random(f"nano-banana:{seed}:{index}")
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def make_thumbnail(image: Image.Image) -> bytes:
    """The first input as a small JPEG, enough to derive outputs from it."""
    if image.format == "JPEG":
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    rgb = image.convert("RGB")
    rgb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class RenderSpec:
    """Everything an output's bytes depend on; equal specs give equal bytes."""

    width: int
    height: int
    seed: int
    index: int
    prompt: str
    output_format: str
    #: JPEG thumbnail of the first input, or ``None`` to draw a gradient instead.
    source: bytes | None = None

    @property
    def cache_key(self) -> tuple[object, ...]:
        source = hashlib.sha256(self.source).digest() if self.source else b""
        words = label_words(self.prompt)
        return (self.width, self.height, self.seed, self.index, words, self.output_format, source)


def label_words(prompt: str, count: int = 6) -> str:
    text = " ".join(prompt.split()[:count])
    return text.encode("ascii", "replace").decode("ascii")[:60]


def render_output(spec: RenderSpec) -> bytes:
    """Encode one output image. Blocking and CPU-bound: call it through :func:`asyncio.to_thread`."""
    size = (spec.width, spec.height)
    if spec.source:
        with Image.open(io.BytesIO(spec.source)) as source:
            base = ImageOps.fit(source.convert("RGB"), size, Image.Resampling.BILINEAR)
    else:
        base = _gradient(size)
    image = Image.blend(base, Image.new("RGB", size, tint_colour(spec.seed, spec.index)), _TINT_ALPHA)
    _draw_label(image, f"nano-banana #{spec.index + 1}  {label_words(spec.prompt)}")
    out = io.BytesIO()
    fmt = spec.output_format
    if fmt == "png":
        image.save(out, "PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(out, "JPEG", quality=90)
    else:
        image.save(out, _PILLOW_FORMATS[fmt], quality=85, method=2)
    return out.getvalue()


def _gradient(size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM), ramp.rotate(90)))


def _draw_label(image: Image.Image, text: str) -> None:
    width, height = image.size
    band = max(8, height // 10)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height - band, width, height), fill=(0, 0, 0))
    font = ImageFont.load_default(size=max(6, int(band * 0.6)))
    draw.text((max(2, band // 3), height - band + band // 5), text, fill=(255, 255, 255), font=font)


class RenderCache:
    """Rendered outputs, shared by identical specs and bounded in total bytes.

    Benchmarks download thousands of outputs of the same request; rendering each anew would cost
    seconds of CPU per hundred files. Concurrent requests for the same spec wait for one render.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._pending: dict[tuple[object, ...], asyncio.Future[bytes]] = {}

    async def get(self, spec: RenderSpec) -> bytes:
        key = spec.cache_key
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            data = await asyncio.to_thread(render_output, spec)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else waits
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(data)
        self._store(key, data)
        return data

    def _store(self, key: tuple[object, ...], data: bytes) -> None:
        if len(data) > self._max_bytes:
            return
        self._cache[key] = data
        self._bytes += len(data)
        while self._bytes > self._max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._bytes -= len(evicted)

    def clear(self) -> None:
        self._cache.clear()
        self._bytes = 0


# --- padding: a valid image of a chosen size, produced in chunks -------------------------------

_ZEROS = bytes(1 << 20)
_PNG_PAD_TYPE = b"emPd"  # ancillary, private, safe-to-copy: every decoder skips it
_PNG_PAD_MAX = 16 * 1024 * 1024
_JPEG_COM_MAX = 65533
_WEBP_PAD_TYPE = b"EMPD"
_MAX_PADDED = 2**32 - 16


@dataclass(frozen=True)
class PaddedFile:
    """``base`` enlarged to about ``target`` bytes with chunks every decoder ignores.

    PNG gets private ancillary chunks before ``IEND``, JPEG gets comment segments before ``EOI``,
    WebP gets an unknown RIFF chunk at the end (and a corrected RIFF size). The padding is zeros
    streamed from one shared buffer, so a multi-hundred-MB file costs no memory.
    """

    base: bytes
    output_format: str
    target: int

    @property
    def length(self) -> int:
        return len(self.base) + sum(self._pad_plan())

    def _pad_plan(self) -> list[int]:
        """Sizes (with framing) of the pad blocks to insert."""
        room = min(self.target, _MAX_PADDED) - len(self.base)
        if self.output_format == "png":
            return _split(room, overhead=12, max_data=_PNG_PAD_MAX)
        if self.output_format == "jpeg":
            return _split(room, overhead=4, max_data=_JPEG_COM_MAX)
        return _split(room, overhead=8, max_data=_MAX_PADDED, even=True)[:1]

    def chunks(self) -> Iterator[bytes]:
        plan = self._pad_plan()
        if not plan:
            yield self.base
            return
        fmt = self.output_format
        if fmt == "png":
            head, tail = self.base[:-12], self.base[-12:]
            yield head
            for block in plan:
                yield from _png_chunk(block - 12)
            yield tail
        elif fmt == "jpeg":
            head, tail = self.base[:-2], self.base[-2:]
            yield head
            yield from _jpeg_comments(plan)
            yield tail
        else:
            riff_size = len(self.base) - 8 + plan[0]
            yield self.base[:4] + struct.pack("<I", riff_size) + self.base[8:]
            yield _WEBP_PAD_TYPE + struct.pack("<I", plan[0] - 8)
            yield from _zeros(plan[0] - 8)


def _split(room: int, *, overhead: int, max_data: int, even: bool = False) -> list[int]:
    blocks: list[int] = []
    while room > overhead:
        data = min(max_data, room - overhead)
        if even:
            data -= data % 2
        blocks.append(data + overhead)
        room -= data + overhead
    return blocks


def _zeros(count: int) -> Iterator[bytes]:
    full, rest = divmod(count, len(_ZEROS))
    for _ in range(full):
        yield _ZEROS
    if rest:
        yield _ZEROS[:rest]


_png_crc_cache: dict[int, int] = {}


def _png_chunk(data_len: int) -> Iterator[bytes]:
    crc = _png_crc_cache.get(data_len)
    if crc is None:
        crc = zlib.crc32(_PNG_PAD_TYPE)
        for block in _zeros(data_len):
            crc = zlib.crc32(block, crc)
        _png_crc_cache[data_len] = crc
    yield struct.pack(">I", data_len) + _PNG_PAD_TYPE
    yield from _zeros(data_len)
    yield struct.pack(">I", crc)


def _jpeg_comments(plan: list[int]) -> Iterator[bytes]:
    full_segment = b"\xff\xfe" + struct.pack(">H", _JPEG_COM_MAX + 2) + _ZEROS[:_JPEG_COM_MAX]
    batch = full_segment * 16  # ~1 MiB per write instead of one write per 64 KiB segment
    full = sum(1 for block in plan if block == len(full_segment))
    for _ in range(full // 16):
        yield batch
    if full % 16:
        yield full_segment * (full % 16)
    for block in plan:
        if block != len(full_segment):
            yield b"\xff\xfe" + struct.pack(">H", block - 2) + _ZEROS[: block - 4]
