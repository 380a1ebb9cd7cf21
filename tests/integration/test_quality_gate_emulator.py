"""The output quality gate through the edit operator: real HTTP (emulator) and a real S3 API (moto).

Paid requests are counted where they are paid: the emulator's ``submits`` (POSTs).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_nanobanana.media.quality import BadOutputError
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from tests.fakes import new_context
from tests.integration.test_operator_emulator import run_deferred

pytestmark = pytest.mark.usefixtures("airflow_connections")

PROMPT = "turn the sky purple"


@pytest.fixture
def context():
    return new_context()


def operator(input_uri: str, bucket: str, **kw: Any) -> NanoBananaEditOperator:
    params: dict[str, Any] = {
        "task_id": "edit",
        "prompt": PROMPT,
        "image_urls": [input_uri],
        "output_s3_uri": f"s3://{bucket}/edited/",
        "poll_interval": 0.1,
        "poll_max_interval": 0.3,
        "timeout": 60,
    }
    return NanoBananaEditOperator(**{**params, **kw})


def stored(moto_s3: Any, bucket: str) -> list[str]:
    listing = moto_s3.client().list_objects_v2(Bucket=bucket, Prefix="edited/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def manifest(moto_s3: Any, uri: str) -> dict[str, Any]:
    bucket, _, key = uri[5:].partition("/")
    return json.loads(moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_blank_output_fails_the_task_by_default_and_nothing_is_archived(
    emulator, moto_s3, input_image, s3_bucket, context
):
    task = operator(input_image, s3_bucket, prompt=f"{PROMPT} [bad_output:blank]")
    with pytest.raises(BadOutputError, match=r"output 0: a uniform blank") as info:
        run_deferred(task, context)
    assert info.value.problems.keys() == {"0"}
    assert stored(moto_s3, s3_bucket) == []  # no image, no manifest
    assert emulator.counters()["submits"] == 1


def test_only_the_bad_output_of_several_is_named(emulator, moto_s3, input_image, s3_bucket, context):
    task = operator(input_image, s3_bucket, prompt=f"{PROMPT} [bad_output:blank]", num_images=2)
    with pytest.raises(BadOutputError) as info:
        run_deferred(task, context)
    assert info.value.problems.keys() == {"0"}
    keys = stored(moto_s3, s3_bucket)
    assert len(keys) == 1
    assert keys[0].endswith("_1.png")  # the good one is in; it is reused if the task is retried


def test_keep_archives_a_blank_and_flags_it_in_the_manifest_and_xcom(
    emulator, moto_s3, input_image, s3_bucket, context
):
    task = operator(input_image, s3_bucket, prompt=f"{PROMPT} [bad_output:blank]", on_bad_output="keep")
    result = run_deferred(task, context)
    assert len(result["archived"]) == 1
    assert result["quality"]["0"].startswith("a uniform blank")
    assert result["paid_requests"] == 1
    document = manifest(moto_s3, result["manifest"])
    assert document["quality"] == result["quality"]
    assert document["paid_requests"] == 1
    assert emulator.counters()["submits"] == 1


def test_a_clean_output_is_recorded_as_checked(emulator, moto_s3, input_image, s3_bucket, context):
    result = run_deferred(operator(input_image, s3_bucket), context)
    assert result["quality"] == {}
    assert manifest(moto_s3, result["manifest"])["quality"] == {}


def test_resubmit_pays_exactly_once_more_and_archives_the_good_output(
    emulator, moto_s3, input_image, s3_bucket, context, capsys
):
    emulator.set_faults(bad_output="blank", bad_output_jobs=1)  # the first job is blank, the next is not
    task = operator(input_image, s3_bucket, on_bad_output="resubmit")
    result = run_deferred_through_resubmits(task, context)
    assert emulator.counters()["submits"] == 2
    assert result["paid_requests"] == 2
    assert result["quality"] == {}
    assert manifest(moto_s3, result["manifest"])["paid_requests"] == 2
    assert "Paying again" in capsys.readouterr().out  # Airflow's task log (structlog) goes to stdout
    assert context["ti"].xcom["runcomfy_request_id"] == result["request_id"]  # the new request


def test_resubmit_is_bounded_then_fails_naming_the_paid_requests(
    emulator, moto_s3, input_image, s3_bucket, context
):
    from airflow_provider_nanobanana._compat import AirflowFailException

    task = operator(input_image, s3_bucket, prompt=f"{PROMPT} [bad_output:blank]", on_bad_output="resubmit")
    # resubmits used up: fail without a retry (a retry would only re-attach to the same bad outputs)
    with pytest.raises(AirflowFailException, match=r"after 2 paid request\(s\)"):
        run_deferred_through_resubmits(task, context)
    assert emulator.counters()["submits"] == 2  # max_resubmits=1: one more, never a third
    assert stored(moto_s3, s3_bucket) == []


def test_max_resubmits_zero_never_pays_again(emulator, input_image, s3_bucket, context):
    from airflow_provider_nanobanana._compat import AirflowFailException

    task = operator(
        input_image,
        s3_bucket,
        prompt=f"{PROMPT} [bad_output:blank]",
        on_bad_output="resubmit",
        max_resubmits=0,
    )
    with pytest.raises(AirflowFailException, match="the output quality gate rejected"):
        run_deferred_through_resubmits(task, context)
    assert emulator.counters()["submits"] == 1


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        ("zero_bytes", r"output 0: the output is empty \(0 bytes\)"),
        ("truncated", r"output 0: does not decode as PNG"),
        ("undecodable", r"output 0: does not decode as PNG"),
        ("bomb", r"output 0: refused without decoding"),
    ],
)
def test_each_file_defect_fails_the_task(
    emulator, moto_s3, input_image, s3_bucket, context, defect, expected
):
    task = operator(input_image, s3_bucket, prompt=f"{PROMPT} [bad_output:{defect}]")
    with pytest.raises(BadOutputError, match=expected):
        run_deferred(task, context)
    assert stored(moto_s3, s3_bucket) == []


def test_an_empty_url_fails_on_the_count_before_any_download(
    emulator, moto_s3, input_image, s3_bucket, context
):
    task = operator(input_image, s3_bucket, prompt=f"{PROMPT} [bad_output:empty_url]", num_images=2)
    with pytest.raises(BadOutputError, match=r"the request: 1 output URL\(s\) for num_images=2"):
        run_deferred(task, context)
    assert emulator.counters()["file_requests"] == 0


def test_keep_flags_a_short_count_but_cannot_keep_nothing(emulator, moto_s3, input_image, s3_bucket, context):
    task = operator(
        input_image,
        s3_bucket,
        prompt=f"{PROMPT} [bad_output:wrong_count]",
        num_images=2,
        on_bad_output="keep",
    )
    result = run_deferred(task, context)
    assert len(result["archived"]) == 1
    assert result["quality"].keys() == {"count"}
    single = operator(
        input_image,
        s3_bucket,
        prompt=f"{PROMPT} [bad_output:wrong_count]",
        on_bad_output="keep",
        task_id="one",
    )
    with pytest.raises(BadOutputError, match="returned no output URLs"):
        run_deferred(single, new_context())


@pytest.mark.parametrize(("field", "value"), [("on_bad_output", "retry"), ("max_resubmits", -1)])
def test_a_bad_policy_is_refused_at_parse_time(field, value):
    with pytest.raises(ValueError, match=field):
        NanoBananaEditOperator(task_id="t", prompt="p", image_urls=["https://x.test/a.png"], **{field: value})


def run_deferred_through_resubmits(task: NanoBananaEditOperator, context: Any) -> dict[str, Any]:
    """Like ``run_deferred``, but a resubmit defers again: follow each deferral, passing its kwargs on."""
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

    return follow_deferrals(task, context, RunComfyJobTrigger)


def follow_deferrals(task: Any, context: Any, trigger_class: Any) -> dict[str, Any]:
    """execute, then each trigger (rebuilt from its kwargs, as a triggerer would) on an event loop and
    the method it resumes, with the deferral's kwargs, as often as the task defers again."""
    import asyncio

    from airflow_provider_nanobanana._compat import TaskDeferred

    async def first_event(trigger: Any) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    method: Any = task.execute
    args: tuple[Any, ...] = (context,)
    extra: dict[str, Any] = {}
    for _ in range(5):
        try:
            return dict(method(*args, **extra))
        except TaskDeferred as deferred:
            _path, kwargs = deferred.trigger.serialize()
            payload = asyncio.run(first_event(trigger_class(**json.loads(json.dumps(kwargs)))))
            method, args = getattr(task, deferred.method_name), (context, payload)
            extra = dict(deferred.kwargs or {})
    raise AssertionError("more deferrals than resubmits allow")


