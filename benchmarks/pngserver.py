"""A tiny HTTP server for the one input image every emulated job fetches (its own process)."""

from __future__ import annotations

import io
import sys

from aiohttp import web


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 180, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str]) -> None:
    port = int(argv[0])
    data = _png()

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/input.png", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
