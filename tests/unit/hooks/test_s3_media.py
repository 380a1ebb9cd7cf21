"""S3MediaHook against a real S3 HTTP API (moto server on loopback) and a local file server for outputs.

The file server stands in for RunComfy's CDN: it can lie about Content-Type, answer 403/503, redirect,
drop the connection mid-body, or stream hundreds of megabytes from a generator, and it counts requests
so tests can prove what was (not) fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import pytest
from PIL import Image

from airflow_provider_nanobanana.exceptions import ArchiveError, InvalidEditRequestError
from airflow_provider_nanobanana.hooks.s3_media import (
    ArchiveResult,
    InvalidInputImageError,
    OutputsNotArchivedError,
    OutputURLRefusedError,
    S3MediaHook,
    parse_s3_uri,
)
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, MAX_INPUT_IMAGE_BYTES

MiB = 1024 * 1024
REQUEST_ID = "req_0123-abc"
FIELDS = {
    "dag_id": "edits",
    "run_id": "manual__2026-01-01T00:00:00+00:00",
    "task_id": "edit",
    "map_index": -1,
}
RUN_DIR = "archive/edits/manual__2026-01-01T00_00_00_00_00/edit/-1"


def image_bytes(fmt: str, size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = image_bytes("PNG")
JPEG = image_bytes("JPEG")
WEBP = image_bytes("WEBP")


def big_body(total: int, block: bytes) -> Iterator[bytes]:
    """A PNG signature followed by ``block`` repeated up to ``total`` bytes, generated lazily."""
    yield PNG[:16]
    sent = 16
    while sent < total:
        piece = block[: total - sent]
        yield piece
        sent += len(piece)


# --- Local file server ---------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes | Callable[[], Iterable[bytes]] = PNG
    #: Content-Length to announce; defaults to len(body) for bytes bodies.
    length: int | None = None
    content_type: str | None = "image/png"
    headers: dict[str, str] = field(default_factory=dict)
    #: Close the socket after this many body bytes (the announced length is never reached).
    drop_after: int | None = None
    #: Runs when the request arrives, before anything is answered.
    before: Callable[[], None] | None = None


class FileServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self.request_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests[path] += 1
                    server.request_headers.append(dict(self.headers))
                route = server.routes.get(path, Route(status=404, body=b"missing", content_type="text/plain"))
                if route.before:
                    route.before()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(route)

            def _answer(self, route: Route) -> None:
                body = route.body if isinstance(route.body, bytes) else None
                self.send_response(route.status)
                if route.content_type:
                    self.send_header("Content-Type", route.content_type)
                length = route.length if route.length is not None else len(body or b"")
                self.send_header("Content-Length", str(length))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                chunks: Iterable[bytes] = [body] if body is not None else route.body()  # type: ignore[operator]
                sent = 0
                for chunk in chunks:
                    if route.drop_after is not None and sent + len(chunk) > route.drop_after:
                        self.wfile.write(chunk[: route.drop_after - sent])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(self, path: str, route: Route | None = None) -> str:
        self.routes[path] = route or Route()
        return self.url(path)

    def total_requests(self) -> int:
        return sum(self.requests.values())

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


def make_hook(endpoint_url: str, **overrides: Any) -> S3MediaHook:
    settings: dict[str, Any] = {
        "endpoint_url": endpoint_url,
        "region_name": "us-east-1",
        "allowed_output_hosts": ["127.0.0.1"],
        "max_attempts": 2,
        "retry_base_delay_s": 0.0,
        "s3_max_attempts": 2,
        "http_timeout_s": 10.0,
    }
    settings.update(overrides)
    return S3MediaHook(None, **settings)


@pytest.fixture
def hook(moto_s3: Any) -> S3MediaHook:
    return make_hook(moto_s3.endpoint_url)


def archive(hook: S3MediaHook, urls: list[str], bucket: str, **kwargs: Any) -> ArchiveResult:
    options: dict[str, Any] = {
        "request_id": REQUEST_ID,
        "dest_uri": f"s3://{bucket}/archive/",
        "fields": FIELDS,
    }
    options.update(kwargs)
    return hook.archive_outputs(urls, **options)


def keys_under(client: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def count_calls(hook: S3MediaHook, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` call the hook's client makes."""
    calls: list[dict[str, Any]] = []
    hook.get_client().meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: calls.append(dict(params))
    )
    return calls


# --- Inputs --------------------------------------------------------------------------------------


def test_s3_input_becomes_a_sigv4_presigned_url_that_fetches_the_bytes(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str
) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="in/cat.png", Body=PNG, ContentType="image/png")

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/in/cat.png"])

    assert url.startswith(f"{moto_s3.endpoint_url}/{s3_bucket}/in/cat.png?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "X-Amz-Expires=21600" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == PNG


def test_http_inputs_pass_through_unchanged(hook: S3MediaHook) -> None:
    urls = ["https://example.com/a.png?X-Amz-Signature=x", "http://127.0.0.1:9/b.jpg"]
    assert hook.resolve_inputs(urls) == urls


def test_missing_s3_object_names_the_field_and_uri(hook: S3MediaHook, moto_s3: Any, s3_bucket: str) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="ok.png", Body=PNG, ContentType="image/png")
    with pytest.raises(InvalidEditRequestError) as info:
        hook.resolve_inputs([f"s3://{s3_bucket}/ok.png", f"s3://{s3_bucket}/nope.png"])
    assert f"image_urls[1]: s3://{s3_bucket}/nope.png does not exist" in str(info.value)
    assert "image_urls[0]" not in str(info.value)


