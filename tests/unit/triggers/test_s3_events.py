"""The S3 new-objects watcher against mocked SQS: one event per batch, delete after the event, backoff."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx
from botocore.credentials import Credentials

from airflow_provider_nanobanana.events.sqs import AwsAccess, SqsError
from airflow_provider_nanobanana.triggers import s3_events
from airflow_provider_nanobanana.triggers.s3_events import S3NewObjectsTrigger
from tests.fakes import record_async_sleeps

ENDPOINT = "https://sqs.eu-west-1.amazonaws.com/"
QUEUE = f"{ENDPOINT}123456789012/new-images"
SECRET = "SECRET-KEY-never-sent"


def notification(*keys: str) -> str:
    records = [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": k, "eTag": "e"}}}
        for k in keys
    ]
    return json.dumps({"Records": records})


TEST_EVENT = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})


def message(i: int, body: str) -> dict[str, Any]:
    return {"MessageId": f"m{i}", "ReceiptHandle": f"h{i}", "Body": body}


class FakeSqs:
    """SQS's JSON protocol: queued answers to ReceiveMessage, a log of every call."""

    def __init__(self, receives: list[httpx.Response]) -> None:
        self.receives = receives
        self.calls: list[tuple[str, dict[str, Any], httpx.Headers]] = []
        self.two_deletes = asyncio.Event()
        self.first_delete = asyncio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        action = request.headers["X-Amz-Target"].removeprefix("AmazonSQS.")
        self.calls.append((action, json.loads(request.content), request.headers))
        if action == "DeleteMessageBatch":
            self.first_delete.set()
            if self.actions().count(action) >= 2:
                self.two_deletes.set()
            return httpx.Response(
                200, json={"Successful": [{"Id": e["Id"]} for e in json.loads(request.content)["Entries"]]}
            )
        if self.receives:
            return self.receives.pop(0)
        return httpx.Response(200, json={})

    def actions(self) -> list[str]:
        return [a for a, _, _ in self.calls]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The trigger's monotonic clock: ``clock[0]``, moved only by the trigger's (fake) sleeps."""
    now = [1000.0]
    monkeypatch.setattr(s3_events, "_now", lambda: now[0])
    return now


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch, clock: list[float]) -> list[float]:
    return record_async_sleeps(monkeypatch, clock)


@pytest.fixture
def resolutions(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Access is resolved without Airflow: fixed credentials; each resolution is recorded."""
    seen: list[str | None] = []

    async def resolve(conn_id: str | None, region: str | None, queue_url: str) -> AwsAccess:
        seen.append(conn_id)
        return AwsAccess(Credentials("AKIDEXAMPLE", SECRET), region or "eu-west-1")

    monkeypatch.setattr(s3_events, "resolve_access", resolve)
    return seen


def serve(fake: FakeSqs) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False)
    router.post(ENDPOINT).mock(side_effect=fake)
    return router


