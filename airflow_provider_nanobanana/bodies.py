"""Reading an HTTP body within bounds: its decoded size, one content coding, a total deadline.

httpx decodes ``Content-Encoding`` without limit, so a small gzip answer can become gigabytes in
memory (in a triggerer, that kills every trigger), and ``Content-Encoding: gzip, gzip`` multiplies
that. Its timeouts are per read, so a server that trickles a byte just inside the read timeout holds
an exchange for as long as it likes. Callers therefore stream the *raw* bytes through a
:class:`BoundedDecoder`, which decodes at most one coding, never expands more than one step's worth
at a time, and stops at the byte cap or the deadline, whichever comes first. API answers are
collected by :class:`BodyReader`; output downloads stream through :func:`decoded_chunks`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Iterator

#: Codings this module decodes; anything else (``br``, ``zstd``, stacks) is refused, and requests say
#: so in ``Accept-Encoding``.
ACCEPT_ENCODING = "gzip, deflate"
#: The most one decompression step may produce: memory stays flat whatever the compression ratio.
STEP_BYTES = 1 << 20


class BodyRefused(Exception):
    """The body broke a bound (size, coding or deadline); the message says which."""


class BoundedDecoder:
    """Decodes one body's raw chunks into pieces of at most :data:`STEP_BYTES`. Pure; no I/O.

    :param content_encoding: the response's ``Content-Encoding`` header.
    :param limit_bytes: most decoded bytes accepted in all.
    :param deadline_monotonic: ``time.monotonic()`` after which the body is abandoned (None: none).
    """

    def __init__(
        self, content_encoding: str, limit_bytes: int, deadline_monotonic: float | None = None
    ) -> None:
        self.limit_bytes = limit_bytes
        self.deadline_monotonic = deadline_monotonic
        self.decoded_bytes = 0
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise BodyRefused(f"stacked content encodings are refused ({content_encoding!r})")
        coding = codings[0] if codings else ""
        self._zlib: zlib._Decompress | None = None
        if coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS + 32)  # zlib or gzip header, detected
        elif coding:
            raise BodyRefused(f"content encoding {coding!r} is not accepted (only {ACCEPT_ENCODING})")

    def decode(self, raw: bytes) -> Iterator[bytes]:
        """The decoded pieces of one raw chunk."""
        self.check_deadline()
        if self._zlib is None:
            yield self._count(raw)
            return
        data = raw
        while data:
            try:
                piece = self._zlib.decompress(
                    data, min(STEP_BYTES, self.limit_bytes + 1 - self.decoded_bytes)
                )
            except zlib.error as exc:
                raise BodyRefused(f"the body does not decode as declared: {exc}") from None
            yield self._count(piece)
            data = self._zlib.unconsumed_tail

    def flush(self) -> Iterator[bytes]:
        if self._zlib is not None:
            try:
                yield self._count(self._zlib.flush(STEP_BYTES))
            except zlib.error as exc:
                raise BodyRefused(f"the body does not decode as declared: {exc}") from None

    def check_deadline(self) -> None:
        if self.deadline_monotonic is not None and time.monotonic() > self.deadline_monotonic:
            raise BodyRefused("the exchange took longer than its total deadline")

    def _count(self, piece: bytes) -> bytes:
        self.decoded_bytes += len(piece)
        if self.decoded_bytes > self.limit_bytes:
            raise BodyRefused(f"the body is larger than {self.limit_bytes} bytes once decoded")
        return piece


def decoded_chunks(raw_chunks: Iterable[bytes], decoder: BoundedDecoder) -> Iterator[bytes]:
    """Stream a body: each raw chunk decoded within the decoder's bounds (empty pieces dropped)."""
    for raw in raw_chunks:
        yield from (piece for piece in decoder.decode(raw) if piece)
    yield from (piece for piece in decoder.flush() if piece)


class BodyReader:
    """Collects one small body (an API answer): ``feed`` raw chunks, then ``finish``."""

    def __init__(self, limit_bytes: int, deadline_monotonic: float, content_encoding: str = "") -> None:
        self._decoder = BoundedDecoder(content_encoding, limit_bytes, deadline_monotonic)
        self._out = bytearray()

    def feed(self, chunk: bytes) -> None:
        for piece in self._decoder.decode(chunk):
            self._out += piece

    def finish(self) -> bytes:
        for piece in self._decoder.flush():
            self._out += piece
        return bytes(self._out)
