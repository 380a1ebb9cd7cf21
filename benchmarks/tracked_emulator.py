"""``python -m benchmarks.tracked_emulator [emulator flags]``: the emulator, plus per-job poll times.

The emulator's counters are totals; the real-triggerer benchmark needs to know *when every job was
first polled* (pickup) and *when every job completed* (for detection latency). This runs the very
same emulator app (same flags, same uvicorn settings as ``python -m airflow_provider_nanobanana.
emulator``) behind a pass-through ASGI middleware that notes, per request id, the wall-clock time of
its first status poll and its poll count. Two extra admin endpoints, no token:

* ``GET /_bench/summary``: ``{"jobs", "first_polled", "last_first_poll", "polls"}`` (cheap);
* ``GET /_bench/jobs``: ``{request_id: [first_poll_epoch | null, finished_epoch | null, state, polls]}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow_provider_nanobanana.emulator.__main__ import build_parser, config_from_args
from airflow_provider_nanobanana.emulator.__main__ import serve as serve_emulator
from airflow_provider_nanobanana.emulator.app import Emulator
from airflow_provider_nanobanana.emulator.server import (
    run_coroutine,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX, _SUFFIX = "/v1/requests/", "/status"


class PollTracker:
    """ASGI middleware: O(1) bookkeeping per status poll, everything else passed through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # uvicorn_config() reads app.state.emulator
        self.first_poll: dict[str, float] = {}
        self.polls: dict[str, int] = {}

    @property
    def emulator(self) -> Emulator:
        emulator: Emulator = self.app.state.emulator
        return emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                rid = path[len(_PREFIX) : -len(_SUFFIX)]
                if rid not in self.first_poll:
                    self.first_poll[rid] = time.time()
                self.polls[rid] = self.polls.get(rid, 0) + 1
            elif path == "/_bench/summary":
                await _json(send, self.summary())
                return
            elif path == "/_bench/jobs":
                await _json(send, self.jobs())
                return
        await self.app(scope, receive, send)

    def _known(self) -> dict[str, Any]:
        store = self.emulator.store
        store.advance()
        return dict(store._jobs)  # a benchmark's read-only view of the emulator's jobs

    def summary(self) -> dict[str, Any]:
        jobs = self._known()
        firsts = [self.first_poll[rid] for rid in jobs if rid in self.first_poll]
        return {
            "jobs": len(jobs),
            "first_polled": len(firsts),
            "last_first_poll": max(firsts, default=None),
            "polls": sum(self.polls.values()),
        }

    def jobs(self) -> dict[str, Any]:
        return {
            rid: [self.first_poll.get(rid), job.finished_at, job.state.value, self.polls.get(rid, 0)]
            for rid, job in self._known().items()
        }


async def _json(send: Send, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def serve(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    await serve_emulator(config_from_args(args), args.host, args.port, args.log_level, wrap=PollTracker)


def main(argv: list[str]) -> int:
    run_coroutine(serve(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