def test_wrong_content_type_is_named(hook: S3MediaHook, moto_s3: Any, s3_bucket: str) -> None:
    moto_s3.client().put_object(
        Bucket=s3_bucket, Key="doc.png", Body=PNG, ContentType="application/octet-stream"
    )
    with pytest.raises(
        InvalidEditRequestError,
        match=r"image_urls\[0\]: .*doc.png has Content-Type 'application/octet-stream'",
    ):
        hook.resolve_inputs([f"s3://{s3_bucket}/doc.png"])


def test_oversized_object_reports_both_sizes(moto_s3: Any, s3_bucket: str) -> None:
    assert S3MediaHook(None).max_input_bytes == MAX_INPUT_IMAGE_BYTES
    hook = make_hook(moto_s3.endpoint_url, max_input_bytes=10)
    moto_s3.client().put_object(Bucket=s3_bucket, Key="big.png", Body=PNG, ContentType="image/png")
    with pytest.raises(InvalidEditRequestError) as info:
        hook.resolve_inputs([f"s3://{s3_bucket}/big.png"])
    assert f"image_urls[0]: s3://{s3_bucket}/big.png is {len(PNG):,} bytes" in str(info.value)
    assert "at most 10 bytes" in str(info.value)


def test_folder_and_unsupported_schemes_are_refused(hook: S3MediaHook, s3_bucket: str) -> None:
    with pytest.raises(InvalidInputImageError) as info:
        hook.resolve_inputs(
            [f"s3://{s3_bucket}/folder/", "gs://bucket/key.png", "data:image/png;base64,AAAA", ""]
        )
    problems = info.value.problems
    assert problems[0].startswith("image_urls[0]: ")
    assert "names a bucket or folder" in problems[0]
    assert problems[1].startswith("image_urls[1]: ")
    assert "not supported" in problems[1]
    assert problems[2].startswith("image_urls[2]: ")
    assert "not supported" in problems[2]
    assert problems[3] == "image_urls[3]: must be a non-empty string"


def test_every_input_is_checked_before_anything_is_staged(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "local.png"
    local.write_bytes(PNG)
    with pytest.raises(InvalidInputImageError, match=r"image_urls\[1\]: .* does not exist"):
        hook.resolve_inputs(
            [str(local), f"s3://{s3_bucket}/missing.png"], staging_uri=f"s3://{s3_bucket}/staging/"
        )
    assert keys_under(moto_s3.client(), s3_bucket) == []


def test_local_file_is_staged_once_under_its_content_hash(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "photo.bin"  # the extension is wrong on purpose: the bytes decide the type
    local.write_bytes(PNG)
    puts = count_calls(hook, "PutObject")
    staging = f"s3://{s3_bucket}/staging"

    [first] = hook.resolve_inputs([str(local)], staging_uri=staging)
    [second] = hook.resolve_inputs([local.as_uri()], staging_uri=staging)

    expected_key = f"staging/{hashlib.sha256(PNG).hexdigest()}.png"
    assert keys_under(moto_s3.client(), s3_bucket) == [expected_key]
    assert len(puts) == 1
    assert first.split("?")[0] == second.split("?")[0] == f"{moto_s3.endpoint_url}/{s3_bucket}/{expected_key}"
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=expected_key)
    assert head["ContentType"] == "image/png"
    assert httpx.get(second).content == PNG


def test_local_file_problems(hook: S3MediaHook, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    image = tmp_path / "ok.png"
    image.write_bytes(PNG)
    with pytest.raises(InvalidInputImageError) as info:
        hook.resolve_inputs([str(tmp_path / "absent.png"), str(text), str(tmp_path), str(image)])
    problems = info.value.problems
    assert "does not exist" in problems[0]
    assert "not a recognised image" in problems[1]
    assert "not a regular file" in problems[2]
    assert problems[3].startswith("image_urls[3]: ")
    assert "set staging_uri" in problems[3]


def test_presigned_urls_stay_out_of_logs_and_errors_and_are_masked(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    # Our own log lines at every level; botocore's DEBUG output prints signatures of everything it signs.
    caplog.set_level(logging.DEBUG, logger="airflow_provider_nanobanana")

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])

    signature = dict(httpx.URL(url).params)["X-Amz-Signature"]
    assert len(signature) == 64
    assert any(r.name.startswith("airflow_provider_nanobanana") for r in caplog.records)
    assert signature not in caplog.text
    from airflow.sdk._shared.secrets_masker import redact

    assert signature not in str(redact(f"user code logged {url}"))


def test_amazon_connection_supplies_credentials_endpoint_and_region(
    moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NB_MOTO", moto_s3.aws_conn_json())
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    hook = S3MediaHook("nb_moto", presign_expiry_s=600)

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])

    assert hook.get_client() is hook.get_client()
    assert url.startswith(moto_s3.endpoint_url)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    assert "X-Amz-Expires=600" in url
    assert httpx.get(url).content == PNG