# --- the batch operator: a bad item ends failed_quality / flagged / paid again, the others unaffected ---


def batch_items(input_uri: str, bad: str | None = "blank") -> list[dict[str, Any]]:
    marker = f" [bad_output:{bad}]" if bad else ""
    return [
        {"id": "good-1", "image_urls": [input_uri], "prompt": "make it purple"},
        {"id": "bad", "image_urls": [input_uri], "prompt": f"make it green{marker}"},
        {"id": "good-2", "image_urls": [input_uri], "prompt": "make it blue"},
    ]


def run_batch_through_deferrals(task: Any, context: Any) -> dict[str, Any]:
    """execute, then each batch trigger and execute_complete, as often as the task defers."""
    from airflow_provider_nanobanana.triggers.batch import RunComfyBatchTrigger

    return follow_deferrals(task, context, RunComfyBatchTrigger)


def batch(bucket: str, items: list[dict[str, Any]], **kw: Any) -> Any:
    from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator

    params: dict[str, Any] = {
        "task_id": "batch",
        "prompt": "unused",
        "items": items,
        "output_s3_uri": f"s3://{bucket}/out/",
        "resolution": "0.5K",
        "poll_interval": 0.05,
        "poll_max_interval": 0.3,
        "timeout": 120,
    }
    return NanoBananaBatchEditOperator(**{**params, **kw})


