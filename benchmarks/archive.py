"""Archive path: stream one output to S3 (``S3MediaHook.archive_outputs``) vs download-then-put.

Each variant runs in a fresh child so ``ru_maxrss`` belongs to it alone; the baseline is the RSS after
imports and client creation, just before the copy, and the wall time is the copy alone (the download
and the upload; for ours also the existence check, the checksums and the manifest). moto runs in its own process (it keeps uploads in
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


def _streaming(url: str, moto_url: str, tag: str) -> tuple[float, int, float]:
    import airflow_provider_nanobanana._compat  # noqa: F401 - Airflow itself, loaded in any real task
    from airflow_provider_nanobanana.media import S3MediaHook

    hook = S3MediaHook(
        None, endpoint_url=moto_url, region_name="us-east-1", allowed_output_hosts=["127.0.0.1"]
    )
    hook.get_client()
    fields: dict[str, str | int] = {"dag_id": "bench", "run_id": tag, "task_id": "archive", "map_index": -1}
    base = rss_mb()
    t0 = time.monotonic()
    result = hook.archive_outputs(
        [url], request_id=f"r{tag}", dest_uri=f"s3://{BUCKET}/stream/", fields=fields
    )
    return base, int(result.total_bytes), time.monotonic() - t0


def _naive(url: str, moto_url: str, tag: str) -> tuple[float, int, float]:
    import requests

    client = _s3_client(moto_url)
    session = requests.Session()
    base = rss_mb()
    t0 = time.monotonic()
    content = session.get(url, timeout=300).content
    client.put_object(Bucket=BUCKET, Key=f"naive/{tag}.png", Body=content)
    return base, len(content), time.monotonic() - t0


def _empty_bucket(moto_url: str) -> None:
    """Delete what a copy wrote (untimed): moto keeps objects in memory, and a fuller moto is slower,
    which would favour whichever variant ran first."""
    client = _s3_client(moto_url)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    """Time only the copy (GET + upload), after imports and client creation, in both variants.

    Each variant copies the output twice in its child: the first (cold) copy pays one-time costs
    (boto3 loading operation models, lazy imports); the second (warm) one is what every further
    archive in a worker costs, and is the ``wall_s`` compared.
    """
    url, moto_url, variant = str(args["url"]), str(args["moto_url"]), str(args["variant"])
    _s3_client(moto_url)
    run = _streaming if variant == "streaming" else _naive
    tag = f"{variant}-{args['size_mb']}-{args.get('repeat', 0)}"
    base, size, cold = run(url, moto_url, f"{tag}-cold")
    _empty_bucket(moto_url)
    _, _, wall = run(url, moto_url, f"{tag}-warm")
    _empty_bucket(moto_url)
    peak = peak_rss_mb()
    return {
        "variant": variant,
        "size_mb": args["size_mb"],
        "bytes": size,
        "wall_s": round(wall, 3),
        "cold_wall_s": round(cold, 3),
        "mb_per_s": round(size / 2**20 / wall, 1),
        "base_rss_mb": round(base, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_above_base_mb": round(peak - base, 1),
    }
