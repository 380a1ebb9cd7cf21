"""Errors users can catch, one base class over a few specific ones.

Messages never carry the API token or a pre-signed URL's signature: they end up in task logs.
"""

from __future__ import annotations


class RunComfyError(Exception):
    """Base of every error raised by this provider."""


class InvalidEditRequestError(RunComfyError, ValueError):
    """The edit input is invalid; raised before any network call."""


class RunComfyAPIError(RunComfyError):
    """The API answered with an error, or with something that is not a valid answer."""

    def __init__(
        self, message: str, *, status_code: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id


class RunComfyAuthError(RunComfyAPIError):
    """401/403: the token is missing, wrong or lacks access. Retrying will not help."""


class RunComfyNotFoundError(RunComfyAPIError):
    """404: unknown request id or model id."""


class RunComfyBadRequestError(RunComfyAPIError):
    """400/422: the server rejected the input; the message is the server's own."""


class RunComfyRateLimitedError(RunComfyAPIError):
    """429 after the retry budget was spent."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class RunComfyTransientError(RunComfyAPIError):
    """5xx, dropped connection, timeout or garbled body: the same call may succeed later."""


class RunComfySubmitUnknownError(RunComfyTransientError):
    """The submit POST may have reached the server but its answer was lost.

    A job (and a charge) may exist. Resubmitting could pay twice, so this is never retried
    automatically; the task fails without retry and says so.
    """


class RunComfyJobFailedError(RunComfyError):
    """The job reached the ``failed`` state (or a state this client does not know)."""

    def __init__(self, message: str, *, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class RunComfyJobCancelledError(RunComfyJobFailedError):
    """The job was cancelled (by a user, another system or this provider's cleanup)."""


class RunComfyJobTimeoutError(RunComfyJobFailedError):
    """The job did not finish within the task's ``timeout``."""


class BudgetExceededError(RunComfyError):
    """The spend budget or the account balance does not cover the work; nothing was submitted for it."""


class ArchiveError(RunComfyError):
    """Outputs of a completed job could not all be archived; the message lists the missing ones."""
