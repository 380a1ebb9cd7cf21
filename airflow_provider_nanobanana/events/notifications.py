"""S3 event notifications, read: which objects are new. Pure functions, no I/O.

S3 delivers a notification to SQS as a message whose body is JSON: either ``{"Records": [...]}``
(one record per object event) or, once when a notification configuration is saved, the
``s3:TestEvent`` message, which names no object. Keys in records are URL-encoded the way HTML
forms are (a space is ``+``, a literal ``+`` is ``%2B``; some S3 clones also encode ``/``), so
they are decoded here, once, before anything uses them as a key.

Two payload shapes are understood by :func:`objects_from_payload`: the one
:class:`~airflow_provider_nanobanana.triggers.s3_events.S3NewObjectsTrigger` yields (objects
already parsed) and the Amazon provider's ``SqsSensorTrigger`` (raw messages under
``message_batch``), so a DAG keeps working when its watcher trigger is swapped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote_plus

#: Event names that mean "an object now exists with this content" (Put, Post, Copy, multipart).
CREATED_PREFIX = "ObjectCreated:"


class NotificationError(ValueError):
    """A queue message that is not an S3 event notification (the message says what was wrong)."""


@dataclass(frozen=True)
class NewObject:
    """One created object, as a notification names it.

    ``etag`` identifies the content: a duplicate delivery of the same notification, or an upload
    of identical bytes under the same key, carries the same ETag; an overwrite with new bytes
    does not.
    """

    bucket: str
    key: str
    etag: str
    size: int
    event_name: str
    event_time: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NewObject:
        return cls(
            bucket=str(data["bucket"]),
            key=str(data["key"]),
            etag=str(data.get("etag") or ""),
            size=int(data.get("size") or 0),
            event_name=str(data.get("event_name") or ""),
            event_time=str(data.get("event_time") or ""),
        )


def is_test_event(body: Mapping[str, Any]) -> bool:
    """The message S3 sends when a notification configuration is saved: no object, no run."""
    return body.get("Event") == "s3:TestEvent"


def parse_notification(raw_body: str) -> list[NewObject]:
    """The created objects named by one SQS message body (``[]`` for ``s3:TestEvent``).

    Records of other event types (removals, restores, replication) are skipped: only a new object
    is work. A body that is not an S3 notification raises :class:`NotificationError`.
    """
    try:
        body = json.loads(raw_body)
    except ValueError as exc:
        raise NotificationError(f"message body is not JSON: {raw_body[:200]!r}") from exc
    if not isinstance(body, dict):
        raise NotificationError(f"message body is not a JSON object: {raw_body[:200]!r}")
    if is_test_event(body):
        return []
    records = body.get("Records")
    if not isinstance(records, list):
        raise NotificationError(f"message body has no 'Records' list: {raw_body[:200]!r}")
    objects = []
    for record in records:
        event_name = str(record.get("eventName", "")) if isinstance(record, dict) else ""
        if not event_name.startswith(CREATED_PREFIX):
            continue
        try:
            s3 = record["s3"]
            obj = s3["object"]
            objects.append(
                NewObject(
                    bucket=str(s3["bucket"]["name"]),
                    key=unquote_plus(str(obj["key"])),
                    etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
                    size=int(obj.get("size") or 0),
                    event_name=event_name,
                    event_time=str(record.get("eventTime", "")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NotificationError(f"S3 record without bucket name or object key: {record!r}") from exc
    return objects


def objects_from_payload(payload: Mapping[str, Any]) -> list[NewObject]:
    """The objects of one trigger event's payload, from either supported trigger."""
    if "objects" in payload:
        return [NewObject.from_dict(o) for o in payload["objects"]]
    if "message_batch" in payload:  # the Amazon provider's SqsSensorTrigger
        return [o for m in payload["message_batch"] for o in parse_notification(str(m.get("Body", "")))]
    raise NotificationError(f"payload has neither 'objects' nor 'message_batch': {sorted(payload)}")


def unique_new_objects(
    objects: Iterable[NewObject],
    *,
    include_prefix: str = "",
    exclude_prefixes: Sequence[str] = (),
    suffixes: Sequence[str] = (),
) -> list[NewObject]:
    """One entry per (bucket, key, etag), sorted, filtered by prefix and suffix.

    SQS delivers at least once and S3 may notify twice, so the same object can appear in several
    messages of one run; it is edited once. ``exclude_prefixes`` (the output prefix) keeps a
    misconfigured notification on the whole bucket from editing its own outputs forever.
    """
    seen: dict[tuple[str, str, str], NewObject] = {}
    for obj in objects:
        if not obj.key.startswith(include_prefix) or obj.key.endswith("/"):
            continue
        if any(obj.key.startswith(p) for p in exclude_prefixes if p):
            continue
        if suffixes and not obj.key.lower().endswith(tuple(s.lower() for s in suffixes)):
            continue
        seen.setdefault((obj.bucket, obj.key, obj.etag), obj)
    return sorted(seen.values(), key=lambda o: (o.bucket, o.key, o.etag))