def batch_manifest(moto_s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    s3 = moto_s3.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    (key,) = [k for k in keys if k.endswith("_batch/manifest.json")]
    document = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return {item["id"]: item for item in document["items"]}


def batch_context() -> dict[str, Any]:
    return new_context(task_id="batch", run_id="manual__1", map_index=-1)


def test_batch_a_bad_item_ends_failed_quality_and_fails_the_task_by_default(
    emulator, moto_s3, input_image, s3_bucket
):
    from airflow_provider_nanobanana.exceptions import RunComfyJobFailedError

    with pytest.raises(
        RunComfyJobFailedError, match=r"1 of 3 items failed .*bad: .*output 0: a uniform blank"
    ):
        run_batch_through_deferrals(batch(s3_bucket, batch_items(input_image)), batch_context())
    items = batch_manifest(moto_s3, s3_bucket)
    assert {i: item["state"] for i, item in items.items()} == {
        "good-1": "archived",
        "bad": "failed_quality",
        "good-2": "archived",
    }
    assert items["bad"]["archived"] == []
    assert items["bad"]["quality"]["0"].startswith("a uniform blank")
    assert emulator.counters()["submits"] == 3


def test_batch_keep_archives_and_flags_only_the_bad_item(emulator, moto_s3, input_image, s3_bucket):
    result = run_batch_through_deferrals(
        batch(s3_bucket, batch_items(input_image), on_bad_output="keep"), batch_context()
    )
    assert result["counts"] == {"archived": 3}
    items = batch_manifest(moto_s3, s3_bucket)
    assert items["bad"]["quality"]["0"].startswith("a uniform blank")
    assert len(items["bad"]["archived"]) == 1
    assert items["good-1"]["quality"] == items["good-2"]["quality"] == {}


def test_batch_resubmit_pays_once_more_for_the_bad_item_only(emulator, moto_s3, input_image, s3_bucket):
    emulator.set_faults(bad_output="blank", bad_output_jobs=1)  # whichever job comes first is blank
    result = run_batch_through_deferrals(
        batch(s3_bucket, batch_items(input_image, bad=None), on_bad_output="resubmit"), batch_context()
    )
    assert result["counts"] == {"archived": 3}
    assert emulator.counters()["submits"] == 4  # 3 items + exactly one resubmit
    items = batch_manifest(moto_s3, s3_bucket)
    assert all(item["quality"] == {} for item in items.values())


def test_batch_resubmit_is_bounded(emulator, moto_s3, input_image, s3_bucket):
    task = batch(s3_bucket, batch_items(input_image), on_bad_output="resubmit", max_failed_fraction=1.0)
    result = run_batch_through_deferrals(task, batch_context())
    assert result["counts"] == {"archived": 2, "failed_quality": 1}
    assert emulator.counters()["submits"] == 4  # the bad item paid twice (max_resubmits=1), never three times


def test_batch_keep_never_indexes_a_flagged_output_for_reuse(emulator, moto_s3, input_image, s3_bucket):
    """A blank kept under ``keep`` is archived and flagged; a later ``reuse_outputs`` run must pay for
    that edit again instead of copying the blank as if it were clean (the good items are reused)."""
    task = batch(s3_bucket, batch_items(input_image), on_bad_output="keep", reuse_outputs=True)
    first = run_batch_through_deferrals(task, batch_context())
    assert first["counts"] == {"archived": 3}
    assert emulator.counters()["submits"] == 3
    again = batch(s3_bucket, batch_items(input_image), on_bad_output="keep", reuse_outputs=True)
    second = run_batch_through_deferrals(
        again, new_context(task_id="batch", run_id="manual__2", map_index=-1)
    )
    assert second["reused"] == 2  # the two clean items
    assert emulator.counters()["submits"] == 4  # the flagged one was paid for again, not laundered


def first_event(deferred: Any) -> dict[str, Any]:
    """The event of a deferral's trigger, rebuilt from its kwargs and run as a triggerer would."""
    import asyncio

    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger

    async def run(trigger: Any) -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    _path, kwargs = deferred.trigger.serialize()
    return asyncio.run(run(RunComfyJobTrigger(**json.loads(json.dumps(kwargs)))))


def test_a_retry_that_reattaches_to_a_resubmit_never_pays_past_max_resubmits(
    emulator, moto_s3, input_image, s3_bucket
):
    """Try 1 pays twice (max_resubmits=1) and dies waiting; try 2 re-attaches and must not pay a third time."""
    from airflow_provider_nanobanana._compat import AirflowFailException, TaskDeferred
    from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
    from tests.fakes import StateStore

    emulator.configure(queue_s=0.3, run_s=0.1)
    store = StateStore()  # what survives between tries (Airflow 3.3's task state store)
    kw = {"prompt": f"{PROMPT} [bad_output:blank]", "on_bad_output": "resubmit", "wait_before_defer": 0}
    task, context = operator(input_image, s3_bucket, **kw), new_context(store)
    with pytest.raises(TaskDeferred) as first:
        task.execute(context)
    with pytest.raises(TaskDeferred) as second:
        task.execute_complete(context, first_event(first.value))  # bad: paid request 2, deferred again
    assert second.value.kwargs == {"paid_requests": 2}
    assert emulator.counters()["submits"] == 2  # ... and the worker dies here
    retry = operator(input_image, s3_bucket, **kw)
    with pytest.raises(AirflowFailException, match=r"after 2 paid request\(s\)"):
        follow_deferrals(retry, new_context(store, try_number=2), RunComfyJobTrigger)
    assert emulator.counters()["submits"] == 2  # 1 + max_resubmits, across both tries
