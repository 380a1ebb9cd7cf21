"""Secrets stay secret; TLS is verified; outputs come only from allowed hosts; keys stay in their prefix."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError, RunComfyJobFailedError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook, RunComfySettings, shared_async_client
from airflow_provider_nanobanana.media import OutputsNotArchivedError, OutputURLRefusedError, S3MediaHook
from airflow_provider_nanobanana.media.inputs import InputResolver
from airflow_provider_nanobanana.models import EditRequest
from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from tests.reliability.conftest import edit_operator, emulator_signature, new_context, run_deferred

pytestmark = pytest.mark.usefixtures("airflow_connections")


def without_httpx(text: str) -> str:
    """Task-log text minus httpx's own request lines (covered, and failing, in a separate test)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("httpx "))


def find_leaks(secrets: list[str], **haystacks: str) -> dict[str, list[str]]:
    return {
        name: [s for s in secrets if s in text]
        for name, text in haystacks.items()
        if any(s in text for s in secrets)
    }


def test_token_and_signatures_never_leak_from_a_full_run(
    emulator, moto_s3, input_image, s3_bucket, context, monkeypatch, all_logs
):
    presigned: list[str] = []
    real_presign = InputResolver.presign

    def spy(self: InputResolver, bucket: str, key: str) -> str:
        url = real_presign(self, bucket, key)
        presigned.append(url)
        return url

    monkeypatch.setattr(InputResolver, "presign", spy)
    task = edit_operator(input_image, s3_bucket)
    seen: list[Any] = []
    result = run_deferred(task, context, seen)
    (path, trigger_kwargs), event = seen

    output_urls = RunComfyHook("runcomfy_default").get_result(result["request_id"]).images
    secrets = [emulator.token]
    secrets += [parse_qs(urlsplit(u).query)["X-Amz-Signature"][0] for u in presigned]
    secrets += [emulator_signature(u) for u in output_urls]
    assert len(secrets) == 4
    assert all(len(s) >= 12 for s in secrets)

    s3 = moto_s3.client()
    bucket, _, key = result["manifest"][5:].partition("/")
    manifest = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    metadata = [
        s3.head_object(Bucket=bucket, Key=u[5:].partition("/")[2])["Metadata"] for u in result["archived"]
    ]
    signed_request = EditRequest.build(prompt="p", image_urls=presigned, allow_insecure_inputs=True)
    leaks = find_leaks(
        secrets,
        logs=without_httpx(all_logs.text),
        xcom=json.dumps(context["ti"].xcom),
        return_value=json.dumps(result),
        trigger_row=json.dumps([path, trigger_kwargs]),
        trigger_event=json.dumps(event),
        rendered_fields=json.dumps({f: getattr(task, f) for f in task.template_fields}),
        reprs=" ".join(
            [repr(task), repr(task.hook), repr(task.hook.settings), repr(signed_request), str(signed_request)]
        ),
        manifest=manifest,
        object_metadata=json.dumps(metadata),
    )
    assert leaks == {}


def test_output_url_signatures_do_not_reach_task_logs_via_httpx(
    emulator, input_image, s3_bucket, context, all_logs
):
    result = run_deferred(edit_operator(input_image, s3_bucket), context)
    output_urls = RunComfyHook("runcomfy_default").get_result(result["request_id"]).images
    assert find_leaks([emulator_signature(u) for u in output_urls], logs=all_logs.text) == {}


def test_secrets_do_not_leak_from_failure_messages(emulator, input_image, s3_bucket, context, all_logs):
    emulator.set_faults(expire_outputs=True)
    with pytest.raises(OutputsNotArchivedError) as info:
        run_deferred(edit_operator(input_image, s3_bucket), context)
    output_urls = RunComfyHook("runcomfy_default").get_result(info.value.request_id).images
    secrets = [emulator.token, *(emulator_signature(u) for u in output_urls)]
    leaks = find_leaks(secrets, exception=f"{info.value} {info.value!r}", logs=without_httpx(all_logs.text))
    assert leaks == {}


