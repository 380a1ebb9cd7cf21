"""Bad input is refused on the worker before any network call, with a message naming the field.

"No network call" is proven twice: the emulator counts zero requests of any kind, and respx, which
refuses every unmocked httpx request, records zero calls.
"""

from __future__ import annotations

from typing import Any

import pytest
import respx

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from tests.reliability.conftest import edit_operator

pytestmark = pytest.mark.usefixtures("airflow_connections")

OK = "https://images.example.com/cat.png"
#: (id, changes, the field the message must name, the reason it must give)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("empty-prompt", {"prompt": ""}, "prompt", "at least 1 character"),
    ("blank-prompt", {"prompt": "   \n"}, "prompt", "not only whitespace"),
    ("absurd-prompt", {"prompt": "x" * 1_000_000}, "prompt", "at most 10000"),
    ("no-images", {"image_urls": []}, "image_urls", "at least 1 item"),
    ("21-images", {"image_urls": [OK] * 21}, "image_urls", "at most 20 items"),
    ("not-a-url", {"image_urls": ["cat.png please"]}, "image_urls", "'cat.png please' must be an absolute"),
    (
        "ftp-url",
        {"image_urls": ["ftp://images.example.com/cat.png"]},
        "image_urls",
        "'ftp://images.example.com/cat.png' must be",
    ),
    (
        "javascript-url",
        {"image_urls": ["javascript:alert(1)"]},
        "image_urls",
        "'javascript:alert(1)' must be",
    ),
    ("file-url-without-staging", {"image_urls": ["file:///etc/passwd"]}, "image_urls", "file:///etc/passwd"),
    (
        "missing-s3-input",
        {"image_urls": ["s3://no-such-bucket-here/cat.png"]},
        "image_urls",
        "does not exist",
    ),
    ("wrong-aspect-ratio", {"aspect_ratio": "7:3"}, "aspect_ratio", "'21:9'"),
    ("wrong-resolution", {"resolution": "8K"}, "resolution", "'4K'"),
    ("wrong-output-format", {"output_format": "gif"}, "output_format", "'webp'"),
    ("zero-images-out", {"num_images": 0}, "num_images", "greater than or equal to 1"),
    ("five-images-out", {"num_images": 5}, "num_images", "less than or equal to 4"),
    ("negative-seed", {"seed": -1}, "seed", "greater than or equal to 0"),
    ("huge-seed", {"seed": 2**40}, "seed", "less than or equal to 4294967295"),
    ("safety-too-low", {"safety_tolerance": 0}, "safety_tolerance", "greater than or equal to 1"),
    ("safety-too-high", {"safety_tolerance": 7}, "safety_tolerance", "less than or equal to 6"),
    ("num-images-as-string", {"num_images": "2"}, "num_images", "valid integer"),
    ("seed-as-float", {"seed": 1.5}, "seed", "valid integer"),
    ("bool-as-string", {"limit_generations": "true"}, "limit_generations", "valid boolean"),
    ("image-urls-rendered-as-string", {"image_urls": str([OK, OK])}, "image_urls", "must be an absolute"),
    ("image-url-not-a-string", {"image_urls": [{"url": OK}]}, "image_urls", "valid string"),
]


