"""From what a user wrote to the body of one paid POST: the one preparation step of every edit.

The single-edit operator (on the worker) and the batch trigger (in the triggerer, through a thread)
both call :func:`prepare_request`, so an ``s3://`` input, a local file or an https URL becomes the
same request whichever path submits it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_nanobanana.models import EditRequest

if TYPE_CHECKING:
    from airflow_provider_nanobanana.media.hook import S3MediaHook

_FETCHABLE = ("https://", "http://")


def prepare_request(
    fields: Mapping[str, Any],
    *,
    media: S3MediaHook,
    allow_insecure_inputs: bool,
    staging_uri: str | None = None,
) -> EditRequest:
    """Resolve ``s3://`` and local inputs to pre-signed URLs, then validate the POST body.

    Blocking (S3 calls): run it in a thread on an event loop. Inputs that are already URLs cost no
    S3 call at all.
    """
    urls = list(fields["image_urls"])
    if any(not u.startswith(_FETCHABLE) for u in urls):
        urls = media.resolve_inputs(urls, staging_uri=staging_uri)
    return EditRequest.build(**{**fields, "image_urls": urls}, allow_insecure_inputs=allow_insecure_inputs)