FAKE_API = "https://api.fake-runcomfy.test"
SIGNED_INPUT = (
    "https://bucket.s3.amazonaws.com/cat.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=5ec12e7519a7ure0f5ign4ture0000000000000000000000000000000000000"
)
SIGNATURE = "5ec12e7519a7ure0f5ign4ture0000000000000000000000000000000000000"


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {
        "conn_type": "runcomfy",
        "host": FAKE_API,
        "password": "tok-fake-0123456789",
        "extra": {"retry_max_wait_s": 0.01},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_FAKE", json.dumps(conn))
    return "runcomfy_fake"


def test_server_echo_of_a_signed_input_url_is_redacted_from_events(fake_api, context):
    rid = "req-echo-1"
    with respx.mock(base_url=FAKE_API, assert_all_called=False) as api:
        api.post("/v1/models/google/nano-banana-2/edit").respond(json={"request_id": rid})
        running = httpx.Response(200, json={"request_id": rid, "status": "in_progress"})
        failed = httpx.Response(200, json={"request_id": rid, "status": "failed"})
        api.get(f"/v1/requests/{rid}/status").mock(side_effect=[running, *[failed] * 5])
        api.get(f"/v1/requests/{rid}/result").respond(
            json={"request_id": rid, "status": "failed", "error": {"message": f"cannot fetch {SIGNED_INPUT}"}}
        )
        seen: list[Any] = []
        with pytest.raises(RunComfyJobFailedError) as info:
            run_deferred(edit_operator(SIGNED_INPUT, None, runcomfy_conn_id=fake_api), context, seen)
    assert "cannot fetch" in str(info.value)
    event = seen[1]
    assert SIGNATURE not in json.dumps(event)  # stored in the trigger row of the metadata DB
    assert SIGNATURE not in str(info.value)


def test_server_echo_of_a_signed_input_url_is_redacted_from_submit_errors(fake_api, context):
    with respx.mock(base_url=FAKE_API, assert_all_called=False) as api:
        api.post("/v1/models/google/nano-banana-2/edit").respond(
            422, json={"error_code": 422001, "error_message": f"image_urls.0: cannot fetch {SIGNED_INPUT}"}
        )
        with pytest.raises(Exception) as info:  # noqa: PT011 - any error type; the text is what matters
            edit_operator(SIGNED_INPUT, None, runcomfy_conn_id=fake_api).execute(context)
    assert "HTTP 422" in str(info.value)
    assert SIGNATURE not in f"{info.value} {info.value!r}"


# -- TLS -------------------------------------------------------------------------------------------


def _verify_mode(client: httpx.Client | httpx.AsyncClient) -> ssl.VerifyMode:
    return client._transport._pool._ssl_context.verify_mode  # type: ignore[union-attr]


def test_tls_verification_is_on_by_default_for_the_api_and_the_file_host(fake_api):
    hook = RunComfyHook(fake_api)
    assert hook.settings.verify_tls is True
    assert hook.settings.client_kwargs()["verify"] is True
    assert _verify_mode(hook.get_conn()) is ssl.CERT_REQUIRED
    assert hook.get_conn().follow_redirects is False

    async def async_mode() -> ssl.VerifyMode:
        return _verify_mode(await shared_async_client(hook.settings))

    assert asyncio.run(async_mode()) is ssl.CERT_REQUIRED
    with S3MediaHook(None).archiver.http_client() as http:
        assert _verify_mode(http) is ssl.CERT_REQUIRED
        assert "authorization" not in http.headers  # the API token never goes to a file host


def test_tls_verification_can_only_be_disabled_explicitly():
    assert RunComfySettings(token="t").verify_tls is True
    off = RunComfySettings.from_connection(
        type(
            "Conn",
            (),
            {
                "host": FAKE_API,
                "password": "t",
                "schema": None,
                "port": None,
                "extra_dejson": {"verify_tls": "false"},
            },
        )()
    )
    assert off.verify_tls is False
    with pytest.raises(ValueError, match="verify_tls"):
        RunComfySettings.from_connection(
            type(
                "Conn",
                (),
                {
                    "host": FAKE_API,
                    "password": "t",
                    "schema": None,
                    "port": None,
                    "extra_dejson": {"verify_tls": "maybe"},
                },
            )()
        )


# -- SSRF through a crafted result ----------------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/role.png",
        "https://evil.example.com/a.png",
        "https://cdn.runcomfy.net.evil.example.com/a.png",
        "file:///etc/passwd",
    ],
    ids=["metadata-service", "foreign-host", "suffix-trick", "file-scheme"],
)
def test_outputs_on_foreign_hosts_are_never_fetched(fake_api, moto_s3, s3_bucket, context, output):
    rid = "req-ssrf-1"
    result_body = {"request_id": rid, "status": "completed", "output": {"images": [output]}}
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as net:
        net.post(f"{FAKE_API}/v1/models/google/nano-banana-2/edit").respond(json={"request_id": rid})
        net.get(f"{FAKE_API}/v1/requests/{rid}/status").respond(
            json={"request_id": rid, "status": "completed"}
        )
        net.get(f"{FAKE_API}/v1/requests/{rid}/result").respond(json=result_body)
        task = edit_operator("https://images.example.com/cat.png", s3_bucket, runcomfy_conn_id=fake_api)
        if output.startswith("file:"):
            # Not an http(s) URL: not even treated as an output, so the job "returned no output".
            with pytest.raises(RunComfyJobFailedError, match="no output URLs"):
                task.execute(context)
        else:
            with pytest.raises(OutputURLRefusedError, match=r"nothing was downloaded.*allowed_output_hosts"):
                task.execute(context)
        hosts = {call.request.url.host for call in net.calls}
    assert hosts == {"api.fake-runcomfy.test"}
    assert moto_s3.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_redirect_from_an_allowed_host_to_a_foreign_one_is_not_followed(
    fake_api, moto_s3, s3_bucket, context
):
    rid = "req-ssrf-2"
    allowed = "https://files.runcomfy.net/out/0.png?sig=abc"
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as net:
        net.post(f"{FAKE_API}/v1/models/google/nano-banana-2/edit").respond(json={"request_id": rid})
        net.get(f"{FAKE_API}/v1/requests/{rid}/status").respond(
            json={"request_id": rid, "status": "completed"}
        )
        net.get(f"{FAKE_API}/v1/requests/{rid}/result").respond(
            json={"request_id": rid, "status": "completed", "output": {"images": [allowed]}}
        )
        hop = net.get(allowed).respond(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        evil = net.get("http://169.254.169.254/latest/meta-data/")
        # One output for one image: the quality gate's count check must not stop it before the download.
        task = edit_operator(
            "https://images.example.com/cat.png", s3_bucket, runcomfy_conn_id=fake_api, num_images=1
        )
        with pytest.raises(
            OutputsNotArchivedError, match=r"redirected to .*169.254.169.254.*not in allowed_output_hosts"
        ):
            task.execute(context)
        assert hop.called
        assert not evil.called
    assert moto_s3.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


# -- S3 keys cannot leave the configured prefix ---------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "../../escape/{request_id}_{index}.{ext}",
        "/absolute/{request_id}_{index}.{ext}",
        "a/./b/{index}.{ext}",
    ],
)
def test_key_template_escapes_are_refused_before_anything_is_paid_for(
    emulator, input_image, s3_bucket, context, template
):
    with pytest.raises(InvalidEditRequestError, match="key_template"):
        run_deferred(edit_operator(input_image, s3_bucket, s3_key_template=template), context)
    assert emulator.counters()["jobs_created"] == 0