@pytest.mark.parametrize(("changes", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_network_call(emulator, context, changes, field, reason):
    op = edit_operator(OK, None, **changes)  # a change to image_urls replaces the good list whole
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as net:
        op.hook.settings  # noqa: B018 - the connection is read from the environment, not the network
        with pytest.raises(InvalidEditRequestError) as info:
            op.execute(context)
        assert net.calls.call_count == 0
    message = str(info.value)
    assert field in message
    assert reason in message  # refused for the reason the case names, not another one
    assert len(message) < 2_000  # an absurd value is quoted, not echoed in full
    counters = emulator.counters()
    assert (counters["submits"], counters["status_polls"], counters["jobs_created"]) == (0, 0, 0)
    assert context["ti"].xcom == {}
    assert context["task_state_store"] == {}


def test_http_input_is_refused_when_the_connection_disallows_it(emulator, make_conn, context):
    conn = make_conn("runcomfy_strict", allow_insecure_inputs=False)
    op = edit_operator("http://images.example.com/cat.png", None, runcomfy_conn_id=conn)
    with pytest.raises(InvalidEditRequestError, match=r"image_urls.*allow_insecure_inputs"):
        op.execute(context)
    assert emulator.counters()["submits"] == 0


def test_templated_xcom_values_of_the_wrong_type_are_refused(emulator, context):
    """What Jinja renders from an XCom without native types: strings where lists and ints belong."""
    context["ti"].pulls = {"make_list": [OK, OK], "count": 2}
    op = edit_operator(OK, None, image_urls="{{ ti.xcom_pull(task_ids='make_list') }}")
    op.render_template_fields(context)
    assert isinstance(op.image_urls, str)  # the list arrived as its repr
    with pytest.raises(InvalidEditRequestError, match="image_urls"):
        op.execute(context)
    assert emulator.counters()["submits"] == 0


def test_several_bad_fields_are_all_named_at_once(emulator, context):
    op = edit_operator("nope", None, prompt="", num_images=9, resolution="16K")
    with pytest.raises(InvalidEditRequestError) as info:
        op.execute(context)
    for field in ("prompt", "image_urls", "num_images", "resolution"):
        assert field in str(info.value)
    assert emulator.counters()["submits"] == 0


def test_bad_batch_item_fails_the_whole_batch_before_any_submit(emulator, s3_bucket, context):
    op = NanoBananaBatchEditOperator(
        task_id="batch",
        prompt="postcard",
        items=[OK, "ftp://elsewhere/cat.png"],
        output_s3_uri=f"s3://{s3_bucket}/out/",
    )
    with pytest.raises(InvalidEditRequestError, match="image_urls"):
        op.execute(context)
    assert emulator.counters()["submits"] == 0


def test_invalid_model_id_cannot_reach_another_endpoint(emulator):
    with pytest.raises(ValueError, match="model_id"):
        edit_operator(OK, None, model_id="google/../../v1/requests/x/cancel").hook  # noqa: B018


@pytest.mark.parametrize("bucket", ["Bucket_Name", "a..b", "192.168.1.1", "xn--edits"])
@pytest.mark.parametrize("where", ["output_s3_uri", "staging_s3_uri", "image_urls"])
def test_bucket_names_s3_would_refuse_fail_before_anything_is_paid_for(emulator, context, bucket, where):
    changes: dict[str, Any] = {where: f"s3://{bucket}/prefix/"}
    if where == "image_urls":
        changes[where] = [f"s3://{bucket}/cat.png"]
    with pytest.raises(InvalidEditRequestError, match="valid S3 bucket"):
        edit_operator(OK, None, **changes).execute(context)
    assert emulator.counters()["submits"] == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0])
def test_timeouts_the_clock_cannot_keep_are_refused_at_parse_time(value):
    with pytest.raises(ValueError, match="timeout"):
        edit_operator(OK, None, timeout=value)
    with pytest.raises(ValueError, match="timeout"):
        NanoBananaBatchEditOperator(
            task_id="b", prompt="p", items=[OK], output_s3_uri="s3://abc/x/", timeout=value
        )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"presign_expiry": 0}, "presign_expiry"),
        ({"presign_expiry": 8 * 24 * 3600}, "presign_expiry"),
        ({"presign_expiry": 3600.5}, "presign_expiry"),
        ({"poll_interval": float("inf")}, "poll_interval"),
        ({"poll_max_interval": float("inf")}, "poll_interval"),
        ({"poll_interval": float("nan")}, "poll_interval"),
        ({"wait_before_defer": float("inf")}, "wait_before_defer"),
        ({"min_deferral": -1}, "min_deferral"),
    ],
)
def test_times_s3_or_the_clock_cannot_honour_are_refused_at_parse_time(changes, field):
    with pytest.raises(ValueError, match=field):
        edit_operator(OK, None, **changes)
