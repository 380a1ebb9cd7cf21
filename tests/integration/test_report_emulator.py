"""Contact sheets over real HTTP (emulator) and a real S3 API (moto): the batch writes one beside its
manifest, a mapped fleet gets one from the report operator, and the UI link opens them."""

from __future__ import annotations

import io
import re
from typing import Any

import httpx
import pytest
from PIL import Image

from airflow_provider_nanobanana.report.fleet import NanoBananaContactSheetOperator
from airflow_provider_nanobanana.report.link import REPORT_XCOM_KEY, ContactSheetLink
from airflow_provider_nanobanana.report.review import review_sample
from tests.fakes import new_context
from tests.integration.test_batch_emulator import batch_context, batch_operator, run_batch, seed_inputs
from tests.integration.test_operator_emulator import operator as edit_operator
from tests.integration.test_operator_emulator import run_deferred

pytestmark = pytest.mark.usefixtures("airflow_connections")


def read(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri[len("s3://") :].partition("/")
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def follow_link(monkeypatch: pytest.MonkeyPatch, ti: Any) -> str:
    """What the UI's "Contact sheet" button opens, with XCom served from the fake TI."""
    from airflow.sdk.execution_time.xcom import XCom

    monkeypatch.setattr(XCom, "get_value", staticmethod(lambda *, ti_key, key: ti.xcom.get(key)))
    return ContactSheetLink().get_link(None, ti_key=object())  # type: ignore[arg-type]


def open_as_s3_user(url: str) -> httpx.Response:
    """GET ``url`` signed as the bucket's owner would be (a browser signed in to the console, an S3
    client): the link must address the report object itself, with no signature of its own."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    assert "Signature" not in url
    request = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(request)
    return httpx.get(url, headers=dict(request.headers.items()))


def test_a_batch_writes_its_contact_sheet_beside_the_manifest(
    emulator: Any, moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_inputs(moto_s3, s3_bucket, 8)
    emulator.configure(queue_s=0.05, run_s=0.1, failure_rate=0.5, seed=3)
    context = batch_context()
    task = batch_operator(s3_bucket, item_retries=0, max_failed_fraction=1.0)
    result = run_batch(task, context)
    assert 0 < result["failed"] < 8

    report = result["report"]
    folder = result["manifest"].rsplit("/", 1)[0]
    assert (report["html"], report["png"]) == (f"{folder}/contact_sheet.html", f"{folder}/contact_sheet.png")
    assert (report["total"], report["failed"], report["shown"]) == (8, result["failed"], 8)
    assert context["ti"].xcom[REPORT_XCOM_KEY] == report

    s3 = moto_s3.client()
    with Image.open(io.BytesIO(read(s3, report["png"]))) as sheet:
        assert sheet.format == "PNG"
        assert sheet.height > 8 * 128
    html = read(s3, report["html"]).decode()
    state = s3.get_object(Bucket=s3_bucket, Key=result["checkpoint"].split("/", 3)[3])["Body"].read().decode()
    request_ids = set(re.findall(r'"request_id":"([^"]+)"', state))
    assert len(request_ids) == 8
    assert all(rid in html for rid in request_ids)
    assert html.count('<tr class="failed">') == result["failed"]
    assert html.count("data:image/jpeg;base64,") == 8 + result["succeeded"], "every input and output shown"
    for secret in ("X-Amz-", "Signature"):  # the inputs RunComfy fetched were pre-signed
        assert secret not in html

    url = follow_link(monkeypatch, context["ti"])
    assert url == f"{moto_s3.endpoint_url}/{s3_bucket}/{report['html'].split('/', 3)[3]}"
    response = open_as_s3_user(url)
    assert response.status_code == 200
    assert response.text == html
    assert response.headers["content-type"].startswith("text/html")

    # The review sample of the same batch: every failure plus one random success, in review/.
    review = review_sample(context, task.media, result["manifest"], sample_size=1)
    assert review["html"] == f"{folder}/review/contact_sheet.html"
    assert (review["batch_total"], review["batch_failed"]) == (8, result["failed"])
    assert (review["total"], review["failed"]) == (result["failed"] + 1, result["failed"])
    assert read(s3, review["html"]).decode().count("<tr ") == result["failed"] + 1


def test_a_mapped_fleet_gets_a_report_with_its_failed_task_marked(
    emulator: Any, moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = moto_s3.client()
    png = io.BytesIO()
    Image.new("RGB", (48, 48), (10, 150, 90)).save(png, format="PNG")
    inputs = [[f"s3://{s3_bucket}/in/{name}.png"] for name in ("one", "two", "three")]
    for (uri,) in inputs:
        s3.put_object(
            Bucket=s3_bucket, Key=uri.split("/", 3)[3], Body=png.getvalue(), ContentType="image/png"
        )
    emulator.configure(queue_s=0.05, run_s=0.1)
    results = []
    for n, image_urls in enumerate(inputs[:2]):  # the third mapped task "failed": it left no result
        task = edit_operator(image_urls[0], s3_bucket, num_images=1, output_s3_uri=f"s3://{s3_bucket}/out/")
        results.append(run_deferred(task, new_context(map_index=n)))

    report_task = NanoBananaContactSheetOperator(
        task_id="contact_sheet", results=results, inputs=inputs, output_s3_uri=f"s3://{s3_bucket}/out/"
    )
    context = new_context(task_id="contact_sheet", map_index=-1)
    report = report_task.execute(context)
    assert report is not None
    assert report["html"].startswith(
        f"s3://{s3_bucket}/out/_reports/enrich/manual__2026-11-27/contact_sheet/"
    )
    assert (report["total"], report["failed"]) == (3, 1)
    html = read(s3, report["html"]).decode()
    for result in results:
        assert result["request_id"] in html
    rows = re.findall(r"<tr class=\"(\w*)\"><td>([^<]+)</td>", html)
    assert rows == [("", "one.png"), ("", "two.png"), ("failed", "three.png")]
    assert open_as_s3_user(follow_link(monkeypatch, context["ti"])).text == html


def test_a_fleet_report_matches_pre_signed_inputs_and_shows_budget_skips_as_skipped(
    emulator: Any, moto_s3: Any, s3_bucket: str
) -> None:
    """The expand list holds a pre-signed URL (the manifest records it redacted) and one mapped task
    was skipped by the spend budget: each row sits beside its own input, none is a false failure."""
    s3 = moto_s3.client()
    png = io.BytesIO()
    Image.new("RGB", (48, 48), (10, 150, 90)).save(png, format="PNG")
    for name in ("one", "two", "three"):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{name}.png", Body=png.getvalue(), ContentType="image/png")
    signed = s3.generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": "in/one.png"})
    inputs = [signed, f"s3://{s3_bucket}/in/two.png", f"s3://{s3_bucket}/in/three.png"]
    emulator.configure(queue_s=0.05, run_s=0.1)
    results: list[Any] = [
        run_deferred(
            edit_operator(uri, s3_bucket, num_images=1, output_s3_uri=f"s3://{s3_bucket}/out/"),
            new_context(map_index=n),
        )
        for n, uri in enumerate(inputs[:2])
    ]
    results.append(
        {"request_id": None, "status": "skipped_budget", "images": [], "archived": [], "manifest": None}
    )
    report = NanoBananaContactSheetOperator(
        task_id="contact_sheet", results=results, inputs=inputs, output_s3_uri=f"s3://{s3_bucket}/out/"
    ).execute(new_context(task_id="contact_sheet", map_index=-1))
    assert report is not None
    html = read(s3, report["html"]).decode()
    rows = re.findall(r"<tr class=\"(\w*)\"><td>([^<]+)</td>", html)
    assert rows == [("", "one.png"), ("", "two.png"), ("skipped", "three.png")]
    assert "Signature=" not in html.replace("Signature=***", "")
