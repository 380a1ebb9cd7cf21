"""Typed requests, responses and events for RunComfy's Model API.

Inputs are strict: a bad value must fail on the worker, before any paid call, with a message that
names the field and what is allowed. Responses are lenient: the public docs promise little beyond
``request_id`` and ``status``, so unknown fields are kept and unknown states become ``JobState.UNKNOWN``
instead of crashing a poll loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.redaction import redact_text, redact_tree, redact_url

DEFAULT_MODEL_ID = "google/nano-banana-2/edit"

#: RunComfy's own clients accept request ids of this shape; anything else is refused because the id
#: is put into URL paths, where ``../`` or ``?`` would change which endpoint is called.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

MAX_PROMPT_CHARS = 10_000
MAX_INPUT_IMAGES = 20
MAX_OUTPUT_IMAGES = 4
#: RunComfy recommends hosted image inputs of at most 50 MB ("~4K"); larger ones are refused up front.
MAX_INPUT_IMAGE_BYTES = 50 * 1024 * 1024

AspectRatio = Literal["auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"]
Resolution = Literal["0.5K", "1K", "2K", "4K"]
OutputFormat = Literal["jpeg", "png", "webp"]


class JobState(str, Enum):
    """Lifecycle of one RunComfy request, with aliases the API might use folded in."""

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: object) -> JobState:
        text = str(raw or "").strip().lower().replace("-", "_").replace(" ", "_")
        text = _STATE_ALIASES.get(text, text)
        return cls._value2member_map_.get(text, cls.UNKNOWN)  # type: ignore[return-value]

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATES


_STATE_ALIASES = {
    "queued": "in_queue",
    "pending": "in_queue",
    "running": "in_progress",
    "processing": "in_progress",
    "succeeded": "completed",
    "success": "completed",
    "done": "completed",
    "canceled": "cancelled",
    "error": "failed",
    "errored": "failed",
}
TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.IN_QUEUE, JobState.IN_PROGRESS})


class CancelOutcome(str, Enum):
    """What a cancel call achieved. RunComfy answers 2xx even when nothing was cancelled."""

    CANCELLED = "cancelled"
    CANCELLATION_REQUESTED = "cancellation_requested"
    NOT_CANCELLABLE = "not_cancellable"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: object) -> CancelOutcome:
        text = str(raw or "").strip().lower().replace("canceled", "cancelled")
        return cls._value2member_map_.get(text, cls.UNKNOWN)  # type: ignore[return-value]


def _check_url(url: str, *, allow_insecure: bool, allow_unresolved: bool) -> str:
    if not isinstance(url, str):
        raise ValueError(f"must be a URL string, got {type(url).__name__}")
    parts = urlsplit(url)
    if allow_unresolved and (
        (parts.scheme == "s3" and parts.netloc and parts.path.strip("/"))
        or (parts.scheme == "file" and parts.path)
        or (not parts.scheme and url.startswith("/"))
    ):
        return url  # s3:// and local files become pre-signed https URLs before submitting
    allowed = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        hint = "" if allow_insecure else " (http:// needs the connection extra allow_insecure_inputs=true)"
        kinds = " or ".join(s + "://" for s in allowed) + (
            " URL or an s3://bucket/key URI" if allow_unresolved else " URL"
        )
        raise ValueError(f"must be an absolute {kinds}{hint}")
    return url


class EditRequest(BaseModel):
    """Input of ``google/nano-banana-2/edit``; the body of the submit POST, field for field.

    Validate with ``context={"allow_insecure_inputs": True}`` to admit ``http://`` image URLs (the
    emulator and local S3 serve plain HTTP on loopback).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    image_urls: Annotated[list[str], Field(min_length=1, max_length=MAX_INPUT_IMAGES)]
    num_images: Annotated[StrictInt, Field(ge=1, le=MAX_OUTPUT_IMAGES)] = 1
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0
    aspect_ratio: AspectRatio = "auto"
    resolution: Resolution = "1K"
    output_format: OutputFormat = "png"
    safety_tolerance: Annotated[StrictInt, Field(ge=1, le=6)] = 4
    limit_generations: StrictBool = True
    enable_web_search: StrictBool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text, not only whitespace")
        return value

    @field_validator("image_urls")
    @classmethod
    def _urls_fetchable(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        context = info.context or {}
        allow_insecure = bool(context.get("allow_insecure_inputs", False))
        allow_unresolved = bool(context.get("allow_unresolved", False))
        for index, url in enumerate(urls):
            try:
                _check_url(url, allow_insecure=allow_insecure, allow_unresolved=allow_unresolved)
            except ValueError as exc:
                raise ValueError(f"item {index}: {redact_url(url)!r} {exc}") from None
        return urls

    @classmethod
    def build(
        cls, *, allow_insecure_inputs: bool = False, allow_unresolved: bool = False, **fields: Any
    ) -> EditRequest:
        """Validate ``fields``, raising :class:`InvalidEditRequestError` that names every bad field.

        ``allow_unresolved`` also admits ``s3://`` URIs: the operator validates everything up front,
        before it turns them into pre-signed URLs, so a typo never costs an S3 call or a paid job.
        """
        context = {"allow_insecure_inputs": allow_insecure_inputs, "allow_unresolved": allow_unresolved}
        try:
            return cls.model_validate(fields, context=context)
        except ValidationError as exc:
            raise InvalidEditRequestError(describe_validation_error(exc)) from None

    def __repr__(self) -> str:
        # Input URLs are often pre-signed; their signatures must never reach logs.
        urls = [redact_url(u) for u in self.image_urls]
        return f"EditRequest(prompt={self.prompt[:40]!r}, image_urls={urls}, num_images={self.num_images})"

    __str__ = __repr__


#: The model's tuning knobs: every ``EditRequest`` field except the prompt and the inputs.
MODEL_PARAMETERS: tuple[str, ...] = tuple(
    n for n in EditRequest.model_fields if n not in ("prompt", "image_urls")
)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field: ``field: problem (got value)``. Values that look like URLs are redacted."""
    lines = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "request"
        shown = redact_tree(err.get("input"))
        if isinstance(shown, str) and len(shown) > 80:
            shown = shown[:77] + "..."
        message = err["msg"].removeprefix("Value error, ")
        lines.append(
            f"{field}: {message} (got {shown!r})" if err["type"] != "missing" else f"{field}: required"
        )
    return "invalid nano-banana edit request: " + "; ".join(lines)


class _Lenient(BaseModel):
    """Responses keep unknown fields: the API may add some at any time."""

    model_config = ConfigDict(extra="allow", frozen=True)


class SubmitResponse(_Lenient):
    request_id: str
    status_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None

    @field_validator("request_id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return validate_request_id(value)


class StatusResponse(_Lenient):
    request_id: str | None = None
    status: JobState
    #: The state exactly as sent, so a message about an ``UNKNOWN`` state can say what arrived.
    status_text: str = ""
    queue_position: int | None = None
    #: Why a job failed; the shape is undocumented (string or object), read through ``error_message``.
    error: Any = None

    @property
    def error_message(self) -> str:
        return describe_error(self.error) or f"job ended in state {self.status.value}"

    @model_validator(mode="before")
    @classmethod
    def _keep_raw_state(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "status" in data and "status_text" not in data:
            return {**data, "status_text": str(data["status"])[:64]}
        return data

    @field_validator("status", mode="before")
    @classmethod
    def _parse_state(cls, value: object) -> JobState:
        return JobState.parse(value)


class ResultResponse(StatusResponse):
    """``GET .../result``: while the job runs this is just the current state (no output yet)."""

    output: Any = None
    #: Metadata nothing acts on is typed loosely: a numeric timestamp must never make the result of
    #: a paid job unreadable.
    created_at: Any = None
    finished_at: Any = None
    cost: Any = None

    @property
    def images(self) -> list[str]:
        return output_urls(self.output)


class CancelResponse(_Lenient):
    request_id: str | None = None
    status: JobState | None = None
    outcome: CancelOutcome = CancelOutcome.UNKNOWN

    @field_validator("status", mode="before")
    @classmethod
    def _parse_state(cls, value: object) -> JobState | None:
        return None if value is None else JobState.parse(value)

    @field_validator("outcome", mode="before")
    @classmethod
    def _parse_outcome(cls, value: object) -> CancelOutcome:
        return CancelOutcome.parse(value)

    @property
    def cancelled(self) -> bool:
        return self.status is JobState.CANCELLED or self.outcome is CancelOutcome.CANCELLED


def validate_request_id(value: str) -> str:
    if not isinstance(value, str) or not REQUEST_ID_PATTERN.match(value):
        raise ValueError("request_id must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return value


_OUTPUT_KEYS = ("image", "images", "video", "videos")


def output_urls(output: Any) -> list[str]:
    """Normalise a model's ``output`` block into one ordered, de-duplicated list of URLs.

    The Output schema is undocumented: RunComfy's clients see ``images`` (list), ``image`` (str),
    ``video(s)``, and objects like ``{"url": ...}``. Known keys are read first, in that order; if none is
    present, every http(s) string under ``output`` is taken. Only ``output`` is walked, never the whole
    payload, which also holds ``status_url`` and ``result_url``.
    """
    if isinstance(output, Mapping) and any(k in output for k in _OUTPUT_KEYS):
        found = [url for key in _OUTPUT_KEYS if key in output for url in _walk_urls(output[key])]
    else:
        found = list(_walk_urls(output))
    return list(dict.fromkeys(found))


def _walk_urls(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        if node.startswith(("https://", "http://")):
            yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _walk_urls(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk_urls(value)


def describe_error(error: Any) -> str:
    """Best human-readable text from an ``error`` field whose shape is undocumented.

    Servers like to quote the input that failed, and inputs are often pre-signed URLs: the text is
    redacted here because it ends up in exceptions, trigger events and task logs.
    """
    return redact_text(_error_text(error))


def _error_text(error: Any) -> str:
    if error is None or error == "":
        return ""
    if isinstance(error, str):
        return error
    if isinstance(error, Mapping):
        for key in ("message", "detail", "error_message", "msg", "reason"):
            if isinstance(error.get(key), str):
                kind = error.get("type") or error.get("code") or error.get("error_code")
                return f"{kind}: {error[key]}" if kind else str(error[key])
    return str(error)[:500]


class EventStatus(str, Enum):
    """How a wait ended: the ``status`` of a trigger's one event (a plain string in its payload).

    A verdict of the waiter, not RunComfy's job state: ``timeout`` and ``error`` are ours, and
    the job itself may still be running.
    """

    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"


class JobEvent(BaseModel):
    """The verdict a waiter reaches; the one terminal event a :class:`RunComfyJobTrigger` yields.

    A verdict, not a result: outputs are fetched once, by the worker that archives them. Events
    written by 0.1.0 also carried redacted ``images``; they are accepted and ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: EventStatus
    request_id: str
    message: str = ""
    job_state: JobState | None = None
