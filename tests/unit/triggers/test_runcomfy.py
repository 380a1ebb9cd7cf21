"""The trigger against mocked HTTP: one terminal event per run, serialization, cleanup."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import respx

from airflow_provider_nanobanana.hooks.per_loop import waiters_on_loop, waiting_on_loop
from airflow_provider_nanobanana.triggers import runcomfy as runcomfy_trigger
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
from tests.fakes import record_async_sleeps

BASE = "https://api.test"
RID = "req_42"
STATUS = f"{BASE}/v1/requests/{RID}/status"
RESULT = f"{BASE}/v1/requests/{RID}/result"
CANCEL = f"{BASE}/v1/requests/{RID}/cancel"
TOKEN = "trigger-token-SECRET"


@pytest.fixture(autouse=True)
def connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps(
            {"conn_type": "runcomfy", "host": BASE, "password": TOKEN, "extra": {"retry_max_wait_s": 0.01}}
        ),
    )


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    """Polls happen back to back; the backoff itself is tested in test_polling."""
    import asyncio

    real_sleep = asyncio.sleep
    monkeypatch.setattr("airflow_provider_nanobanana.polling.asyncio.sleep", lambda _s: real_sleep(0))


def trigger(deadline_in_s=60.0, **kw):
    return RunComfyJobTrigger(request_id=RID, deadline_epoch_s=time.time() + deadline_in_s, **kw)


async def events_of(t):
    return [e.payload async for e in t.run()]


def test_serialize_carries_ids_and_settings_only():
    t = RunComfyJobTrigger(
        request_id=RID, deadline_epoch_s=1234.5, runcomfy_conn_id="rc", poll_interval_s=1, poll_max_s=9
    )
    path, kwargs = t.serialize()
    assert path == "airflow_provider_nanobanana.triggers.runcomfy.RunComfyJobTrigger"
    assert kwargs == {
        "kwargs_version": 2,
        "request_id": RID,
        "deadline_epoch_s": 1234.5,
        "runcomfy_conn_id": "rc",
        "poll_interval_s": 1,
        "poll_max_s": 9,
        "cancel_on_kill": True,
        "release_not_before_epoch_s": None,
    }
    assert TOKEN not in json.dumps(kwargs)
    assert RunComfyJobTrigger(**kwargs).serialize() == (path, kwargs)


def test_bad_request_ids_are_refused_before_serializing():
    with pytest.raises(ValueError, match="request_id"):
        RunComfyJobTrigger(request_id="../x", deadline_epoch_s=1)


@respx.mock
async def test_success_after_queue_and_progress():
    respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(200, json={"status": "in_queue", "queue_position": 1}),
            httpx.Response(200, json={"status": "in_progress"}),
            httpx.Response(200, json={"status": "completed"}),
        ]
    )
    result = respx.get(RESULT)
    events = await events_of(trigger())
    assert len(events) == 1
    assert events[0]["status"] == "success"
    assert type(events[0]["status"]) is str  # plain JSON in the trigger row, not the enum
    assert "images" not in events[0]  # a verdict: the worker fetches the result once
    assert result.call_count == 0


@respx.mock
async def test_only_state_changes_are_logged_at_info():
    """A triggerer's log lines pass through its supervisor: 10,000 triggers logging every queue move
    at INFO filled that channel until the triggerer stalled. Queue moves go to DEBUG."""
    queued = [httpx.Response(200, json={"status": "in_queue", "queue_position": p}) for p in (5, 4, 3, 2, 1)]
    running = [httpx.Response(200, json={"status": "in_progress"})] * 3
    respx.get(STATUS).mock(side_effect=[*queued, *running, httpx.Response(200, json={"status": "completed"})])
    respx.get(RESULT)
    t = trigger()
    t._log = RecordingLog()
    await events_of(t)
    progress = [(level, line) for level, line in t._log.lines if line.startswith(f"{RID}: ")]
    info = [line for level, line in progress if level == logging.INFO]
    assert len(info) == 1, info
    assert "in_progress" in info[0]
    assert "in_queue" in progress[0][1]
    assert progress[0][0] == logging.DEBUG  # the first answer: see the test below
    assert sum(level == logging.DEBUG for level, _ in progress) >= 5


@respx.mock
async def test_the_first_answer_is_logged_at_debug():
    """Every trigger of a pickup answers at once; one INFO line each held a 10,000-trigger loop for
    1.6 s (docs/benchmarks-loop-blocks.md). Airflow logs the trigger's start anyway."""
    respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(200, json={"status": "in_progress"}),
            httpx.Response(200, json={"status": "completed"}),
        ]
    )
    t = trigger()
    t._log = RecordingLog()
    await events_of(t)
    progress = [(level, line) for level, line in t._log.lines if line.startswith(f"{RID}: ")]
    assert progress
    assert all(level == logging.DEBUG for level, _ in progress), progress


