"""Servers that misbehave in ways no framework would: bombs, stacked codings, trickles, crashing
parsers, echoed tokens. Over real loopback HTTP, sync and async alike (issue #15, points 2-5, 8, 9).

Every assertion is on what the client raised, what the server counted (requests, bytes written),
never on wall time.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import time
import tracemalloc
import zlib
from typing import Any

import pytest

from airflow_provider_nanobanana.bodies import BodyReader, BodyRefused
from airflow_provider_nanobanana.exceptions import (
    RunComfyAPIError,
    RunComfySubmitUnknownError,
    RunComfyTransientError,
)
from airflow_provider_nanobanana.hooks.runcomfy import MAX_ANSWER_BYTES, RunComfyHook
from airflow_provider_nanobanana.models import EditRequest
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
from tests.reliability.hostile import Request, answer, gzip_bomb, hostile, trickle

TOKEN = "hostile-test-token-SECRET-7f3a"
RID = "req_hostile"
REQUEST = EditRequest.build(prompt="x", image_urls=["https://img.test/a.png"])


def hook(server: Any, **settings: Any) -> RunComfyHook:
    params = {"retry_max_wait_s": 0.01, "max_retries": 1, **settings}
    return RunComfyHook(token=TOKEN, base_url=server.base_url, **params)


def status_of(h: RunComfyHook, mode: str) -> Any:
    if mode == "sync":
        return h.get_status(RID)
    return asyncio.run(h.aget_status(RID))


def submit_of(h: RunComfyHook, mode: str) -> Any:
    if mode == "sync":
        return h.submit(REQUEST)
    return asyncio.run(h.asubmit(REQUEST))


MODES = pytest.mark.parametrize("mode", ["sync", "async"])


# -- 3. decompression bombs and stacked encodings -------------------------------------------------


@MODES
@pytest.mark.parametrize(
    ("encoding", "layers", "decoded"),
    [
        ("gzip", 1, 64 * MAX_ANSWER_BYTES),
        ("x-gzip", 1, 8 * MAX_ANSWER_BYTES),
        ("GZIP", 1, 2 * MAX_ANSWER_BYTES),
        ("deflate", 1, 16 * MAX_ANSWER_BYTES),
        ("gzip, gzip", 2, 64 * MAX_ANSWER_BYTES),
        ("gzip,gzip", 2, 4 * MAX_ANSWER_BYTES),
        ("identity, gzip, gzip", 2, 4 * MAX_ANSWER_BYTES),
    ],
)
def test_a_compressed_answer_larger_than_the_cap_is_refused_not_inflated(mode, encoding, layers, decoded):
    if encoding == "deflate":
        body = zlib.compress(b'{"status": "in_queue"' + b" " * decoded + b"}", 9)
    else:
        body = gzip_bomb(decoded, layers=layers)
    assert len(body) < decoded / 100  # small on the wire

    def script(request: Request, sock: socket.socket) -> None:
        server.write(sock, answer(200, body, {"Content-Encoding": encoding}))

    with hostile(script) as server, pytest.raises(RunComfyTransientError, match=r"larger than|stacked"):
        status_of(hook(server), mode)


@MODES
@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br", "x-unknown"])
def test_encodings_outside_the_accepted_ones_are_refused(mode, encoding):
    def script(request: Request, sock: socket.socket) -> None:
        assert request.headers["accept-encoding"] == "gzip, deflate"
        server.write(sock, answer(200, b'{"status": "in_queue"}', {"Content-Encoding": encoding}))

    with hostile(script) as server, pytest.raises(RunComfyTransientError, match="encoding"):
        status_of(hook(server), mode)


@MODES
def test_a_small_gzipped_answer_is_read_normally(mode):
    def script(request: Request, sock: socket.socket) -> None:
        body = gzip.compress(json.dumps({"status": "in_progress", "padding": "x" * 5000}).encode())
        server.write(sock, answer(200, body, {"Content-Encoding": "gzip"}))

    with hostile(script) as server:
        assert status_of(hook(server), mode).status.value == "in_progress"


def test_the_reader_never_holds_much_more_than_the_cap_in_memory():
    """The bounded decompressor stops at the cap + 1 byte per step, whatever the ratio."""
    reader = BodyReader(1000, time.monotonic() + 60, "gzip")
    bomb = gzip_bomb(50_000_000)
    with pytest.raises(BodyRefused, match="larger than 1000"):
        reader.feed(bomb)
    assert len(reader._out) <= 1001


# -- 2. a parser crash is an ambiguous submit, and a garbled poll ---------------------------------


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@MODES
@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_an_answer_that_crashes_the_json_parser_is_never_resubmitted(mode, depth):
    def script(request: Request, sock: socket.socket) -> None:
        server.write(sock, answer(200, nested(depth)))

    with hostile(script) as server:
        with pytest.raises(RunComfySubmitUnknownError):
            submit_of(hook(server, max_retries=4), mode)
        assert server.count("POST") == 1  # ambiguous: never sent twice


@MODES
def test_the_same_answer_on_a_poll_is_garbled_and_retried(mode):
    def script(request: Request, sock: socket.socket) -> None:
        server.write(sock, answer(200, nested(100_000)))

    with hostile(script) as server:
        with pytest.raises(RunComfyTransientError, match="not a JSON object"):
            status_of(hook(server, max_retries=2), mode)
        assert server.count("GET") == 3  # retried like any garbled answer, not a crash


def test_a_trigger_keeps_polling_through_parser_crashes():
    answers = iter([nested(100_000), nested(100_000), b'{"status": "completed"}'])

    def script(request: Request, sock: socket.socket) -> None:
        server.write(sock, answer(200, next(answers)))

    with hostile(script) as server:
        conn = {"conn_type": "runcomfy", "host": server.base_url, "password": TOKEN}
        conn["extra"] = {"max_retries": 0}
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AIRFLOW_CONN_HOSTILE", json.dumps(conn))
            trigger = RunComfyJobTrigger(
                request_id=RID,
                deadline_epoch_s=time.time() + 60,
                runcomfy_conn_id="hostile",
                poll_interval_s=0.01,
            )

            async def first() -> dict[str, Any]:
                async for event in trigger.run():
                    return dict(event.payload)
                raise AssertionError("no event")

            event = asyncio.run(first())
    assert event["status"] == "success"
    assert server.count("GET") == 3


# -- 4. a total deadline per exchange -------------------------------------------------------------


@MODES
@pytest.mark.parametrize("every_s", [0.05, 0.2])
def test_a_server_that_trickles_its_answer_cannot_hold_an_exchange(mode, every_s):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"

    def script(request: Request, sock: socket.socket) -> None:
        trickle(server, sock, head, every_s, limit=60)

    with hostile(script) as server:
        h = hook(server, exchange_timeout_s=1.0, read_timeout_s=0.5, max_retries=0)
        with pytest.raises(RunComfyTransientError):
            status_of(h, mode)
        # Every byte came inside the read timeout; only the exchange's deadline ended it. Sync
        # stops at the first byte after the deadline; async at the deadline itself.
        assert server.bytes_written - len(head) <= 1.0 / every_s + 2


@MODES
def test_a_slow_but_successful_submit_is_waited_for_with_its_own_timeout(mode):
    def script(request: Request, sock: socket.socket) -> None:
        time.sleep(1.5)  # longer than the read timeout of polls, shorter than a submit's
        server.write(sock, answer(200, json.dumps({"request_id": RID}).encode()))

    with hostile(script) as server:
        h = hook(server, read_timeout_s=0.5, submit_read_timeout_s=10)
        assert submit_of(h, mode).request_id == RID
        assert server.count("POST") == 1


# -- 5. the token is never echoed ------------------------------------------------------------------


ECHOES = [
    lambda r: {"error_message": f"bad header: Authorization: {r.headers['authorization']}"},
    lambda r: {"message": f"token {TOKEN} was revoked"},
    lambda r: {"detail": {"message": f"headers={json.dumps(r.headers)}", "type": "auth"}},
    lambda r: {"error": f"you sent {r.headers['authorization'].lower()}"},
]


@MODES
@pytest.mark.parametrize("echo", range(len(ECHOES)))
@pytest.mark.parametrize("status", [200, 401, 500])
def test_an_error_body_that_quotes_the_token_never_passes_it_on(mode, echo, status):
    def script(request: Request, sock: socket.socket) -> None:
        body = {**ECHOES[echo](request), **({"error_code": "400004"} if status == 200 else {})}
        server.write(sock, answer(status, json.dumps(body).encode()))

    with hostile(script) as server:
        with pytest.raises(RunComfyAPIError) as info:
            status_of(hook(server, max_retries=0), mode)
        assert TOKEN not in str(info.value)
        assert TOKEN.lower() not in str(info.value).lower()


# -- 9. metadata nothing acts on is read leniently ---------------------------------------------------


@pytest.mark.parametrize(
    "meta",
    [
        {"created_at": 1764633600, "finished_at": 1764633612.5},
        {"created_at": None, "finished_at": {"seconds": 5}},
        {"cost": "0.08"},
        {"cost": {"usd": 0.08}, "created_at": ["2026", "12"]},
    ],
)
def test_numeric_or_odd_timestamps_never_make_a_paid_result_unreadable(meta):
    result = {"status": "completed", "output": {"images": ["https://x.runcomfy.net/1.png"]}, **meta}

    def script(request: Request, sock: socket.socket) -> None:
        server.write(sock, answer(200, json.dumps(result).encode()))

    with hostile(script) as server:
        assert hook(server).get_result(RID).images == ["https://x.runcomfy.net/1.png"]


# -- 3. the same bounds on output downloads --------------------------------------------------------


def png(size: int = 64) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def archive_from(server: Any, moto_s3: Any, bucket: str, max_output_bytes: int) -> Any:
    from tests.unit.media.support import make_hook

    media = make_hook(moto_s3.endpoint_url, max_output_bytes=max_output_bytes)
    return media.archive_outputs(
        [f"{server.base_url}/out.png"],
        request_id="req_out",
        dest_uri=f"s3://{bucket}/out/",
        fields={"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1},
    )


@pytest.mark.parametrize(
    ("encoding", "layers"), [("gzip", 1), ("gzip, gzip", 2), ("x-gzip", 1), ("deflate", 1), ("br", 1)]
)
def test_an_output_that_inflates_past_the_cap_is_refused_and_nothing_is_stored(
    moto_s3, s3_bucket, encoding, layers
):
    from airflow_provider_nanobanana.media import OutputsNotArchivedError

    cap = 4 * 1024 * 1024
    if encoding == "deflate":
        body = zlib.compress(png() + b"\0" * (16 * cap), 9)
    else:
        body = png() + b"\0" * (16 * cap)
        for _ in range(layers):
            body = gzip.compress(body, compresslevel=9)
    assert len(body) < cap  # the declared size passes the cap; only decoding shows the truth

    def script(request: Request, sock: socket.socket) -> None:
        server.write(sock, answer(200, body, {"Content-Type": "image/png", "Content-Encoding": encoding}))

    tracemalloc.start()
    try:
        with hostile(script) as server, pytest.raises(OutputsNotArchivedError) as info:
            archive_from(server, moto_s3, s3_bucket, cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.search(r"larger than|stacked|not accepted", str(info.value))
    assert peak < 8 * cap  # never inflated in memory: 64 MiB decoded would show here
    stored = moto_s3.client().list_objects_v2(Bucket=s3_bucket, Prefix="out/").get("Contents", [])
    assert not [o for o in stored if o["Key"].endswith(".png")]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity", ""])
def test_a_compressed_output_within_the_cap_is_stored_decoded(moto_s3, s3_bucket, encoding):
    image = png(128)
    body = {"gzip": gzip.compress, "deflate": zlib.compress}.get(encoding, lambda b: b)(image)

    def script(request: Request, sock: socket.socket) -> None:
        assert request.headers["accept-encoding"] == "gzip, deflate"
        server.write(sock, answer(200, body, {"Content-Type": "image/png", "Content-Encoding": encoding}))

    with hostile(script) as server:
        result = archive_from(server, moto_s3, s3_bucket, 4 * 1024 * 1024)
    key = result.outputs[0].key
    assert moto_s3.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == image
