"""The hook over real HTTP against the emulator: lifecycle, cancel, failure and every fault mode."""

from __future__ import annotations

import time

import httpx
import pytest

from airflow_provider_nanobanana.exceptions import (
    RunComfyAuthError,
    RunComfyBadRequestError,
    RunComfyNotFoundError,
    RunComfySubmitUnknownError,
)
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.models import EditRequest, JobState
from airflow_provider_nanobanana.polling import JobWatch, PollPolicy, wait_for_job


def hook_for(emulator, **overrides):
    return RunComfyHook(token=emulator.token, base_url=emulator.base_url, retry_max_wait_s=0.05, **overrides)


def edit(url, **kw):
    return EditRequest.build(prompt="paint it teal", image_urls=[url], allow_insecure_inputs=True, **kw)


def wait(hook, request_id, timeout_s=20):
    return wait_for_job(
        hook, JobWatch(request_id, time.time() + timeout_s, PollPolicy(initial_s=0.1, max_s=0.5))
    )


def test_full_lifecycle_produces_real_images(emulator, presigned_input):
    hook = hook_for(emulator)
    submitted = hook.submit(edit(presigned_input, num_images=2, output_format="webp"))
    assert hook.get_status(submitted.request_id).status.is_active
    event = wait(hook, submitted.request_id)
    assert event.status == "success", event.message
    result = hook.get_result(submitted.request_id)
    assert result.status is JobState.COMPLETED
    assert len(result.images) == 2
    body = httpx.get(result.images[0]).content
    assert body[:4] == b"RIFF"
    assert body[8:12] == b"WEBP"
    assert emulator.counters()["jobs_created"] == 1


def test_queue_positions_are_reported(emulator, presigned_input):
    emulator.configure(max_running=1, queue_s=0.0, run_s=2.0)
    hook = hook_for(emulator)
    ids = [hook.submit(edit(presigned_input, seed=i)).request_id for i in range(3)]
    time.sleep(0.3)
    states = [hook.get_status(rid) for rid in ids]
    assert states[-1].status is JobState.IN_QUEUE
    assert states[-1].queue_position is not None


def test_cancel_only_while_queued(emulator, presigned_input):
    emulator.configure(max_running=1, queue_s=0.0, run_s=3.0)
    hook = hook_for(emulator)
    running = hook.submit(edit(presigned_input)).request_id
    queued = hook.submit(edit(presigned_input, seed=1)).request_id
    time.sleep(0.3)
    assert hook.cancel(queued).cancelled
    assert hook.get_status(queued).status is JobState.CANCELLED
    refused = hook.cancel(running)
    assert not refused.cancelled


def test_failed_jobs_report_the_error(emulator, presigned_input):
    emulator.configure(failure_rate=1.0)
    hook = hook_for(emulator)
    event = wait(hook, hook.submit(edit(presigned_input)).request_id)
    assert event.status == "failed"
    assert event.message


def test_unreachable_input_fails_the_job_clearly(emulator):
    hook = hook_for(emulator)
    event = wait(hook, hook.submit(edit("http://127.0.0.1:9/missing.png")).request_id)
    assert event.status == "failed"


def test_errors_are_typed(emulator, presigned_input):
    with pytest.raises(RunComfyAuthError):
        RunComfyHook(token="wrong", base_url=emulator.base_url).get_status("abc")
    with pytest.raises(RunComfyNotFoundError):
        hook_for(emulator).get_status("does-not-exist")
    with pytest.raises(RunComfyBadRequestError):
        RunComfyHook(token=emulator.token, base_url=emulator.base_url, model_id="acme/nope").submit(
            edit(presigned_input)
        )


@pytest.mark.parametrize(
    "faults",
    [
        {"rate_429": 0.5, "retry_after_s": 0.05},
        {"rate_429": 0.5, "retry_after_s": None},
        {"rate_5xx": 0.5},
        {"rate_drop": 0.4},
        {"rate_malformed": 0.4},
        {"rate_html": 0.4},
        {"latency_s": 0.05, "slow_body_s": 0.05},
    ],
    ids=lambda f: ",".join(f),
)
def test_polling_survives_every_fault_mode(emulator, presigned_input, faults):
    hook = hook_for(emulator, max_retries=6)
    request_id = hook.submit(edit(presigned_input)).request_id
    emulator.set_faults(endpoints=["status", "result"], **faults)
    event = wait(hook, request_id, timeout_s=40)
    assert event.status == "success", event.message
    counters = emulator.counters()
    assert counters["jobs_created"] == 1
    assert counters["faults_total"] > 0


def test_a_lost_submit_response_is_not_resubmitted(emulator, presigned_input):
    emulator.set_faults(endpoints=["submit"], rate_lost_response=1.0)
    hook = hook_for(emulator)
    with pytest.raises(RunComfySubmitUnknownError):
        hook.submit(edit(presigned_input))
    assert emulator.counters()["jobs_created"] == 1  # the job exists; the client did not pay twice


def test_submits_are_retried_only_on_provable_non_delivery(emulator, presigned_input):
    emulator.set_faults(endpoints=["submit"], rate_429=1.0, retry_after_s=0.01)
    hook = hook_for(emulator, max_retries=2)
    with pytest.raises(Exception, match="429"):
        hook.submit(edit(presigned_input))
    assert emulator.counters()["jobs_created"] == 0


async def test_async_client_lifecycle(emulator, presigned_input):
    hook = hook_for(emulator)
    rid = (await hook.asubmit(edit(presigned_input))).request_id
    for _ in range(100):
        if (await hook.aget_status(rid)).status.is_terminal:
            break
        import asyncio

        await asyncio.sleep(0.1)
    assert (await hook.aget_result(rid)).images