@respx.mock
async def test_state_changes_go_to_debug_on_a_crowded_triggerer(monkeypatch):
    """Each log line is a blocking write to the triggerer's supervisor; with thousands of triggers
    starting, one state line held the event loop for a second (docs/benchmarks-loop-blocks.md)."""
    monkeypatch.setattr(runcomfy_trigger, "INFO_LOG_MAX_WAITERS", 2)
    respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(200, json={"status": "in_queue", "queue_position": 1}),
            httpx.Response(200, json={"status": "in_progress"}),
            httpx.Response(200, json={"status": "completed"}),
        ]
    )
    t = trigger()
    t._log = RecordingLog()
    with waiting_on_loop(), waiting_on_loop():  # two other waiters: this one makes three
        await events_of(t)
        assert waiters_on_loop() == 2  # the finished trigger no longer counts
    progress = [(level, line) for level, line in t._log.lines if line.startswith(f"{RID}: ")]
    assert [line for _, line in progress if "in_progress" in line], progress
    assert all(level == logging.DEBUG for level, _ in progress), progress
    assert waiters_on_loop() == 0


class RecordingLog:
    """Airflow's triggers log through structlog, which pytest's caplog does not see."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def log(self, level: int, msg: str, *args: object) -> None:
        self.lines.append((level, msg % args if args else msg))

    def info(self, msg: str, *args: object) -> None:
        self.log(logging.INFO, msg, *args)

    def debug(self, msg: str, *args: object) -> None:
        self.log(logging.DEBUG, msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        self.log(logging.ERROR, msg, *args)


KWARGS_0_1_0 = {
    "request_id": RID,
    "deadline_epoch_s": 4102444800.0,
    "runcomfy_conn_id": "runcomfy_default",
    "poll_interval_s": 2.0,
    "poll_max_s": 30.0,
    "cancel_on_kill": True,
}


def test_kwargs_serialized_by_0_1_0_still_build_a_trigger_and_a_newer_version_is_refused():
    t = RunComfyJobTrigger(**KWARGS_0_1_0)
    assert t.release_not_before_epoch_s is None
    assert t.serialize()[1] == {**KWARGS_0_1_0, "kwargs_version": 2, "release_not_before_epoch_s": None}
    with pytest.raises(ValueError, match="kwargs version 3"):
        RunComfyJobTrigger(**{**KWARGS_0_1_0, "kwargs_version": 3})


@respx.mock
async def test_the_event_is_held_until_the_release_time(monkeypatch):
    """Airflow's defer-exit race: an event that fires seconds after deferring can fail the task."""

    slept = record_async_sleeps(monkeypatch)  # still yields: the connection lookup's thread answers
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "completed"}))
    (event,) = await events_of(trigger(release_not_before_epoch_s=time.time() + 40))
    assert event["status"] == "success"
    assert slept
    assert 35 < slept[-1] <= 40
    slept.clear()
    await events_of(trigger(release_not_before_epoch_s=time.time() - 1))
    assert slept == []


