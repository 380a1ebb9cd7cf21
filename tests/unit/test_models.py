from __future__ import annotations

import pytest

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.models import (
    CancelOutcome,
    CancelResponse,
    EditRequest,
    EventStatus,
    JobEvent,
    JobState,
    ResultResponse,
    StatusResponse,
    SubmitResponse,
    describe_error,
    output_urls,
)

URL = "https://images.example.com/cat.png"


def build(**overrides):
    return EditRequest.build(**{"prompt": "make it blue", "image_urls": [URL], **overrides})


def test_defaults_match_the_model_schema():
    body = build().model_dump(mode="json")
    assert body == {
        "prompt": "make it blue",
        "image_urls": [URL],
        "num_images": 1,
        "seed": 0,
        "aspect_ratio": "auto",
        "resolution": "1K",
        "output_format": "png",
        "safety_tolerance": 4,
        "limit_generations": True,
        "enable_web_search": False,
    }


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   "}, "prompt", "not only whitespace"),
        ({"prompt": "x" * 10_001}, "prompt", "at most 10000"),
        ({"image_urls": []}, "image_urls", "at least 1 item"),
        ({"image_urls": [URL] * 21}, "image_urls", "at most 20 items"),
        ({"image_urls": URL}, "image_urls", "valid list"),
        ({"image_urls": ["not a url"]}, "image_urls", "https://"),
        ({"image_urls": ["file:///etc/passwd"]}, "image_urls", "https://"),
        ({"image_urls": ["http://insecure.example.com/a.png"]}, "image_urls", "allow_insecure_inputs"),
        ({"num_images": 0}, "num_images", "greater than or equal to 1"),
        ({"num_images": 5}, "num_images", "less than or equal to 4"),
        ({"num_images": "2"}, "num_images", "valid integer"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"aspect_ratio": "7:1"}, "aspect_ratio", "'21:9', '16:9'"),
        ({"resolution": "8K"}, "resolution", "'0.5K', '1K', '2K' or '4K'"),
        ({"output_format": "gif"}, "output_format", "'jpeg', 'png' or 'webp'"),
        ({"safety_tolerance": 7}, "safety_tolerance", "less than or equal to 6"),
        ({"limit_generations": "yes"}, "limit_generations", "valid boolean"),
        ({"enable_web_search": 1}, "enable_web_search", "valid boolean"),
        ({"unknown_knob": 1}, "unknown_knob", "Extra inputs are not permitted"),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(overrides, field, allowed):
    with pytest.raises(InvalidEditRequestError) as info:
        build(**overrides)
    message = str(info.value)
    assert f"{field}" in message
    assert allowed in message


def test_http_inputs_need_the_insecure_flag():
    request = build(image_urls=["http://127.0.0.1:9000/a.png"], allow_insecure_inputs=True)
    assert request.image_urls == ["http://127.0.0.1:9000/a.png"]


def test_s3_uris_pass_only_before_resolution():
    assert build(image_urls=["s3://bucket/key.png"], allow_unresolved=True).image_urls == [
        "s3://bucket/key.png"
    ]
    with pytest.raises(InvalidEditRequestError, match="image_urls"):
        build(image_urls=["s3://bucket/key.png"])


def test_signatures_never_reach_errors_or_reprs():
    signed = "https://b.s3.amazonaws.com/k.png?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef"
    request = build(image_urls=[signed])
    assert "deadbeef" not in repr(request)
    assert "AKIA123" not in str(request)
    with pytest.raises(InvalidEditRequestError) as info:
        build(image_urls=[signed.replace("https", "http")])
    assert "deadbeef" not in str(info.value)
    assert "X-Amz-Signature=***" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("in_queue", JobState.IN_QUEUE),
        ("IN_PROGRESS", JobState.IN_PROGRESS),
        ("completed", JobState.COMPLETED),
        ("succeeded", JobState.COMPLETED),
        ("failed", JobState.FAILED),
        ("error", JobState.FAILED),
        ("canceled", JobState.CANCELLED),
        ("queued", JobState.IN_QUEUE),
        ("exploded", JobState.UNKNOWN),
        (None, JobState.UNKNOWN),
    ],
)
def test_states_parse_leniently(raw, state):
    assert JobState.parse(raw) is state