def test_a_missing_connection_falls_back_to_boto3_defaults(moto_s3: Any, s3_bucket: str) -> None:
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    hook = S3MediaHook("nb_not_defined", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")
    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])
    assert httpx.get(url).content == PNG


def test_without_the_amazon_provider_boto3_defaults_are_used(
    moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.amazon.aws.hooks.s3", None)  # import now fails
    moto_s3.client().put_object(Bucket=s3_bucket, Key="a.png", Body=PNG, ContentType="image/png")
    hook = S3MediaHook("aws_default", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1")

    [url] = hook.resolve_inputs([f"s3://{s3_bucket}/a.png"])

    assert "apache-airflow-providers-amazon is not installed" in caplog.text
    assert httpx.get(url).content == PNG


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"presign_expiry_s": 8 * 24 * 3600}, "presign_expiry_s"),
        ({"part_size_bytes": MiB}, "part_size_bytes"),
        ({"max_output_bytes": 6 * 1024 * MiB}, "max_output_bytes"),
        ({"allowed_output_hosts": ["*"]}, "allowed_output_hosts"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S3MediaHook(None, **kwargs)


def test_parse_s3_uri_is_exported() -> None:
    assert parse_s3_uri("s3://bucket/k/e.y") == ("bucket", "k/e.y")


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


def test_rerun_is_idempotent_and_fetches_nothing(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    urls = [files.serve("/a.png"), files.serve("/b.jpg", Route(body=JPEG, content_type="image/jpeg"))]
    first = archive(hook, urls, s3_bucket)
    files.requests.clear()
    puts = count_calls(hook, "PutObject")

    second = archive(hook, urls, s3_bucket)

    assert files.total_requests() == 0
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

    assert files.requests == Counter({"/flaky.png": 1})
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


def test_multipart_output_gets_checksum_metadata_and_leaves_no_uploads(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    block = os.urandom(MiB)
    total = 20 * MiB  # more than two 8 MiB parts
    url = files.serve("/big.png", Route(body=lambda: big_body(total, block), length=total, content_type=None))
    creates = count_calls(hook, "CreateMultipartUpload")

    result = archive(hook, [url], s3_bucket)

    expected = hashlib.sha256(b"".join(big_body(total, block))).hexdigest()
    client = moto_s3.client()
    head = client.head_object(Bucket=s3_bucket, Key=result.outputs[0].key)
    assert len(creates) == 1
    assert head["ContentLength"] == total
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["nanobanana-sha256"] == expected == result.outputs[0].sha256
    assert head["Metadata"]["nanobanana-request-id"] == REQUEST_ID
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)


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


def test_interrupted_download_aborts_the_multipart_upload(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    block = os.urandom(MiB)
    total = 30 * MiB
    url = files.serve(
        "/cut.png",
        Route(body=lambda: big_body(total, block), length=total, drop_after=12 * MiB, content_type=None),
    )
    creates = count_calls(hook, "CreateMultipartUpload")
    aborts = count_calls(hook, "AbortMultipartUpload")

    with pytest.raises(OutputsNotArchivedError) as info:
        archive(hook, [url], s3_bucket)

    assert "output 0" in str(info.value)
    assert "download failed: RemoteProtocolError" in str(info.value)
    assert info.value.retryable
    assert files.requests["/cut.png"] == 2
    assert len(creates) == len(aborts) == 2  # one multipart upload per attempt, each aborted
    client = moto_s3.client()
    assert "Uploads" not in client.list_multipart_uploads(Bucket=s3_bucket)
    assert keys_under(client, s3_bucket) == []


def test_a_rerun_aborts_uploads_an_unreachable_s3_left_behind(
    hook: S3MediaHook, moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    """When S3 was down mid-upload the abort could not be sent; the rerun cleans up its own key."""
    client = moto_s3.client()
    key = f"{RUN_DIR}/{REQUEST_ID}_0.png"
    client.create_multipart_upload(Bucket=s3_bucket, Key=key)  # the interrupted run's leftover
    client.create_multipart_upload(Bucket=s3_bucket, Key=f"{key}.other")  # someone else's: kept
    total = 20 * MiB
    url = files.serve("/big.png", Route(body=lambda: big_body(total, os.urandom(MiB)), length=total))
    archive(hook, [url], s3_bucket)
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == [f"{key}.other"]


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
    from airflow_provider_nanobanana.hooks.s3_media import S3MediaHook

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
    head = moto_s3.client().head_object(Bucket=s3_bucket, Key=report["output"]["key"])
    assert head["ContentLength"] == total
    assert head["Metadata"]["nanobanana-sha256"] == expected.hexdigest()
    assert files.requests["/huge.png"] == 1
