"""Reading an HTTP body within bounds: its decoded size, one content coding, a total deadline.

httpx decodes ``Content-Encoding`` without limit, so a small gzip answer can become gigabytes in
memory (in a triggerer, that kills every trigger), and ``Content-Encoding: gzip, gzip`` multiplies
that. Its timeouts are per read, so a server that trickles a byte just inside the read timeout holds
an exchange for as long as it likes. Callers therefore stream the *raw* bytes and feed them to a
:class:`BodyReader`, which decodes at most one coding with a bounded decompressor and stops at the
byte cap or the exchange's deadline, whichever comes first.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

#: Codings this reader decodes; anything else (``br``, ``zstd``, stacks) is refused, and requests say
#: so in ``Accept-Encoding``.
ACCEPT_ENCODING = "gzip, deflate"


class BodyRefused(Exception):
    """The body broke a bound (size, coding or deadline); the message says which."""


@dataclass
class BodyReader:
    """Accumulates one body: ``feed`` raw chunks, then ``finish``. Pure; no I/O.

    :param limit_bytes: most decoded bytes accepted.
    :param deadline_monotonic: ``time.monotonic()`` after which the exchange is abandoned.
    :param content_encoding: the response's ``Content-Encoding`` header.
    """

    limit_bytes: int
    deadline_monotonic: float
    content_encoding: str = ""
    _out: bytearray = field(default_factory=bytearray, init=False)
    _decoder: zlib._Decompress | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        codings = [c.strip().lower() for c in self.content_encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise BodyRefused(f"stacked content encodings are refused ({self.content_encoding!r})")
        coding = codings[0] if codings else ""
        if coding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS + 32)  # zlib or gzip header, detected
        elif coding:
            raise BodyRefused(f"content encoding {coding!r} is not accepted (only {ACCEPT_ENCODING})")

    def feed(self, chunk: bytes) -> None:
        self.check_deadline()
        if self._decoder is None:
            self._append(chunk)
            return
        data = chunk
        # max_length bounds each step, so a decompression bomb never expands past the cap in memory.
        while data:
            try:
                self._append(self._decoder.decompress(data, self.limit_bytes + 1 - len(self._out)))
            except zlib.error as exc:
                raise BodyRefused(f"the body does not decode as declared: {exc}") from None
            data = self._decoder.unconsumed_tail

    def finish(self) -> bytes:
        if self._decoder is not None:
            try:
                self._append(self._decoder.flush())
            except zlib.error as exc:
                raise BodyRefused(f"the body does not decode as declared: {exc}") from None
        return bytes(self._out)

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline_monotonic:
            raise BodyRefused("the exchange took longer than its total deadline")

    def _append(self, data: bytes) -> None:
        self._out += data
        if len(self._out) > self.limit_bytes:
            raise BodyRefused(f"the body is larger than {self.limit_bytes} bytes once decoded")
