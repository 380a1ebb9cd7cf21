"""Pre-signed output URLs, like the CDN links the real service hands out.

Clients must download outputs promptly and without the API token; an expiring HMAC-signed link is
what makes "the link expired before the archiver got to it" testable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from enum import Enum


class Verdict(str, Enum):
    OK = "ok"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


class UrlSigner:
    """Signs ``path`` + expiry with a per-server key, so links die with the server that made them."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def sign(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()[:40]

    def query(self, path: str, expires: int) -> str:
        return f"expires={expires}&sig={self.sign(path, expires)}"

    def verify(
        self, path: str, expires: str | None, signature: str | None, now: float | None = None
    ) -> Verdict:
        if not expires or not signature or not expires.isdigit():
            return Verdict.BAD_SIGNATURE
        if not hmac.compare_digest(self.sign(path, int(expires)), signature):
            return Verdict.BAD_SIGNATURE
        if (time.time() if now is None else now) > int(expires):
            return Verdict.EXPIRED
        return Verdict.OK