@respx.mock
async def test_failure_carries_the_server_message():
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "failed"}))
    respx.get(RESULT).mock(
        return_value=httpx.Response(200, json={"status": "failed", "error": {"message": "content policy"}})
    )
    (event,) = await events_of(trigger())
    assert event["status"] == "failed"
    assert "content policy" in event["message"]


@respx.mock
async def test_cancelled_is_not_success():
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "cancelled"}))
    respx.get(RESULT).mock(return_value=httpx.Response(200, json={"status": "cancelled"}))
    (event,) = await events_of(trigger())
    assert event["status"] == "cancelled"


@respx.mock
async def test_deadline_in_the_past_times_out_without_polling():
    route = respx.get(STATUS)
    (event,) = await events_of(trigger(deadline_in_s=-1))
    assert event["status"] == "timeout"
    assert route.call_count == 0


@respx.mock
async def test_unknown_state_keeps_polling_until_the_deadline():
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "thawing"}))
    (event,) = await events_of(trigger(deadline_in_s=0.3))
    assert event["status"] == "timeout"
    assert "thawing" in event["message"]


@respx.mock
async def test_a_storm_of_5xx_is_survived():
    respx.get(STATUS).mock(
        side_effect=[httpx.Response(503)] * 12 + [httpx.Response(200, json={"status": "completed"})]
    )
    respx.get(RESULT).mock(
        return_value=httpx.Response(
            200, json={"status": "completed", "output": {"images": ["https://x.runcomfy.net/1.png"]}}
        )
    )
    (event,) = await events_of(trigger())
    assert event["status"] == "success"


@respx.mock
async def test_permanent_errors_end_with_one_error_event():
    route = respx.get(STATUS).mock(return_value=httpx.Response(401, json={"error_message": "token revoked"}))
    (event,) = await events_of(trigger())
    assert event["status"] == "error"
    assert "token revoked" in event["message"]
    assert route.call_count == 1
    assert TOKEN not in json.dumps(event)


@respx.mock
async def test_on_kill_cancels_only_a_queued_job():
    cancel = respx.post(CANCEL).mock(
        return_value=httpx.Response(200, json={"status": "cancelled", "outcome": "cancelled"})
    )
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "in_progress"}))
    await trigger().on_kill()
    assert cancel.call_count == 0
    respx.get(STATUS).mock(return_value=httpx.Response(200, json={"status": "in_queue"}))
    await trigger().on_kill()
    assert cancel.call_count == 1
    await trigger(cancel_on_kill=False).on_kill()
    assert cancel.call_count == 1


@respx.mock
async def test_on_kill_never_raises():
    respx.get(STATUS).mock(side_effect=httpx.ConnectError("down"))
    await trigger().on_kill()


@respx.mock
async def test_cleanup_never_cancels():
    """cleanup() also runs on triggerer restarts and reassignment: the job must live on."""
    cancel = respx.post(CANCEL)
    await trigger().cleanup()
    assert cancel.call_count == 0


@respx.mock
async def test_every_trigger_on_a_loop_shares_one_poll_budget(monkeypatch):
    """The budget protects the triggerer's loop only if it is per process, not per trigger."""
    import asyncio

    from airflow_provider_nanobanana.polling import PollBudget

    used: set[int] = set()
    real_slot = PollBudget.slot

    def recording_slot(self):
        used.add(id(self))
        return real_slot(self)

    monkeypatch.setattr(PollBudget, "slot", recording_slot)
    respx.get(url__regex=r".*/status$").mock(
        side_effect=[httpx.Response(200, json={"status": "in_queue"})] * 4
        + [httpx.Response(200, json={"status": "completed"})] * 4
    )
    triggers = [RunComfyJobTrigger(request_id=f"r{n}", deadline_epoch_s=time.time() + 60) for n in range(4)]
    events = await asyncio.gather(*(events_of(t) for t in triggers))
    assert [e[0]["status"] for e in events] == ["success"] * 4
    assert len(used) == 1