def test_serialize_round_trips_and_names_no_secret() -> None:
    trigger = S3NewObjectsTrigger(queue_url=QUEUE, aws_conn_id="aws_x", wait_time_s=5, max_messages=3)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_nanobanana.triggers.s3_events.S3NewObjectsTrigger"
    assert kwargs == {
        "queue_url": QUEUE,
        "aws_conn_id": "aws_x",
        "region_name": None,
        "wait_time_s": 5,
        "max_messages": 3,
        "max_batch_messages": 100,
        "visibility_timeout_s": None,
        "ack_delay_s": s3_events.ACK_DELAY_S,
    }
    assert S3NewObjectsTrigger(**kwargs).serialize() == (path, kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue_url": "new-images"}, "queue_url"),
        ({"queue_url": QUEUE, "wait_time_s": 21}, "wait_time_s"),
        ({"queue_url": QUEUE, "max_messages": 0}, "max_messages"),
        ({"queue_url": QUEUE, "max_messages": 11}, "max_messages"),
        ({"queue_url": QUEUE, "max_batch_messages": 0}, "max_batch_messages"),
        ({"queue_url": QUEUE, "max_batch_messages": 2.5}, "max_batch_messages"),
        ({"queue_url": QUEUE, "wait_time_s": True}, "wait_time_s"),
        ({"queue_url": QUEUE, "visibility_timeout_s": 43201}, "visibility_timeout_s"),
        ({"queue_url": QUEUE, "visibility_timeout_s": -1}, "visibility_timeout_s"),
        ({"queue_url": QUEUE, "visibility_timeout_s": "60"}, "visibility_timeout_s"),
        ({"queue_url": QUEUE, "visibility_timeout_s": 10}, "longer than ack_delay_s"),
        ({"queue_url": QUEUE, "ack_delay_s": -1}, "ack_delay_s"),
        ({"queue_url": QUEUE, "ack_delay_s": float("inf")}, "ack_delay_s"),
    ],
)
def test_bad_settings_are_refused_at_parse_time(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        S3NewObjectsTrigger(**kwargs)


async def test_one_event_per_batch_and_messages_deleted_only_after_it(sleeps, resolutions) -> None:
    fake = FakeSqs(
        [
            httpx.Response(200, json={"Messages": [message(1, TEST_EVENT)]}),
            httpx.Response(200, json={}),  # the burst ends: nothing else arrived
            httpx.Response(
                200,
                json={
                    "Messages": [
                        message(2, notification("in%2Fa+b.png")),
                        message(3, notification("in/c.png")),
                    ]
                },
            ),
        ]
    )
    trigger = S3NewObjectsTrigger(queue_url=QUEUE, wait_time_s=7)
    with serve(fake):
        run = trigger.run()
        event = await run.__anext__()
        # The test event was acknowledged without an event; the batch is not deleted yet.
        assert fake.actions() == ["ReceiveMessage"] * 2 + ["DeleteMessageBatch"] + ["ReceiveMessage"] * 2
        assert [o["key"] for o in event.payload["objects"]] == ["in/a b.png", "in/c.png"]
        assert event.payload["message_ids"] == ["m2", "m3"]
        # Pull on: the batch is deleted after the event was taken, then the watch goes on.
        pending = asyncio.ensure_future(run.__anext__())
        await asyncio.wait_for(fake.two_deletes.wait(), timeout=10)
        pending.cancel()
    deletes = [body for action, body, _ in fake.calls if action == "DeleteMessageBatch"]
    assert [[e["ReceiptHandle"] for e in d["Entries"]] for d in deletes] == [["h1"], ["h2", "h3"]]
    receive = fake.calls[0]
    assert (receive[1]["QueueUrl"], receive[1]["WaitTimeSeconds"]) == (QUEUE, 7)
    auth = receive[2]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/sqs/aws4_request" in auth
    assert all(SECRET not in str(headers) for _, _, headers in fake.calls)
    assert resolutions == ["aws_default"], "access is resolved once, not per receive"


async def test_a_batch_is_deleted_only_after_its_event_had_time_to_reach_the_database(
    sleeps, resolutions, clock
) -> None:
    """Yielded = in the triggerer's memory only: the messages stay until ``ack_delay_s`` has passed."""
    fake = FakeSqs([httpx.Response(200, json={"Messages": [message(1, notification("k.png"))]})])
    with serve(fake):
        run = S3NewObjectsTrigger(queue_url=QUEUE, wait_time_s=20, ack_delay_s=15).run()
        await run.__anext__()
        yielded_at = clock[0]
        pending = asyncio.ensure_future(run.__anext__())  # the triggerer resumes the watch at once
        await asyncio.wait_for(fake.first_delete.wait(), timeout=10)
        deleted_at = clock[0]
        pending.cancel()
    assert deleted_at - yielded_at >= 15, "deleted before the event could have been synced"
    before_delete = fake.calls[: fake.actions().index("DeleteMessageBatch")]
    waits = [body["WaitTimeSeconds"] for action, body, _ in before_delete if action == "ReceiveMessage"]
    assert waits[:2] == [20, s3_events.BURST_WAIT_S]
    assert all(w <= 15 for w in waits[2:]), "long polls end in time to delete"
    assert deleted_at - yielded_at <= 20, "deleted well within the queue's 30 s default visibility"


async def test_transient_errors_back_off_and_permanent_ones_reread_the_connection(
    sleeps, resolutions
) -> None:
    throttled = httpx.Response(
        400, json={"__type": "com.amazonaws.sqs#ThrottlingException", "message": "slow"}
    )
    missing = httpx.Response(
        400, json={"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no queue"}
    )
    fake = FakeSqs(
        [
            httpx.Response(503, text="busy"),
            throttled,
            httpx.Response(500, json={}),
            missing,
            httpx.Response(200, json={"Messages": [message(1, notification("k.png"))]}),
        ]
    )
    with serve(fake):
        event = await S3NewObjectsTrigger(queue_url=QUEUE).run().__anext__()
    assert [o["key"] for o in event.payload["objects"]] == ["k.png"]
    assert sleeps == [1.0, 2.0, 4.0, s3_events.PERMANENT_RETRY_S]  # then the event, with no pause
    assert resolutions == ["aws_default", "aws_default"], "a configuration error reads the connection again"


async def test_a_message_that_is_not_a_notification_is_dropped_not_looped_on(sleeps, resolutions) -> None:
    fake = FakeSqs(
        [httpx.Response(200, json={"Messages": [message(1, "hello"), message(2, notification("k.png"))]})]
    )
    with serve(fake):
        event = await S3NewObjectsTrigger(queue_url=QUEUE).run().__anext__()
    assert [o["key"] for o in event.payload["objects"]] == ["k.png"]


async def test_transport_errors_are_transient() -> None:
    access = AwsAccess(Credentials("AKID", SECRET), "eu-west-1")
    from airflow_provider_nanobanana.events.sqs import SqsQueue

    with respx.mock() as router:
        router.post(ENDPOINT).mock(side_effect=httpx.ConnectError("refused"))
        async with httpx.AsyncClient() as client:
            with pytest.raises(SqsError) as caught:
                await SqsQueue(QUEUE, access, client).receive(max_messages=1, wait_time_s=0)
    assert (caught.value.transient, caught.value.code) == (True, "ConnectError")


async def test_a_burst_of_uploads_is_one_event_up_to_the_batch_cap(sleeps, resolutions) -> None:
    def batch(start: int, n: int) -> httpx.Response:
        msgs = [message(i, notification(f"k{i}.png")) for i in range(start, start + n)]
        return httpx.Response(200, json={"Messages": msgs})

    fake = FakeSqs([batch(0, 2), batch(2, 3), batch(5, 2), batch(7, 2)])
    with serve(fake):
        run = S3NewObjectsTrigger(queue_url=QUEUE, max_messages=3, max_batch_messages=7).run()
        first = await run.__anext__()
        second = await run.__anext__()
    assert [o["key"] for o in first.payload["objects"]] == [f"k{i}.png" for i in range(7)]
    assert [o["key"] for o in second.payload["objects"]] == ["k7.png", "k8.png"]
    limits = [body["MaxNumberOfMessages"] for action, body, _ in fake.calls if action == "ReceiveMessage"]
    waits = [body["WaitTimeSeconds"] for action, body, _ in fake.calls if action == "ReceiveMessage"]
    assert limits[:3] == [3, 3, 2], "the burst stops at max_batch_messages"
    assert waits[:3] == [20, s3_events.BURST_WAIT_S, s3_events.BURST_WAIT_S]
    assert sleeps == [], "no pause between the receives of a burst"


async def test_connection_extras_reach_the_triggerer_comms_on_the_triggerers_own_loop(monkeypatch) -> None:
    """Reading a connection's extras masks them, which Airflow sends to the supervisor. In a
    triggerer, ``send`` is ``async_to_sync(asend)``: from a bare thread that runs on a second loop
    and, on Airflow 3.1.8, corrupted the comms channel and stopped the triggerer (seen in the e2e)."""
    from airflow.sdk import BaseHook, Connection
    from airflow.sdk.execution_time import task_runner
    from asgiref.sync import async_to_sync

    from airflow_provider_nanobanana.events import sqs

    loops: list[asyncio.AbstractEventLoop] = []

    class TriggererComms:  # the shape of Airflow's TriggerCommsDecoder
        def send(self, msg: Any) -> None:
            return async_to_sync(self.asend)(msg)

        async def asend(self, msg: Any) -> None:
            loops.append(asyncio.get_running_loop())

    conn = Connection(
        conn_id="aws_x",
        conn_type="aws",
        login="AKIDEXAMPLE",
        password=SECRET,
        extra=json.dumps({"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9"}),
    )

    async def aget_connection(conn_id: str) -> Connection:
        return conn

    monkeypatch.setattr(BaseHook, "aget_connection", aget_connection)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", TriggererComms(), raising=False)
    access = await sqs.resolve_access("aws_x", None, QUEUE)
    assert (access.region, access.endpoint_url) == ("eu-west-1", "http://127.0.0.1:9")
    assert loops, "the extras were masked through the comms channel"
    assert set(loops) == {asyncio.get_running_loop()}
