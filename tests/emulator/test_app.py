"""The emulated API's contract, exercised over real HTTP on loopback."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from airflow_provider_nanobanana.emulator import EmulatorServer
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, REQUEST_ID_PATTERN, JobState
from tests.emulator.support import SUBMIT_PATH, Api, closed_port_url, png_bytes

KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"


# --- submit ------------------------------------------------------------------------------------


def test_submit_returns_the_request_id_and_absolute_urls(api: Api) -> None:
    response = api.submit()
    assert response.status_code == 200
    body = response.json()
    request_id = body["request_id"]
    assert REQUEST_ID_PATTERN.match(request_id)
    base = f"{api.emu.base_url}/v1/requests/{request_id}"
    assert body == {
        "request_id": request_id,
        "status_url": f"{base}/status",
        "result_url": f"{base}/result",
        "cancel_url": f"{base}/cancel",
    }
    assert api.http.get(body["status_url"]).json()["request_id"] == request_id


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"resolution": "8K"}, "resolution"),
        ({"aspect_ratio": "7:3"}, "aspect_ratio"),
        ({"output_format": "gif"}, "output_format"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 5}, "num_images"),
        ({"image_urls": []}, "image_urls"),
        ({"image_urls": [f"http://h/{n}.png" for n in range(21)]}, "image_urls"),
        ({"image_urls": ["ftp://h/a.png"]}, "image_urls"),
        ({"prompt": None}, "prompt"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_schema_violations_are_422_naming_the_field(api: Api, changes: dict[str, Any], field: str) -> None:
    body = {**api.body(), **changes}
    if changes.get("prompt", "") is None:
        del body["prompt"]
    response = api.http.post(SUBMIT_PATH, json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error_code"] == 422001
    assert f"{field}:" in error["error_message"]
    assert any(field in item["loc"] for item in error["detail"])
    if field == "prompt":
        assert "prompt: required" in error["error_message"]
    assert api.emu.counters()["jobs_created"] == 0


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_422(api: Api, content: bytes) -> None:
    response = api.http.post(SUBMIT_PATH, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error_code"] == 422001
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_an_unknown_model_is_400(api: Api) -> None:
    response = api.http.post("/v1/models/google/nano-banana-9/edit", json=api.body())
    assert response.status_code == 400
    assert response.json()["error_code"] == 400001
    assert response.json()["error_message"].startswith("InvalidResourceIdentifier: ")


@pytest.mark.emulator(models=[DEFAULT_MODEL_ID, KONTEXT])
def test_model_ids_with_slashes_go_straight_into_the_path(api: Api) -> None:
    assert api.http.post(f"/v1/models/{KONTEXT}", json=api.body()).status_code == 200
    assert api.emu.counters()["submits_per_model"] == {KONTEXT: 1}


@pytest.mark.emulator(max_running=0)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Basic ZW11bGF0b3ItdG9rZW4=", "Bearer", "emulator-token"]
)
def test_every_api_call_needs_the_bearer_token(api: Api, authorization: str | None) -> None:
    request_id = api.submit_id()
    headers = {} if authorization is None else {"Authorization": authorization}
    calls = [
        ("POST", SUBMIT_PATH),
        ("GET", f"/v1/requests/{request_id}/status"),
        ("GET", f"/v1/requests/{request_id}/result"),
        ("POST", f"/v1/requests/{request_id}/cancel"),
    ]
    with httpx.Client(base_url=api.emu.base_url, trust_env=False) as anonymous:
        for method, path in calls:
            response = anonymous.request(method, path, headers=headers, json=api.body())
            assert response.status_code == 401, path
            assert response.json()["error_code"] == 400004
            assert response.json()["error_message"].startswith("UserAccountError: ")
            assert api.emu.token not in response.text
    assert api.emu.counters()["auth_failures"] == 4
    assert api.status(request_id)["status"] == JobState.IN_QUEUE.value  # the cancel did not happen


def test_unknown_request_ids_are_404(api: Api) -> None:
    for method, path in [("GET", "status"), ("GET", "result"), ("POST", "cancel")]:
        response = api.http.request(method, f"/v1/requests/0123456789abcdef/{path}")
        assert response.status_code == 404
        assert response.json()["error_code"] == 404001
        assert response.json()["error_message"].startswith("ResourceNotFound: ")
    assert api.http.get("/v1/nowhere").json()["error_code"] == 404001


# --- the state machine ---------------------------------------------------------------------------


@pytest.mark.emulator(max_running=0, run_s=0.4)
def test_a_queue_forms_and_queue_position_is_sent_only_while_queued(api: Api) -> None:
    ids = [api.submit_id() for _ in range(3)]
    time.sleep(0.1)  # longer than queue_s: only the missing slot holds them
    assert [api.status(i)["queue_position"] for i in ids] == [0, 1, 2]
    api.emu.configure(max_running=1)
    first = api.wait(ids[0], JobState.IN_PROGRESS)
    assert "queue_position" not in first
    assert "output" not in first
    assert [api.status(i).get("queue_position") for i in ids] == [None, 0, 1]
    assert api.result(ids[2])["queue_position"] == 1  # result answers with the current state too
    for request_id in ids:
        assert "queue_position" not in api.wait(request_id, JobState.COMPLETED)
    counters = api.emu.counters()
    assert counters["peak_running"] == 1
    assert counters["peak_active"] == 3


@pytest.mark.emulator(max_running=1, run_s=0.5)
def test_only_a_queued_job_can_be_cancelled(api: Api) -> None:
    running, queued = api.submit_id(), api.submit_id()
    api.wait(running, JobState.IN_PROGRESS)
    response = api.cancel(queued)
    assert response.status_code == 200
    assert response.json() == {"request_id": queued, "status": "cancelled", "outcome": "cancelled"}
    cancelled = api.result(queued)
    assert cancelled["status"] == "cancelled"
    assert "output" not in cancelled
    response = api.cancel(running)
    assert response.status_code == 200
    assert response.json() == {"request_id": running, "status": "in_progress", "outcome": "not_cancellable"}
    api.wait(running, JobState.COMPLETED)
    assert api.cancel(running).json()["outcome"] == "not_cancellable"


@pytest.mark.emulator(failure_rate=1.0)
def test_failed_jobs_carry_an_error_object(api: Api) -> None:
    result = api.wait(api.submit_id())
    assert result["status"] == "failed"
    assert result["error"]["type"] == "model_error"
    assert result["error"]["message"]
    assert "output" not in result
    assert result["model_id"] == DEFAULT_MODEL_ID


def test_completed_result_shape_and_cost(api: Api) -> None:
    request_id = api.submit_id(num_images=2, resolution="0.5K")
    result = api.wait(request_id, JobState.COMPLETED)
    assert set(result) >= {"request_id", "status", "model_id", "output", "created_at", "finished_at"}
    assert "cost" not in result
    assert datetime.fromisoformat(result["finished_at"]) >= datetime.fromisoformat(result["created_at"])
    assert len(result["output"]["images"]) == 2
    assert api.result(request_id, include_cost="true")["cost"] == pytest.approx(0.12)


@pytest.mark.emulator(queue_s=5.0, run_s=5.0, time_scale=50.0)
def test_time_scale_accelerates_the_clock(api: Api) -> None:
    request_id = api.submit_id()
    api.wait(request_id, JobState.COMPLETED, timeout_s=3)  # 10 emulated seconds, well under 3 real
    result = api.result(request_id)
    from datetime import datetime

    elapsed = datetime.fromisoformat(result["finished_at"]) - datetime.fromisoformat(result["created_at"])
    # The server schedules the job on its clock: 5 + 5 emulated seconds at 50x are 0.2 s.
    assert elapsed.total_seconds() == pytest.approx(10.0 / 50.0, abs=0.05)


# --- outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "size", "media_type", "pillow_format"),
    [
        (
            {"aspect_ratio": "1:1", "resolution": "0.5K", "output_format": "png"},
            (512, 512),
            "image/png",
            "PNG",
        ),
        ({"aspect_ratio": "16:9", "output_format": "jpeg"}, (1024, 576), "image/jpeg", "JPEG"),
        (
            {"aspect_ratio": "9:16", "resolution": "0.5K", "output_format": "webp"},
            (288, 512),
            "image/webp",
            "WEBP",
        ),
        (
            {"aspect_ratio": "21:9", "resolution": "2K", "output_format": "jpeg"},
            (2048, 880),
            "image/jpeg",
            "JPEG",
        ),
        ({}, (1024, 680), "image/png", "PNG"),  # auto: the 300x200 input's shape
        ({"resolution": "0.5K", "tall": True}, (256, 512), "image/png", "PNG"),
    ],
)
def test_outputs_have_the_requested_size_and_format(
    api: Api, fields: dict[str, Any], size: tuple[int, int], media_type: str, pillow_format: str
) -> None:
    if fields.pop("tall", False):
        fields["image_urls"] = [api.images.url("/tall-200x400.jpg")]
    result = api.wait(api.submit_id(**fields), JobState.COMPLETED)
    [url] = result["output"]["images"]
    response = api.download(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert int(response.headers["content-length"]) == len(response.content)
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == pillow_format
        assert image.size == size


def test_each_output_is_its_own_file(api: Api) -> None:
    result = api.wait(api.submit_id(num_images=3, resolution="0.5K"), JobState.COMPLETED)
    urls = result["output"]["images"]
    assert [urlsplit(url).path.rsplit("/", 1)[1] for url in urls] == ["0.png", "1.png", "2.png"]
    bodies = [api.download(url).content for url in urls]
    assert len(set(bodies)) == 3


def test_outputs_are_deterministic_per_seed(api: Api) -> None:
    def output(seed: int) -> bytes:
        result = api.wait(api.submit_id(seed=seed, resolution="0.5K"), JobState.COMPLETED)
        return api.download(result["output"]["images"][0]).content

    first = output(42)
    assert output(42) == first
    assert output(43) != first


def test_output_urls_are_signed_and_expire_after_the_ttl(api: Api) -> None:
    result = api.wait(api.submit_id(resolution="0.5K"), JobState.COMPLETED)
    url = result["output"]["images"][0]
    query = parse_qs(urlsplit(url).query)
    signed_until = int(query["expires"][0]) - 3600  # when the URL was signed, on the server's clock
    now = time.time()
    assert now - 60 <= signed_until <= now + 1
    assert api.download(url).status_code == 200
    for tampered in (url.replace("sig=", "sig=0"), url.replace("expires=", "expires=9"), url.split("?")[0]):
        response = api.download(tampered)
        assert response.status_code == 403
        assert response.json()["error_message"] == "AccessDenied: missing or invalid signature"


def test_expired_output_urls_are_403(api: Api) -> None:
    request_id = api.submit_id(resolution="0.5K")
    api.wait(request_id, JobState.COMPLETED)
    api.emu.set_faults(expire_outputs=True)
    url = api.result(request_id)["output"]["images"][0]
    response = api.download(url)
    assert response.status_code == 403
    assert "expired" in response.json()["error_message"]
    api.emu.set_faults()
    assert api.download(api.result(request_id)["output"]["images"][0]).status_code == 200
    assert api.emu.counters()["faults_injected"] == {"expire_outputs": 1}


@pytest.mark.emulator(output_pad_bytes=3_000_000)
def test_padded_outputs_are_streamed_valid_images(api: Api) -> None:
    result = api.wait(api.submit_id(resolution="0.5K"), JobState.COMPLETED)
    with httpx.stream("GET", result["output"]["images"][0], trust_env=False) as response:
        assert response.status_code == 200
        declared = int(response.headers["content-length"])
        data = b"".join(response.iter_bytes())
    assert len(data) == declared
    assert 3_000_000 - 16 <= declared <= 3_000_000
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (512, 344)
    counters = api.emu.counters()
    assert counters["files_served"] == 1
    assert counters["bytes_served"] == declared


# --- inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (None, "unreachable (ConnectError)"),
        ("/page.html", "Content-Type is 'text/html; charset=utf-8', not image/*"),
        ("/junk.png", "not an image Pillow can open"),
        ("/gone.png", "fetching it returned HTTP 404"),
        ("/big.png", "is larger than the 10000-byte limit"),
        ("/big-no-length.png", "larger than the 10000-byte limit"),
    ],
)
@pytest.mark.emulator(max_input_bytes=10_000)
def test_bad_inputs_fail_the_job_with_a_clear_error(api: Api, path: str | None, message: str) -> None:
    url = closed_port_url() if path is None else api.images.url(path)
    result = api.wait(api.submit_id(image_urls=[api.images.url("/red-300x200.png"), url]))
    assert result["status"] == "failed"
    assert result["error"]["type"] == "input_error"
    assert result["error"]["message"].startswith("image_urls[1] (")
    assert message in result["error"]["message"]


def test_input_urls_are_redacted_in_errors(api: Api) -> None:
    url = api.images.url("/gone.png") + "?X-Amz-Signature=TOPSECRET&X-Amz-Credential=KEYID"
    result = api.wait(api.submit_id(image_urls=[url]))
    assert "TOPSECRET" not in json.dumps(result)
    assert "KEYID" not in json.dumps(result)
    assert "X-Amz-Signature=***" in result["error"]["message"]


def _presigned(moto_s3: Any, bucket: str, *, signed_ago_s: float, expires_in: int) -> str:
    client = moto_s3.client()
    client.put_object(Bucket=bucket, Key="in.png", Body=png_bytes((64, 48)), ContentType="image/png")
    signed_at = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=signed_ago_s)
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at):
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "in.png"}, ExpiresIn=expires_in
        )
    assert httpx.get(url, trust_env=False).status_code == 200  # moto itself ignores the expiry
    return str(url)


def test_presigned_s3_inputs_are_fetched(api: Api, moto_s3: Any, s3_bucket: str) -> None:
    url = _presigned(moto_s3, s3_bucket, signed_ago_s=0, expires_in=300)
    result = api.wait(api.submit_id(image_urls=[url], resolution="0.5K"))
    assert result["status"] == "completed"
    with Image.open(io.BytesIO(api.download(result["output"]["images"][0]).content)) as image:
        assert image.size == (512, 384)  # auto: the 64x48 input's 4:3 shape


def test_expired_presigned_s3_inputs_fail_the_job(api: Api, moto_s3: Any, s3_bucket: str) -> None:
    url = _presigned(moto_s3, s3_bucket, signed_ago_s=3600, expires_in=60)
    result = api.wait(api.submit_id(image_urls=[url]))
    assert result["status"] == "failed"
    assert "input URL expired" in result["error"]["message"]
    assert "X-Amz-Signature=***" in result["error"]["message"]
    assert api.emu.counters()["input_fetch_failures"] == 1


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after_s", "header"), [(0.5, "0.5"), (3.0, "3"), (None, None)])
def test_rate_limiting_with_and_without_retry_after(
    api: Api, retry_after_s: float | None, header: str | None
) -> None:
    request_id = api.submit_id()
    api.emu.set_faults(rate_429=1.0, retry_after_s=retry_after_s)
    response = api.http.get(f"/v1/requests/{request_id}/status")
    assert response.status_code == 429
    assert response.headers.get("retry-after") == header
    assert response.json()["error_code"] == 429001
    assert api.emu.counters()["faults_injected"] == {"429": 1}


def test_5xx_statuses(api: Api) -> None:
    request_id = api.submit_id()
    api.emu.set_faults(rate_5xx=1.0, status_5xx=503)
    assert api.http.get(f"/v1/requests/{request_id}/result").status_code == 503
    api.emu.set_faults(rate_5xx=1.0)
    seen = {api.http.get(f"/v1/requests/{request_id}/status").status_code for _ in range(30)}
    assert seen <= {500, 502, 503, 504}
    assert len(seen) > 1


@pytest.mark.parametrize("drop_mode", ["no_response", "truncated"])
def test_dropped_connections_are_transport_errors(api: Api, drop_mode: str) -> None:
    request_id = api.submit_id()
    api.emu.set_faults(rate_drop=1.0, drop_mode=drop_mode)
    with pytest.raises(httpx.TransportError):
        api.http.get(f"/v1/requests/{request_id}/status")
    with pytest.raises(httpx.TransportError):
        api.submit()
    api.emu.set_faults()
    assert api.status(request_id)["request_id"] == request_id  # the client reconnects
    counters = api.emu.counters()
    assert counters["jobs_created"] == 1  # faults strike before the work: the dropped submit made nothing
    assert counters["faults_injected"] == {"drop": 2}


@pytest.mark.parametrize("drop_mode", ["no_response", "truncated"])
def test_a_lost_submit_response_still_creates_the_job(api: Api, drop_mode: str) -> None:
    api.emu.set_faults(rate_lost_response=1.0, drop_mode=drop_mode)
    with pytest.raises(httpx.TransportError):
        api.submit()
    api.emu.set_faults()
    counters = api.emu.counters()
    assert counters["jobs_created"] == 1
    assert counters["jobs_total"] == 1
    assert counters["faults_injected"] == {"lost_response": 1}


def test_malformed_json(api: Api) -> None:
    request_id = api.submit_id()
    api.emu.set_faults(rate_malformed=1.0)
    for _ in range(3):
        response = api.http.get(f"/v1/requests/{request_id}/status")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)


def test_html_error_page(api: Api) -> None:
    request_id = api.submit_id()
    api.emu.set_faults(rate_html=1.0)
    response = api.http.get(f"/v1/requests/{request_id}/result")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in response.text


def test_latency_and_slow_bodies(api: Api) -> None:
    request_id = api.submit_id()
    api.emu.set_faults(latency_s=0.3)
    assert api.status(request_id)["request_id"] == request_id
    api.emu.set_faults(slow_body_s=0.4)
    with api.http.stream("GET", f"/v1/requests/{request_id}/status") as response:
        assert response.status_code == 200  # the headers came before the body
        pieces = list(response.iter_raw())
    assert json.loads(b"".join(pieces))["request_id"] == request_id
    assert len(pieces) > 1  # the body trickled in pieces (how long it took is the emulator's clock)
    assert api.emu.counters()["faults_injected"] == {"latency": 1, "slow_body": 1}


def test_faults_strike_only_the_chosen_endpoints(api: Api) -> None:
    api.emu.set_faults(rate_429=1.0, endpoints=["status"])
    request_id = api.submit_id(resolution="0.5K")
    assert api.http.get(f"/v1/requests/{request_id}/status").status_code == 429
    result = api.wait(request_id, JobState.COMPLETED)
    assert api.download(result["output"]["images"][0]).status_code == 200
    api.emu.set_faults(rate_5xx=1.0, status_5xx=500, endpoints=["files"])
    assert api.download(result["output"]["images"][0]).status_code == 500
    assert api.result(request_id)["status"] == "completed"


def test_faults_replay_identically_after_a_reset(api: Api) -> None:
    def statuses() -> list[int]:
        request_id = api.submit_id()
        api.emu.set_faults(rate_429=0.3, rate_5xx=0.3, status_5xx=502)
        codes = [api.http.get(f"/v1/requests/{request_id}/status").status_code for _ in range(20)]
        api.emu.set_faults()
        api.emu.reset()
        return codes

    first = statuses()
    assert statuses() == first
    assert set(first) == {200, 429, 502}


# --- counters and the admin endpoints -------------------------------------------------------------


def test_counters(api: Api) -> None:
    request_id = api.submit_id(resolution="0.5K")
    api.http.post("/v1/models/unknown/model", json=api.body())
    api.status(request_id)
    result = api.wait(request_id, JobState.COMPLETED)
    polls = api.emu.counters()["result_polls"]
    file_bytes = api.download(result["output"]["images"][0]).content
    api.cancel(request_id)
    counters = api.emu.counters()
    assert counters["submits"] == 2
    assert counters["jobs_created"] == 1
    assert counters["submits_per_model"] == {DEFAULT_MODEL_ID: 1, "unknown/model": 1}
    assert counters["status_polls"] == 1
    assert counters["result_polls"] == polls >= 1
    assert counters["cancels"] == 1
    assert counters["files_served"] == 1
    assert counters["bytes_served"] == len(file_bytes)
    assert counters["jobs_by_state"] == {
        "in_queue": 0,
        "in_progress": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert counters["peak_active"] == 1
    assert counters["input_fetches"] == 1
    assert counters["faults_injected"] == {}


def test_runtime_config(emu: EmulatorServer) -> None:
    view = emu.get_config()
    assert "token" not in view
    assert emu.token not in json.dumps(view)
    changed = emu.configure(run_s=0.2, faults={"rate_429": 0.5})
    assert changed["run_s"] == 0.2
    assert changed["faults"]["rate_429"] == 0.5
    assert emu.configure(queue_s=0.01)["faults"]["rate_429"] == 0.5  # untouched keys are kept
    with httpx.Client(base_url=emu.base_url, trust_env=False) as admin:
        assert admin.put("/_emulator/config", json={"token": "x"}).status_code == 422
        assert admin.put("/_emulator/config", json={"failure_rate": 2}).status_code == 422
        assert admin.put("/_emulator/config", content=b"nope").status_code == 422
    assert emu.get_config()["failure_rate"] == 0.0


def test_reset_forgets_jobs_and_counters(api: Api) -> None:
    request_id = api.submit_id()
    api.emu.reset()
    assert api.http.get(f"/v1/requests/{request_id}/status").status_code == 404
    counters = api.emu.counters()
    assert counters["jobs_total"] == 0
    assert counters["submits"] == 0
    assert counters["status_polls"] == 1


@pytest.mark.emulator(run_s=5.0)
def test_jobs_can_be_cancelled_or_failed_from_outside(api: Api) -> None:
    running = api.submit_id()
    api.wait(running, JobState.IN_PROGRESS)
    assert api.emu.force_cancel(running) == {"request_id": running, "status": "cancelled"}
    assert api.result(running)["status"] == "cancelled"
    doomed = api.submit_id()
    answer = api.emu.force_fail(doomed, "GPU fell over")
    assert answer["status"] == "failed"
    assert api.result(doomed)["error"] == {"type": "model_error", "message": "GPU fell over"}
    with httpx.Client(base_url=api.emu.base_url, trust_env=False) as admin:
        assert admin.post("/_emulator/requests/nope/force_cancel").status_code == 404
        assert admin.post("/_emulator/requests/nope/fail").status_code == 404
