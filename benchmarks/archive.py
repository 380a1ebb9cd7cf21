"""Archive path: stream one output to S3 (``S3MediaHook.archive_outputs``) vs download-then-put.

Each variant runs in a fresh child so ``ru_maxrss`` belongs to it alone; the baseline is the RSS after
imports and client creation, just before the copy. moto runs in its own process (it keeps uploads in
memory), and so does the emulator serving the padded output.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from typing import Any

from benchmarks.common import EMULATOR_TOKEN, peak_rss_mb, rss_mb

BUCKET = "bench-archive"


def output_url(base_url: str, png_url: str, timeout_s: float = 60.0) -> str:
    """Submit one job to an emulator with no queue and return its (signed) output URL."""
    headers = {"Authorization": f"Bearer {EMULATOR_TOKEN}", "Content-Type": "application/json"}
    body = json.dumps({"prompt": "archive", "image_urls": [png_url]}).encode()
    req = urllib.request.Request(
        f"{base_url}/v1/models/google/nano-banana-2/edit", data=body, headers=headers
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        rid = json.loads(resp.read())["request_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"{base_url}/v1/requests/{rid}/result", headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            result = json.loads(resp.read())
        if result["status"] == "completed":
            return str(result["output"]["images"][0])
        time.sleep(0.2)
    raise RuntimeError("archive job did not complete")


def _s3_client(moto_url: str) -> Any:
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


def _streaming(url: str, moto_url: str, tag: str) -> tuple[float, int]:
    from airflow_provider_nanobanana.media import S3MediaHook

    hook = S3MediaHook(
        None, endpoint_url=moto_url, region_name="us-east-1", allowed_output_hosts=["127.0.0.1"]
    )
    hook.get_client()
    fields: dict[str, str | int] = {"dag_id": "bench", "run_id": tag, "task_id": "archive", "map_index": -1}
    base = rss_mb()
    result = hook.archive_outputs(
        [url], request_id=f"r{tag}", dest_uri=f"s3://{BUCKET}/stream/", fields=fields
    )
    return base, int(result.total_bytes)


def _naive(url: str, moto_url: str, tag: str) -> tuple[float, int]:
    import requests

    client = _s3_client(moto_url)
    base = rss_mb()
    content = requests.get(url, timeout=300).content
    client.put_object(Bucket=BUCKET, Key=f"naive/{tag}.png", Body=content)
    return base, len(content)


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    url, moto_url, variant = str(args["url"]), str(args["moto_url"]), str(args["variant"])
    _s3_client(moto_url)
    t0 = time.monotonic()
    run = _streaming if variant == "streaming" else _naive
    base, size = run(url, moto_url, f"{variant}-{args['size_mb']}")
    wall = time.monotonic() - t0
    peak = peak_rss_mb()
    return {
        "variant": variant,
        "size_mb": args["size_mb"],
        "bytes": size,
        "wall_s": round(wall, 2),
        "mb_per_s": round(size / 2**20 / wall, 1),
        "base_rss_mb": round(base, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_above_base_mb": round(peak - base, 1),
    }
