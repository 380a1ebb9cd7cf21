"""S3 faults on the archive side: the job is paid once, and the task says exactly what is missing."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.media import OutputsNotArchivedError, S3MediaHook
from airflow_provider_nanobanana.media.archiver import OutputArchiver
from airflow_provider_nanobanana.models import EditRequest
from tests.reliability.conftest import edit_operator, new_context, run_deferred

pytestmark = pytest.mark.usefixtures("airflow_connections")


def test_missing_output_bucket_fails_naming_it_and_a_retry_archives(
    emulator, moto_s3, input_image, s3_bucket, context
):
    missing = f"{s3_bucket}-gone"
    with pytest.raises(OutputsNotArchivedError, match="NoSuchBucket") as info:
        run_deferred(edit_operator(input_image, s3_bucket, output_s3_uri=f"s3://{missing}/out/"), context)
    assert "2 of 2 outputs" in str(info.value)
    moto_s3.client().create_bucket(Bucket=missing)
    retry = new_context(store=context["task_state_store"])
    result = run_deferred(edit_operator(input_image, s3_bucket, output_s3_uri=f"s3://{missing}/out/"), retry)
    assert len(result["archived"]) == 2
    assert emulator.counters()["jobs_created"] == 1


def test_missing_input_bucket_is_refused_before_submitting(emulator, context):
    with pytest.raises(InvalidEditRequestError, match=r"image_urls\[0\].*does not exist|access denied"):
        edit_operator("s3://no-such-input-bucket/cat.png", None).execute(context)
    assert emulator.counters()["submits"] == 0


def deny(operation: str) -> Any:
    """moto's server does not enforce bucket policies without IAM auth emulation, so the 403 that S3
    returns for a denied call is injected at botocore's before-call hook: the provider sees exactly
    the ClientError a real AccessDenied raises."""

    def handler(**_: Any) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(status_code=403, headers={}), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }

    return operation, handler


def test_access_denied_on_output_fails_clearly_without_retrying_forever(
    emulator, moto_s3, input_image, s3_bucket, context, monkeypatch
):
    task = edit_operator(input_image, s3_bucket)
    real_client = S3MediaHook.get_client

    def client_denying_puts(self: S3MediaHook) -> Any:
        client = real_client(self)
        operation, handler = deny("PutObject")
        client.meta.events.register(f"before-call.s3.{operation}", handler, unique_id="deny-put")
        return client

    monkeypatch.setattr(S3MediaHook, "get_client", client_denying_puts)
    with pytest.raises(OutputsNotArchivedError, match="AccessDenied") as info:
        run_deferred(task, context)
    assert not info.value.retryable
    assert emulator.counters()["jobs_created"] == 1


def test_access_denied_on_input_is_refused_before_submitting(emulator, input_image, context, monkeypatch):
    real_client = S3MediaHook.get_client

    def client_denying_heads(self: S3MediaHook) -> Any:
        client = real_client(self)
        operation, handler = deny("HeadObject")
        client.meta.events.register(f"before-call.s3.{operation}", handler, unique_id="deny-head")
        return client

    monkeypatch.setattr(S3MediaHook, "get_client", client_denying_heads)
    with pytest.raises(InvalidEditRequestError, match="access denied"):
        edit_operator(input_image, None).execute(context)
    assert emulator.counters()["submits"] == 0


class CutOnce(httpx.BaseTransport):
    """The file host's connection breaks after ``after_bytes`` of the first download."""

    def __init__(self, after_bytes: int) -> None:
        self._inner = httpx.HTTPTransport()
        self._after = after_bytes
        self.cuts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if self.cuts:
            return response
        self.cuts += 1
        stream, limit = response.stream, self._after

        class Broken(httpx.SyncByteStream):
            def __iter__(self) -> Any:
                sent = 0
                for chunk in stream:  # type: ignore[union-attr]
                    yield chunk
                    sent += len(chunk)
                    if sent >= limit:
                        raise httpx.ReadError("connection reset by peer")

            def close(self) -> None:
                stream.close()  # type: ignore[union-attr]

        return httpx.Response(response.status_code, headers=response.headers, stream=Broken())


@pytest.mark.parametrize("retries", [1, 2], ids=["fails", "retried"])
def test_interrupted_multipart_upload_leaves_no_orphaned_parts(
    emulator, moto_s3, s3_bucket, presigned_input, monkeypatch, retries
):
    emulator.configure(output_pad_bytes=12 * 1024 * 1024, queue_s=0.0, run_s=0.0)
    api = RunComfyHook("runcomfy_default")
    rid = api.submit(
        EditRequest.build(prompt="big", image_urls=[presigned_input], allow_insecure_inputs=True)
    ).request_id
    while not api.get_status(rid).status.is_terminal:
        time.sleep(0.05)  # polling a state the emulator reaches by itself within ~0.1 s
    urls = api.get_result(rid).images
    cut = CutOnce(after_bytes=7 * 1024 * 1024)  # one 5 MiB part is uploaded, then the stream breaks
    media = S3MediaHook(
        None,
        endpoint_url=moto_s3.endpoint_url,
        region_name="us-east-1",
        part_size_bytes=5 * 1024 * 1024,
        max_attempts=retries,
        retry_base_delay_s=0.01,
        allowed_output_hosts=["127.0.0.1"],
    )
    monkeypatch.setattr(
        OutputArchiver, "http_client", lambda _: httpx.Client(transport=cut, follow_redirects=False)
    )
    fields: dict[str, str | int] = {"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}
    if retries == 1:
        with pytest.raises(OutputsNotArchivedError, match="ReadError") as info:
            media.archive_outputs(urls, request_id=rid, dest_uri=f"s3://{s3_bucket}/out/", fields=fields)
        assert info.value.retryable
    else:
        result = media.archive_outputs(urls, request_id=rid, dest_uri=f"s3://{s3_bucket}/out/", fields=fields)
        assert result.outputs[0].size_bytes >= 12 * 1024 * 1024
    assert cut.cuts == 1
    assert moto_s3.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