def test_state_sets():
    assert {s for s in JobState if s.is_terminal} == {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    assert {s for s in JobState if s.is_active} == {JobState.IN_QUEUE, JobState.IN_PROGRESS}
    assert not JobState.UNKNOWN.is_terminal
    assert not JobState.UNKNOWN.is_active


def test_responses_keep_unknown_fields_and_tolerate_missing_ones():
    status = StatusResponse.model_validate({"status": "in_queue", "queue_position": 3, "eta": 12})
    assert status.status is JobState.IN_QUEUE
    assert status.queue_position == 3
    assert status.model_extra == {"eta": 12}
    weird = StatusResponse.model_validate({"status": "warming_up"})
    assert weird.status is JobState.UNKNOWN
    assert weird.status_text == "warming_up"
    submit = SubmitResponse.model_validate({"request_id": "abc-123"})
    assert submit.status_url is None


@pytest.mark.parametrize("bad_id", ["", "../admin", "a/b", "x" * 129, "id?x=1"])
def test_unsafe_request_ids_are_refused(bad_id):
    with pytest.raises(ValueError, match="request_id"):
        SubmitResponse.model_validate({"request_id": bad_id})


@pytest.mark.parametrize(
    ("output", "urls"),
    [
        ({"images": ["https://c/1.png", "https://c/2.png"]}, ["https://c/1.png", "https://c/2.png"]),
        ({"image": "https://c/1.png"}, ["https://c/1.png"]),
        (
            {"images": [{"url": "https://c/1.png"}, {"url": "https://c/2.png"}]},
            ["https://c/1.png", "https://c/2.png"],
        ),
        ({"video": "https://c/v.mp4", "images": ["https://c/1.png"]}, ["https://c/1.png", "https://c/v.mp4"]),
        ({"result": {"files": ["https://c/x.webp", "not-a-url"]}}, ["https://c/x.webp"]),
        ("https://c/only.png", ["https://c/only.png"]),
        ({"images": ["https://c/1.png", "https://c/1.png"]}, ["https://c/1.png"]),
        (None, []),
    ],
)
def test_output_urls_normalise_every_shape(output, urls):
    assert output_urls(output) == urls


def test_result_never_walks_outside_output():
    result = ResultResponse.model_validate(
        {
            "status": "completed",
            "status_url": "https://api/x/status",
            "output": {"images": ["https://c/1.png"]},
        }
    )
    assert result.images == ["https://c/1.png"]


@pytest.mark.parametrize(
    ("error", "text"),
    [
        ("boom", "boom"),
        ({"type": "model_error", "message": "NSFW"}, "model_error: NSFW"),
        ({"detail": "bad"}, "bad"),
        (None, ""),
    ],
)
def test_error_descriptions(error, text):
    assert describe_error(error) == text


def test_cancel_outcomes():
    assert CancelResponse.model_validate({"outcome": "cancelled"}).cancelled
    assert CancelResponse.model_validate({"status": "canceled"}).cancelled
    refused = CancelResponse.model_validate({"status": "in_progress", "outcome": "not_cancellable"})
    assert not refused.cancelled
    assert refused.outcome is CancelOutcome.NOT_CANCELLABLE
    assert CancelResponse.model_validate({"outcome": "later"}).outcome is CancelOutcome.UNKNOWN


@pytest.mark.parametrize("status", list(EventStatus))
def test_an_event_payload_holds_its_status_as_a_plain_string(status):
    # Trigger rows and XCom hold JSON: the payload must not carry the enum, and must read back as it.
    payload = JobEvent(status=status, request_id="r1").model_dump(mode="json")
    assert type(payload["status"]) is str
    assert payload["status"] == status.value
    assert JobEvent.model_validate(payload).status is status


def test_an_event_with_an_unknown_status_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'success'.*'failed'.*'cancelled'.*'timeout'.*'error'"):
        JobEvent.model_validate({"status": "done", "request_id": "r1"})
