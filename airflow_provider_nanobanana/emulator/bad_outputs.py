"""Bad outputs on demand: what the quality gate must catch (``media/quality.py``).

Nano Banana answers some prompts with a blocked-content placeholder, no image or an empty URL, and a
CDN can serve an empty or cut-off file. A job is given one such defect at submit, either by a marker
in its prompt (``[bad_output:blank]``, for one request of a test or a DAG) or by the server's
``faults.bad_output`` (for every job, or the next ``faults.bad_output_jobs`` of them). File defects
affect output 0 only, so a request of several images shows that the others are untouched.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from enum import Enum

from PIL import Image


class BadOutputKind(str, Enum):
    #: Output 0 is one flat colour (black), in the requested format and size: a placeholder.
    BLANK = "blank"
    #: Output 0 is served as 200 with an empty body.
    ZERO_BYTES = "zero_bytes"
    #: Output 0 is cut off halfway.
    TRUNCATED = "truncated"
    #: Output 0 starts with the right magic number, then junk.
    UNDECODABLE = "undecodable"
    #: Output 0 is a tiny PNG whose header declares 40,000 x 40,000 pixels (a decompression bomb).
    BOMB = "bomb"
    #: The result lists one output URL fewer than ``num_images`` (none for a single image).
    WRONG_COUNT = "wrong_count"
    #: The result lists ``""`` in place of output 0's URL.
    EMPTY_URL = "empty_url"


_MARKER = re.compile(r"\[bad_output:([a-z_]+)\]")
_FILE_KINDS = frozenset(
    {
        BadOutputKind.BLANK,
        BadOutputKind.ZERO_BYTES,
        BadOutputKind.TRUNCATED,
        BadOutputKind.UNDECODABLE,
        BadOutputKind.BOMB,
    }
)
_PILLOW = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def kind_in_prompt(prompt: str) -> BadOutputKind | None:
    """The defect a ``[bad_output:<kind>]`` marker in ``prompt`` asks for (unknown kinds are ignored)."""
    match = _MARKER.search(prompt)
    if match is None:
        return None
    return BadOutputKind._value2member_map_.get(match.group(1))  # type: ignore[return-value]


class BadOutputs:
    """Which jobs got which defect; decided once per job, at submit."""

    def __init__(self) -> None:
        self._by_job: dict[str, BadOutputKind] = {}
        #: Jobs given the server-wide defect since it was configured (for ``bad_output_jobs``).
        self.issued = 0

    def reset(self) -> None:
        self._by_job.clear()
        self.issued = 0

    def decide(
        self, request_id: str, prompt: str, configured: str | None, limit: int | None
    ) -> BadOutputKind | None:
        kind = kind_in_prompt(prompt)
        if kind is None and configured is not None and (limit is None or self.issued < limit):
            kind = BadOutputKind(configured)
            self.issued += 1
        if kind is not None:
            self._by_job[request_id] = kind
        return kind

    def output_urls(self, request_id: str, urls: list[str]) -> list[str]:
        kind = self._by_job.get(request_id)
        if kind is BadOutputKind.WRONG_COUNT:
            return urls[:-1]
        if kind is BadOutputKind.EMPTY_URL and urls:
            return ["", *urls[1:]]
        return urls

    def spoils(self, request_id: str, index: int) -> bool:
        """Whether output ``index`` of the job is served defective (only output 0 ever is)."""
        return index == 0 and self._by_job.get(request_id) in _FILE_KINDS

    def file_bytes(
        self, request_id: str, index: int, good: bytes, output_format: str, size: tuple[int, int]
    ) -> bytes:
        """What output ``index`` is served as: ``good`` unless the job's defect is a file defect of it.

        Blocking for ``blank`` (an encode); the caller runs it in a worker thread.
        """
        kind = self._by_job.get(request_id)
        if index != 0 or kind not in _FILE_KINDS:
            return good
        return defective_file(BadOutputKind(kind), good, output_format, size)


def defective_file(kind: BadOutputKind, good: bytes, output_format: str, size: tuple[int, int]) -> bytes:
    if kind is BadOutputKind.BLANK:
        out = io.BytesIO()
        Image.new("RGB", size, (0, 0, 0)).save(out, _PILLOW[output_format])
        return out.getvalue()
    if kind is BadOutputKind.ZERO_BYTES:
        return b""
    if kind is BadOutputKind.TRUNCATED:
        return good[: len(good) // 2]
    if kind is BadOutputKind.UNDECODABLE:
        return good[:16] + bytes(range(256)) * 4
    return bomb_png(40_000)


def bomb_png(side: int) -> bytes:
    """A PNG of a few KB whose header declares ``side`` x ``side`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * side) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
