"""Archiving (``media/archiver.py``) against moto and a local file server standing in for the CDN."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import botocore.exceptions
import pytest

from airflow_provider_nanobanana.exceptions import ArchiveError, InvalidEditRequestError
from airflow_provider_nanobanana.media import OutputsNotArchivedError, OutputURLRefusedError, S3MediaHook
from airflow_provider_nanobanana.media.multipart import same_checksum
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID
from tests.unit.media.support import (
    FIELDS,
    JPEG,
    PNG,
    REQUEST_ID,
    RUN_DIR,
    WEBP,
    FileServer,
    MiB,
    Route,
    archive,
    big_body,
    count_calls,
    keys_under,
    make_hook,
)

# --- Archive: happy path and idempotency ---------------------------------------------------------


def test_archive_happy_path(hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer) -> None:
    # The CDN lies: PNG bytes at a .jpg URL served as image/jpeg. A signed query must never be stored.
    lying = files.serve("/out0.jpg", Route(body=PNG, content_type="image/jpeg"))
    honest = files.serve("/out1.webp", Route(body=WEBP, content_type="image/webp"))
    urls = [lying + "?X-Amz-Signature=cdnsecret", honest]

    result = archive(
        hook,
        urls,
        s3_bucket,
        prompt="make it blue",
        seed=42,
        inputs=[f"s3://{s3_bucket}/in.png", "https://h/x.png?X-Amz-Signature=inputsecret"],
        parameters={"prompt": "make it blue", "num_images": 2, "seed": 42},
    )

    expected = [f"{RUN_DIR}/{REQUEST_ID}_0.png", f"{RUN_DIR}/{REQUEST_ID}_1.webp"]
    assert result.s3_uris == [f"s3://{s3_bucket}/{k}" for k in expected]
    assert result.manifest_uri == f"s3://{s3_bucket}/{RUN_DIR}/{REQUEST_ID}.manifest.json"
    client = moto_s3.client()
    assert keys_under(client, s3_bucket) == sorted([*expected, f"{RUN_DIR}/{REQUEST_ID}.manifest.json"])
    for key, body, content_type, output in zip(
        expected, [PNG, WEBP], ["image/png", "image/webp"], result.outputs, strict=True
    ):
        obj = client.get_object(Bucket=s3_bucket, Key=key)
        stored = obj["Body"].read()
        assert stored == body
        assert obj["ContentType"] == content_type
        assert output.sha256 == hashlib.sha256(body).hexdigest()
        assert output.size_bytes == len(body)
        assert obj["Metadata"] == {
            "nanobanana-request-id": REQUEST_ID,
            "nanobanana-output-index": str(output.index),
            "nanobanana-model-id": DEFAULT_MODEL_ID,
            "nanobanana-prompt-sha256": hashlib.sha256(b"make it blue").hexdigest(),
            "nanobanana-seed": "42",
            "nanobanana-sha256": output.sha256,
        }
    # Fetched without any credentials.
    assert all("authorization" not in {k.lower() for k in h} for h in files.request_headers)

    manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key=f"{RUN_DIR}/{REQUEST_ID}.manifest.json")["Body"].read()
    )
    assert manifest["request_id"] == REQUEST_ID
    assert manifest["model_id"] == DEFAULT_MODEL_ID
    assert manifest["fields"] == FIELDS
    assert manifest["parameters"] == {"prompt": "make it blue", "num_images": 2, "seed": 42}
    assert manifest["inputs"] == [f"s3://{s3_bucket}/in.png", "https://h/x.png?X-Amz-Signature=***"]
    assert [o["s3_uri"] for o in manifest["outputs"]] == result.s3_uris
    assert [o["sha256"] for o in manifest["outputs"]] == [hashlib.sha256(b).hexdigest() for b in (PNG, WEBP)]
    assert [o["content_type"] for o in manifest["outputs"]] == ["image/png", "image/webp"]
    assert manifest["outputs"][0]["source_url"] == lying + "?X-Amz-Signature=***"
    assert manifest["total_bytes"] == len(PNG) + len(WEBP)
    assert manifest["started_at"] <= manifest["finished_at"]
    assert manifest["duration_s"] >= 0

    xcom = json.loads(json.dumps(result.to_xcom()))
    assert xcom["s3_uris"] == result.s3_uris
    assert xcom["manifest_uri"] == result.manifest_uri
    assert xcom["fetched_bytes"] == xcom["total_bytes"] == len(PNG) + len(WEBP)
    for text in (json.dumps(xcom), json.dumps(manifest)):
        assert "cdnsecret" not in text
        assert "inputsecret" not in text


@pytest.mark.parametrize("host_now", ["still serves", "expired", "down"])
def test_rerun_is_idempotent_and_reads_nothing(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer, host_now: str
) -> None:
    """The existence check runs beside the GET; what it finds archived is skipped, body unread,
    whatever the file host answers now (the URLs of a rerun may have expired)."""
    urls = [files.serve("/a.png"), files.serve("/b.jpg", Route(body=JPEG, content_type="image/jpeg"))]
    first = archive(hook, urls, s3_bucket)
    if host_now == "expired":
        files.serve("/a.png", Route(status=403, body=b"expired"))
        files.serve("/b.jpg", Route(status=403, body=b"expired"))
    elif host_now == "down":
        urls = [url.replace(files.url("/"), "http://127.0.0.1:9/") for url in urls]  # the discard port
    puts = count_calls(hook, "PutObject")

    second = archive(hook, urls, s3_bucket)

    assert second.s3_uris == first.s3_uris
    assert [o.reused for o in second.outputs] == [True, True]
    assert [o.sha256 for o in second.outputs] == [o.sha256 for o in first.outputs]
    assert [o.size_bytes for o in second.outputs] == [len(PNG), len(JPEG)]
    assert second.to_xcom()["fetched_bytes"] == 0
    assert [p["Key"] for p in puts] == [f"{RUN_DIR}/{REQUEST_ID}.manifest.json"]  # only the manifest again
    assert len(keys_under(moto_s3.client(), s3_bucket)) == 3


def test_partial_failure_then_rerun_finishes_only_the_missing_output(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    good = files.serve("/good.png")
    flaky = files.serve("/flaky.png", Route(status=503, body=b"busy", content_type="text/plain"))

    with pytest.raises(OutputsNotArchivedError) as info:
        archive(hook, [good, flaky], s3_bucket)

    error = info.value
    assert [m.index for m in error.missing] == [1]
    assert error.missing[0].transient
    assert error.retryable
    assert f"output 1 ({flaky}): file host answered HTTP 503" in str(error)
    assert "output 0" not in str(error)
    assert [a.index for a in error.archived] == [0]
    assert files.requests["/flaky.png"] == 2  # bounded retries: max_attempts=2
    client = moto_s3.client()
    assert keys_under(client, s3_bucket) == [f"{RUN_DIR}/{REQUEST_ID}_0.png"]  # no manifest yet

    files.routes["/flaky.png"] = Route(body=JPEG, content_type="image/jpeg")
    files.requests.clear()
    result = archive(hook, [good, flaky], s3_bucket)

    assert files.requests["/flaky.png"] == 1
    assert result.to_xcom()["fetched_bytes"] == len(JPEG)  # output 0's body was not read again
    assert [o.reused for o in result.outputs] == [True, False]
    assert keys_under(client, s3_bucket) == [
        f"{RUN_DIR}/{REQUEST_ID}.manifest.json",
        f"{RUN_DIR}/{REQUEST_ID}_0.png",
        f"{RUN_DIR}/{REQUEST_ID}_1.jpg",
    ]


def test_object_without_checksum_metadata_is_written_again(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    # What a crash between CompleteMultipartUpload and the metadata copy leaves behind.
    key = f"{RUN_DIR}/{REQUEST_ID}_0.png"
    moto_s3.client().put_object(
        Bucket=s3_bucket,
        Key=key,
        Body=b"half",
        Metadata={"nanobanana-request-id": REQUEST_ID, "nanobanana-output-index": "0"},
    )
    result = archive(hook, [files.serve("/a.png")], s3_bucket)
    assert files.requests["/a.png"] == 1
    assert result.outputs[0].reused is False
    assert moto_s3.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == PNG


def test_foreign_object_at_the_key_is_not_overwritten_unless_asked(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    template = "{dag_id}/latest_{index}.{ext}"
    moto_s3.client().put_object(Bucket=s3_bucket, Key="archive/edits/latest_0.png", Body=b"someone else's")
    url = files.serve("/a.png")

    with pytest.raises(OutputsNotArchivedError, match="already holds an object not written by this provider"):
        archive(hook, [url], s3_bucket, key_template=template)
    result = archive(hook, [url], s3_bucket, key_template=template, overwrite=True)
    assert result.s3_uris == [f"s3://{s3_bucket}/archive/edits/latest_0.png"]


# --- Archive: refusals and failures --------------------------------------------------------------


def test_disallowed_output_hosts_are_refused_before_any_request(
    moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    hook = make_hook(moto_s3.endpoint_url, allowed_output_hosts=["*.runcomfy.net", "127.0.0.1"])
    allowed = files.serve("/a.png")
    elsewhere = files.url("/a.png", host="localhost") + "?X-Amz-Signature=topsecret"

    with pytest.raises(OutputURLRefusedError) as info:
        archive(hook, [allowed, elsewhere, "file:///etc/passwd"], s3_bucket)

    message = str(info.value)
    assert "output 1 (http://localhost:" in message
    assert "'localhost', which is not in allowed_output_hosts" in message
    assert "output 2 (file:///etc/passwd) has scheme 'file'" in message
    assert "topsecret" not in message
    assert files.total_requests() == 0
    assert keys_under(moto_s3.client(), s3_bucket) == []


def test_no_allowed_hosts_means_nothing_is_fetched(moto_s3: Any, s3_bucket: str, files: FileServer) -> None:
    hook = make_hook(moto_s3.endpoint_url, allowed_output_hosts=[])
    with pytest.raises(OutputURLRefusedError, match="none configured"):
        archive(hook, [files.serve("/a.png")], s3_bucket)
    assert files.total_requests() == 0


def test_redirects_are_followed_only_to_allowed_hosts(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    files.serve("/target.png")
    inside = files.serve("/inside", Route(status=302, body=b"", headers={"Location": "/target.png"}))
    outside = files.serve(
        "/outside",
        Route(status=302, body=b"", headers={"Location": files.url("/target.png", host="localhost")}),
    )

    with pytest.raises(OutputsNotArchivedError) as info:
        archive(hook, [inside, outside], s3_bucket)

    assert [m.index for m in info.value.missing] == [1]
    assert "redirected to http://localhost:" in str(info.value)
    assert "not in allowed_output_hosts" in str(info.value)
    assert files.requests["/target.png"] == 1  # only via the allowed redirect
    assert files.requests["/outside"] == 1  # refused redirects are not retried


@pytest.mark.parametrize("status", [403, 404, 410])
def test_expired_output_url_fails_at_once_with_a_clear_message(
    hook: S3MediaHook, s3_bucket: str, files: FileServer, status: int
) -> None:
    url = files.serve(
        "/old.png", Route(status=status, body=b"<Error>AccessDenied</Error>", content_type="application/xml")
    )
    with pytest.raises(OutputsNotArchivedError) as info:
        archive(hook, [url], s3_bucket)
    assert (
        f"output 0 ({url}): the output URL expired before archiving (file host answered HTTP {status})"
        in str(info.value)
    )
    assert not info.value.retryable
    assert files.requests["/old.png"] == 1


def test_html_served_as_an_image_is_not_archived(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    url = files.serve("/x.png", Route(body=b"<!DOCTYPE html><p>oops</p>", content_type="image/png"))
    with pytest.raises(OutputsNotArchivedError, match="not an image"):
        archive(hook, [url], s3_bucket)
    assert keys_under(moto_s3.client(), s3_bucket) == []


def test_key_escape_attempts_stay_under_the_prefix(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    hostile = {"dag_id": "/abs/dag", "run_id": "../../etc", "task_id": "a\\b\x00c", "map_index": ".."}
    result = archive(hook, [files.serve("/a.png")], s3_bucket, fields=hostile)

    key = result.outputs[0].key
    assert key == f"archive/_abs_dag/.._.._etc/a_b_c/__/{REQUEST_ID}_0.png"
    assert (
        result.manifest_uri
        == f"s3://{s3_bucket}/archive/_abs_dag/.._.._etc/a_b_c/__/{REQUEST_ID}.manifest.json"
    )
    assert all(k.startswith("archive/") for k in keys_under(moto_s3.client(), s3_bucket))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_template": "../{index}.{ext}"}, "key_template: .*'..' path segment"),
        ({"key_template": "/{index}.{ext}"}, "key_template: .*starts with '/'"),
        ({"manifest_template": "../m.json"}, "manifest_template"),
        ({"key_template": "{dag_id}/{request_id}.{ext}"}, "must contain \\{index\\}"),
        ({"key_template": "{nope}/{index}.{ext}"}, "unknown field \\{nope\\}"),
        ({"fields": {**FIELDS, "index": 3}}, "filled in by the archiver"),
        ({"request_id": "../x"}, "request_id must be"),
        ({"dest_uri": "https://bucket/prefix"}, "dest_uri: .*not an s3:// URI"),
    ],
)
def test_bad_archive_settings_fail_before_any_fetch(
    hook: S3MediaHook, s3_bucket: str, files: FileServer, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEditRequestError, match=message):
        archive(hook, [files.serve("/a.png"), files.serve("/b.png")], s3_bucket, **kwargs)
    assert files.total_requests() == 0


def test_no_outputs_is_an_archive_error(hook: S3MediaHook, s3_bucket: str) -> None:
    with pytest.raises(ArchiveError, match="no output URLs"):
        archive(hook, [], s3_bucket)


def test_s3_going_down_mid_archive_lists_exactly_the_missing_outputs(
    moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    from moto.server import ThreadedMotoServer

    dedicated = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    dedicated.start()
    host, port = dedicated.get_host_and_port()
    hook = make_hook(f"http://{host}:{port}", s3_max_attempts=1)
    first = files.serve("/first.png")
    # S3 dies the moment the second output is requested: after its existence check, before its upload.
    second = files.serve("/second.png", Route(before=dedicated.stop))
    try:
        with pytest.raises(OutputsNotArchivedError) as info:
            archive(hook, [first, second], s3_bucket)
    finally:
        dedicated.stop()

    error = info.value
    assert [m.index for m in error.missing] == [1]
    assert f"output 1 ({second}): S3 unreachable: EndpointConnectionError" in str(error)
    assert "output 0 (" not in str(error)
    assert error.retryable
    assert [a.index for a in error.archived] == [0]
    # moto keeps state per process, so the session server shows what the dedicated one stored.
    assert keys_under(moto_s3.client(), s3_bucket) == [f"{RUN_DIR}/{REQUEST_ID}_0.png"]


def test_manifest_failure_after_all_images_is_reported(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    def refuse_manifest(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith(".manifest.json"):
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3")

    hook.get_client().meta.events.register("provide-client-params.s3.PutObject", refuse_manifest)
    with pytest.raises(ArchiveError, match=r"all 1 outputs of request .* are archived, but the manifest"):
        archive(hook, [files.serve("/a.png")], s3_bucket)
    assert keys_under(moto_s3.client(), s3_bucket) == [f"{RUN_DIR}/{REQUEST_ID}_0.png"]


# --- Memory bound ----------------------------------------------------------------------------------

_ARCHIVE_IN_CHILD = textwrap.dedent(
    """
    import json, sys, threading
    import psutil
    from airflow_provider_nanobanana.media import S3MediaHook

    endpoint, bucket, url = sys.argv[1:4]
    hook = S3MediaHook(
        None,
        endpoint_url=endpoint,
        region_name="us-east-1",
        allowed_output_hosts=["127.0.0.1"],
        max_attempts=1,
    )
    hook.get_client().list_objects_v2(Bucket=bucket)  # warm up the client before the baseline
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        global peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = hook.archive_outputs([url], request_id="big", dest_uri=f"s3://{bucket}/big/",
                                      fields={"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1})
    finally:
        done.set()
        sampler.join()
    print(json.dumps({"growth": peak - baseline, "output": result.outputs[0].to_dict()}))
    """
)


@pytest.mark.slow
def test_large_output_is_streamed_with_bounded_memory(
    moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    """300 MB through the hook in a child process, so moto (in this process) does not count.

    moto assembles a completed multipart upload in memory; the hook's own footprint is what is bounded.
    """
    block = os.urandom(MiB)
    total = 300 * MiB
    url = files.serve("/huge.png", Route(body=lambda: big_body(total, block), length=total))
    expected = hashlib.sha256()
    for chunk in big_body(total, block):
        expected.update(chunk)

    child = subprocess.run(
        [sys.executable, "-c", _ARCHIVE_IN_CHILD, moto_s3.endpoint_url, s3_bucket, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["output"]["size_bytes"] == total
    assert report["output"]["sha256"] == expected.hexdigest()
    assert report["growth"] < 100 * MiB, f"peak RSS grew by {report['growth'] / MiB:.0f} MiB"
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=report["output"]["key"], ChecksumMode="ENABLED")
    assert head["ContentLength"] == total
    assert same_checksum(head["ChecksumSHA256"], report["output"]["checksum_sha256"])
    assert files.requests["/huge.png"] == 1


def test_the_existence_check_follows_every_page_of_the_listing() -> None:
    """A prefix shared with more than a page of other objects: a candidate on page two is still found."""
    from airflow_provider_nanobanana.media.archiver import _existing_objects

    key = f"{RUN_DIR}/{REQUEST_ID}_0.png"
    pages = {
        "": {"Contents": [{"Key": f"{RUN_DIR}/other"}], "IsTruncated": True, "NextContinuationToken": "t2"},
        "t2": {"Contents": [{"Key": key}], "IsTruncated": False},
    }
    calls: list[str] = []

    class Client:
        def list_objects_v2(self, *, Bucket: str, Prefix: str, ContinuationToken: str = "") -> Any:
            calls.append(ContinuationToken)
            return pages[ContinuationToken]

        def head_object(self, *, Bucket: str, Key: str, ChecksumMode: str) -> Any:
            return {"Key": Key}

    found = _existing_objects(Client(), "b", {key})  # type: ignore[arg-type]

    assert calls == ["", "t2"]
    assert set(found.heads) == {key}