@pytest.mark.parametrize(
    "template",
    [
        "../../escape/{request_id}_{index}.{ext}",
        "/absolute/{request_id}_{index}.{ext}",
        "a/./b/{index}.{ext}",
    ],
)
def test_key_template_escapes_never_write_outside_the_prefix(
    emulator, moto_s3, input_image, s3_bucket, template
):
    """Refused, and nothing is written anywhere in the bucket."""
    with pytest.raises(InvalidEditRequestError, match="key_template"):
        run_deferred(edit_operator(input_image, s3_bucket, s3_key_template=template), new_context())
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["inputs/cat.png"]


def test_user_data_in_keys_cannot_escape_the_prefix_single(emulator, moto_s3, input_image, s3_bucket):
    context = new_context(dag_id="enrich", run_id="../../../../etc", task_id="..", map_index=0)
    result = run_deferred(
        edit_operator(input_image, s3_bucket, output_s3_uri=f"s3://{s3_bucket}/edited/"), context
    )
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    written = [k for k in keys if not k.startswith("inputs/")]
    assert len(written) == 3
    assert len(result["archived"]) == 2
    for key in written:
        assert key.startswith("edited/enrich/")
        assert ".." not in key.split("/")
        assert "//" not in key


def test_user_data_in_keys_cannot_escape_the_prefix_batch(emulator, moto_s3, input_image, s3_bucket):
    context = new_context(dag_id="enrich", run_id="../../../../etc", task_id="..", map_index=0)
    op = NanoBananaBatchEditOperator(
        task_id="batch",
        prompt="postcard",
        items=[{"id": "../../../evil", "image_urls": [input_image]}],
        output_s3_uri=f"s3://{s3_bucket}/out/",
        poll_interval=0.1,
        poll_max_interval=0.3,
    )
    from airflow.sdk.exceptions import TaskDeferred

    from tests.reliability.conftest import rebuild, run_trigger

    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    op.execute_complete(context, run_trigger(rebuild(deferred.value.trigger)))
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    written = [k for k in keys if not k.startswith("inputs/")]
    assert len(written) >= 4  # image, its manifest, checkpoint, batch manifest
    for key in written:
        assert key.startswith("out/enrich/")
        assert ".." not in key.split("/")
        assert "//" not in key


@pytest.mark.parametrize("prefix", ["../other/", "a/../../b/"])
def test_output_uri_with_dot_dot_is_refused_before_any_paid_call(
    emulator, input_image, s3_bucket, context, prefix
):
    uri = f"s3://{s3_bucket}/{prefix}"
    with pytest.raises(InvalidEditRequestError, match=r"dest_uri|output_s3_uri"):
        run_deferred(edit_operator(input_image, s3_bucket, output_s3_uri=uri), context)
    assert emulator.counters()["jobs_created"] == 0
