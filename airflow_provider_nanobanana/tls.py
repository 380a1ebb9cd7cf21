"""One verified TLS context per process for the clients that fetch input and output images.

Building a context loads certifi's CA bundle, about 25 ms of CPU each time. The archiver and the
fingerprinter open an ``httpx.Client`` per call, so without sharing, every archived job paid that
again: at 1 MB it was a third of the archive's wall time (docs/benchmarks.md, section 4). An
``SSLContext`` is safe to share between threads and clients. It is built on first use, so
``SSL_CERT_FILE``/``SSL_CERT_DIR`` set before the first download are honoured, as httpx would.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def verified_context() -> ssl.SSLContext:
    """The process's CA-verifying context for file-host downloads (built once)."""
    return httpx.create_ssl_context()
