"""The errors the S3 side raises, and how an S3 error is described without leaking anything."""

from __future__ import annotations

from collections.abc import Sequence

import botocore.exceptions

from airflow_provider_nanobanana.exceptions import ArchiveError, InvalidEditRequestError
from airflow_provider_nanobanana.media.results import ArchivedOutput, MissingOutput
from airflow_provider_nanobanana.redaction import redact_text

#: Longest exception text quoted in a failure reason.
MAX_REASON_CHARS = 300


class InvalidInputImageError(InvalidEditRequestError):
    """One or more ``image_urls`` entries cannot be used; the message names each one (``image_urls[i]``)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid input images: " + "; ".join(problems))
        self.problems = list(problems)


class OutputURLRefusedError(ArchiveError):
    """An output URL is not http(s) on an allowed host; nothing was fetched."""


class OutputsNotArchivedError(ArchiveError):
    """Some outputs could not be archived. Those in :attr:`archived` are safely in S3; rerun for the rest."""

    def __init__(
        self, request_id: str, missing: Sequence[MissingOutput], archived: Sequence[ArchivedOutput]
    ) -> None:
        lines = [f"output {m.index} ({m.source_url}): {m.reason}" for m in missing]
        total = len(missing) + len(archived)
        super().__init__(
            f"{len(missing)} of {total} outputs of request {request_id} were not archived "
            f"({len(archived)} archived, no manifest written): " + "; ".join(lines)
        )
        self.request_id = request_id
        self.missing = list(missing)
        self.archived = list(archived)

    @property
    def retryable(self) -> bool:
        """True when a later rerun may succeed (every failure was transient, e.g. S3 or the CDN was down)."""
        return all(m.transient for m in self.missing)


class OutputFailure(Exception):
    """Why one output (or the manifest) failed, and whether trying again might help."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class FileHostStatus(Exception):
    """The file host answered an output download with an error status."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def s3_error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_error_text(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    operation = getattr(exc, "operation_name", "")
    return safe_text(f"{operation} {error.get('Code', '')} {error.get('Message', '')}".strip())


def safe_text(value: object) -> str:
    """Exception text fit for a failure reason: credentials blanked, kept short."""
    return redact_text(str(value))[:MAX_REASON_CHARS]
