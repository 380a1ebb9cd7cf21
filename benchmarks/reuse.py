"""Content-addressed reuse: what hashing an input costs, and what a re-run of a batch with reuse costs.

``hash``: one ``s3://`` input of 1 MB and 10 MB in moto; the fingerprint's hashing (``InputHasher``)
against a plain streamed GET of the same object (the bound the issue sets: at most one extra streamed
GET per input), median of 5, and the peak RSS above the baseline (flat memory).

``batch``: N distinct input images under a prefix; the batch operator runs twice with
``reuse_outputs=True`` over the same prefix (two DAG runs). Paid requests are the emulator's POST
count; the first run pays N, the re-run should pay 0. Each run is timed from ``execute`` to its result
(worker and trigger in this one process, the trigger on an event loop as the triggerer would run it).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from benchmarks.common import emulator_counters, peak_rss_mb, rss_mb

BUCKET = "bench-reuse"
MB = 2**20


def _client() -> Any:
    from airflow_provider_nanobanana.media import S3MediaHook

    client = S3MediaHook("aws_default").get_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


def _hash(args: dict[str, Any]) -> dict[str, Any]:
    import os

    from airflow_provider_nanobanana.media import S3MediaHook
    from airflow_provider_nanobanana.spend.fingerprint import InputHasher

    client = _client()
    hook = S3MediaHook("aws_default")
    hasher = InputHasher(hook.get_client, max_bytes=200 * MB)
    gets_sent: list[str] = []
    hook.get_client().meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets_sent.append(params.get("Key", ""))
    )
    rows = []
    for size_mb in args["sizes_mb"]:
        key = f"inputs/{size_mb}mb.png"
        client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size_mb * MB), ContentType="image/png")

        def plain_get(key: str = key) -> None:
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
            for _ in body.iter_chunks(MB):
                pass

        def fingerprint_input(key: str = key) -> None:
            hasher.digest(f"s3://{BUCKET}/{key}")

        plain_get()
        fingerprint_input()  # warm both paths once
        base = rss_mb()
        gets: list[float] = []
        hashes: list[float] = []
        for _ in range(5):
            for timed, out in ((plain_get, gets), (fingerprint_input, hashes)):
                t0 = time.monotonic()
                timed()
                out.append(time.monotonic() - t0)
        get_s, hash_s = statistics.median(gets), statistics.median(hashes)
        gets_sent.clear()
        fingerprint_input()
        get_requests = len(gets_sent)
        rows.append(
            {
                "input_mb": size_mb,
                "plain_get_s": round(get_s, 3),
                "hash_s": round(hash_s, 3),
                "hash_vs_get": round(hash_s / max(get_s, 1e-9), 2),
                "get_requests_per_input": get_requests,
                "peak_above_base_mb": round(peak_rss_mb() - base, 1),
            }
        )
    return {"rows": rows}


def _seed_inputs(client: Any, n: int) -> None:
    from PIL import Image

    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (i % 256, (i // 256) % 256, 77)).save(buf, format="PNG")
        client.put_object(
            Bucket=BUCKET, Key=f"batch/img_{i:05d}.png", Body=buf.getvalue(), ContentType="image/png"
        )


class _TI(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        pass

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        return None


def _run_batch(run_id: str, n: int) -> tuple[float, dict[str, Any]]:
    from airflow_provider_nanobanana._compat import TaskDeferred
    from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
    from airflow_provider_nanobanana.triggers.batch import RunComfyBatchTrigger

    task = NanoBananaBatchEditOperator(
        task_id="batch",
        prompt="reuse {name}",
        input_s3_prefix=f"s3://{BUCKET}/batch/",
        output_s3_uri=f"s3://{BUCKET}/out/",
        max_in_flight=50,
        rate_per_s=500,
        poll_interval=0.05,
        poll_max_interval=0.2,
        min_deferral=0,
        archive_concurrency=8,
        max_failed_fraction=1.0,  # a lost submit on a loaded machine is reported, not fatal
        reuse_outputs=True,
    )
    context: Any = {"ti": _TI(dag_id="bench", task_id="batch", run_id=run_id, map_index=-1)}
    t0 = time.monotonic()
    try:
        result = task.execute(context)
    except TaskDeferred as deferred:
        _, kwargs = deferred.trigger.serialize()
        trigger = RunComfyBatchTrigger(**json.loads(json.dumps(kwargs)))

        async def first_event() -> Any:
            async for event in trigger.run():
                return event.payload
            raise RuntimeError("the batch trigger ended without an event")

        result = task.execute_complete(context, asyncio.run(first_event()))
    return time.monotonic() - t0, result


def _batch(args: dict[str, Any]) -> dict[str, Any]:
    n = int(args["n"])
    client = _client()
    _seed_inputs(client, n)
    rows = []
    for label, run_id in (("first run (pays)", "run_1"), ("re-run, reuse_outputs=True", "run_2")):
        before = emulator_counters(str(args["emulator_url"]))["submits"]
        seconds, result = _run_batch(run_id, n)
        paid = emulator_counters(str(args["emulator_url"]))["submits"] - before
        rows.append(
            {
                "run": label,
                "items": n,
                "paid_requests": paid,
                "reused": result.get("reused"),
                "succeeded": result.get("succeeded"),
                "failed": result.get("failed"),
                "wall_s": round(seconds, 1),
            }
        )
    return {"rows": rows}


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    return _hash(args) if args["mode"] == "hash" else _batch(args)
