"""S3 event notifications read into new objects: test events, URL-encoded keys, duplicates, loops."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_nanobanana.events.notifications import (
    NewObject,
    NotificationError,
    objects_from_payload,
    parse_notification,
    unique_new_objects,
)


def record(
    key: str, *, event: str = "ObjectCreated:Put", bucket: str = "b", etag: str = "e1"
) -> dict[str, Any]:
    return {
        "eventName": event,
        "eventTime": "2026-01-01T00:00:00.000Z",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 7, "eTag": etag}},
    }


def body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def test_test_event_names_no_object() -> None:
    message = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}
    assert parse_notification(json.dumps(message)) == []


def test_keys_are_form_decoded() -> None:
    # S3 encodes a space as "+", a "+" as "%2B"; moto also encodes "/".
    objects = parse_notification(body(record("incoming%2Fmy+photo%2B1.png"), record("a/%C3%A9t%C3%A9.jpg")))
    assert [o.key for o in objects] == ["incoming/my photo+1.png", "a/été.jpg"]
    assert objects[0] == NewObject(
        "b", "incoming/my photo+1.png", "e1", 7, "ObjectCreated:Put", objects[0].event_time
    )
    assert objects[0].uri == "s3://b/incoming/my photo+1.png"


def test_only_created_objects_are_work() -> None:
    objects = parse_notification(
        body(
            record("x.png", event="ObjectRemoved:Delete"),
            record("y.png", event="ObjectRestore:Completed"),
            record("z.png", event="ObjectCreated:CompleteMultipartUpload", etag='"abc-2"'),
        )
    )
    assert [(o.key, o.etag) for o in objects] == [("z.png", "abc-2")]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"hello": "world"}', "no 'Records' list"),
        (body({"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}), "without bucket name or object key"),
    ],
)
def test_a_message_that_is_not_a_notification_is_named(raw: str, match: str) -> None:
    with pytest.raises(NotificationError, match=match):
        parse_notification(raw)


def test_both_trigger_payloads_are_understood() -> None:
    obj = NewObject("b", "in/a b.png", "e1", 3, "ObjectCreated:Put")
    ours = {"objects": [obj.to_dict()], "message_ids": ["m1"]}
    amazon = {
        "status": "success",
        "message_batch": [{"MessageId": "m1", "Body": body(record("in/a+b.png", etag="e1"))}],
    }
    assert objects_from_payload(ours) == [obj]
    assert [(o.key, o.etag) for o in objects_from_payload(amazon)] == [("in/a b.png", "e1")]
    with pytest.raises(NotificationError, match="neither"):
        objects_from_payload({"status": "success"})


def test_unique_new_objects_dedupes_filters_and_never_reads_outputs() -> None:
    def obj(key: str, etag: str = "e1") -> NewObject:
        return NewObject("b", key, etag, 1, "ObjectCreated:Put")

    found = [
        obj("in/b.png"),
        obj("in/a.PNG"),
        obj("in/b.png"),  # the same notification delivered twice
        obj("in/b.png", etag="e2"),  # overwritten with new bytes: new work
        obj("in/notes.txt"),
        obj("in/folder/"),
        obj("other/c.png"),
        obj("in/edited/d.png"),
    ]
    unique = unique_new_objects(
        found, include_prefix="in/", exclude_prefixes=["in/edited/"], suffixes=[".png"]
    )
    assert [(o.key, o.etag) for o in unique] == [("in/a.PNG", "e1"), ("in/b.png", "e1"), ("in/b.png", "e2")]
