"""What a contact sheet shows: one row per edit (inputs, outputs, request id, outcome). Pure data.

Rows are built from what the operators already record (the batch manifest's items, the single-edit
operator's XCom results and per-request manifests), so a report never needs another API call.
Which rows make it onto the sheet is decided here too (:func:`select_rows`): a batch may hold
thousands of edits, a sheet holds at most ``max_rows``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_nanobanana.redaction import redact_text, redact_url


class RowStatus(str, Enum):
    """The outcome of one edit as a reviewer sees it."""

    SUCCEEDED = "succeeded"  # outputs are archived
    #: Archived, but the quality gate flagged an output (``on_bad_output="keep"``): a reviewer must look.
    FLAGGED = "flagged"
    FAILED = "failed"  # the job failed, was cancelled, the submit was ambiguous or archiving failed
    UNFINISHED = "unfinished"  # still pending or running when the report was written (a timeout)
    SKIPPED = "skipped"  # never submitted: the spend budget did not cover it

    @classmethod
    def of_batch_state(cls, state: str, *, archived: bool, error: str, flagged: bool = False) -> RowStatus:
        if state == "archived" and archived:
            return cls.FLAGGED if flagged else cls.SUCCEEDED
        if state == "skipped_budget":
            return cls.SKIPPED
        if state in {"failed", "cancelled", "submit_unknown"} or error:
            return cls.FAILED
        return cls.UNFINISHED


@dataclass(frozen=True)
class ReportRow:
    """One edit: its label (item id or input name), request id, inputs, archived outputs, outcome.

    ``inputs`` and ``outputs`` are ``s3://`` URIs or URLs *without* credentials (what the manifests
    record); nothing pre-signed is ever put in a row.
    """

    label: str
    status: RowStatus
    request_id: str | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    error: str = ""
    #: Caption under each output; the request id when empty.
    output_labels: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Needs a reviewer's look: anything but a clean success is marked (and kept by the cap and
        every review sample), quality-flagged outputs included."""
        return self.status is not RowStatus.SUCCEEDED


@dataclass(frozen=True)
class Selection:
    """The rows a sheet shows (in their original order) and what it leaves out."""

    shown: tuple[ReportRow, ...]
    total: int
    failed_total: int
    hidden: int = field(default=0)

    @property
    def hidden_failed(self) -> int:
        return self.failed_total - sum(1 for row in self.shown if row.failed)


def select_rows(rows: Sequence[ReportRow], max_rows: int) -> Selection:
    """At most ``max_rows`` rows: every failure first (they are what a reviewer must see), then
    successes in order until the cap; shown in the batch's own order so inputs are easy to find."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    failed = [i for i, row in enumerate(rows) if row.failed]
    succeeded = [i for i, row in enumerate(rows) if not row.failed]
    chosen = sorted((failed + succeeded)[:max_rows])
    return Selection(
        shown=tuple(rows[i] for i in chosen),
        total=len(rows),
        failed_total=len(failed),
        hidden=len(rows) - len(chosen),
    )


def rows_from_batch(entries: Iterable[Mapping[str, Any]]) -> list[ReportRow]:
    """Rows from the batch manifest's ``items`` (``batch.state.manifest_entry`` dicts)."""
    rows = []
    for entry in entries:
        archived = tuple(str(uri) for uri in entry.get("archived") or ())
        error = redact_text(str(entry.get("error") or ""))
        state = str(entry.get("state") or "")
        flags = _quality_note(entry.get("quality"))
        status = RowStatus.of_batch_state(state, archived=bool(archived), error=error, flagged=bool(flags))
        rows.append(
            ReportRow(
                label=str(entry.get("id") or ""),
                status=status,
                request_id=entry.get("request_id") or None,
                inputs=tuple(str(u) for u in entry.get("image_urls") or ()),
                outputs=archived,
                error=error
                or (flags if status is RowStatus.FLAGGED else "" if state == "archived" else state),
            )
        )
    return rows


def rows_from_edits(
    results: Sequence[Mapping[str, Any] | None],
    manifest_inputs: Mapping[str, Sequence[str]],
    expected_inputs: Sequence[Sequence[str] | str] | None = None,
) -> list[ReportRow]:
    """Rows for a fleet of single-edit tasks (``NanoBananaEditOperator`` XCom results).

    ``manifest_inputs`` maps a request id to the inputs its manifest recorded, which is how an output
    is matched to its input. Every entry of ``expected_inputs`` (the mapped task's expand list) that
    no result covers is a failed row: a failed mapped task leaves no XCom behind. Rows follow the
    order of ``expected_inputs`` when it is given. Inputs are compared and shown redacted: manifests
    record them redacted, while the expand list may hold pre-signed URLs.
    """
    expected = [_redacted_inputs(entry) for entry in expected_inputs] if expected_inputs is not None else None
    done: list[ReportRow] = []
    for n, result in enumerate(results):
        if not result:
            continue
        request_id = str(result.get("request_id") or "") or None
        inputs = tuple(redact_url(u) for u in manifest_inputs.get(request_id or "", ()))
        if not inputs and expected is not None and len(expected) == len(results):
            inputs = expected[n]  # no manifest (e.g. skipped): results follow the expand list
        archived = tuple(str(uri) for uri in result.get("archived") or ())
        status, error = _edit_outcome(result, archived)
        done.append(
            ReportRow(
                label=_name(inputs[0]) if inputs else f"edit {n}",
                status=status,
                request_id=request_id,
                inputs=inputs,
                outputs=archived,
                error=error,
            )
        )
    if expected is None:
        return done
    by_input = {row.inputs[0]: row for row in reversed(done) if row.inputs}
    rows: list[ReportRow] = []
    for inputs in expected:
        if not inputs:
            continue
        row = by_input.pop(inputs[0], None)
        rows.append(
            row
            or ReportRow(
                label=_name(inputs[0]),
                status=RowStatus.FAILED,
                inputs=inputs,
                error="no result: the edit task failed or did not run",
            )
        )
    placed = {id(row) for row in rows}
    return rows + [row for row in done if id(row) not in placed]


def _edit_outcome(result: Mapping[str, Any], archived: tuple[str, ...]) -> tuple[RowStatus, str]:
    """A single edit's status and note, from its XCom result."""
    from airflow_provider_nanobanana.spend.single import SKIPPED_BUDGET

    if result.get("status") == SKIPPED_BUDGET:
        return RowStatus.SKIPPED, "skipped: the spend budget did not cover it"
    if not archived:
        return RowStatus.FAILED, "no archived output"
    flags = _quality_note(result.get("quality"))
    return (RowStatus.FLAGGED, flags) if flags else (RowStatus.SUCCEEDED, "")


def _quality_note(quality: Any) -> str:
    """``"quality: output 0: blank"`` for the quality gate's flags (``{index: problem}``); "" if none."""
    if not isinstance(quality, Mapping) or not quality:
        return ""
    return redact_text("quality: " + "; ".join(f"output {k}: {v}" for k, v in quality.items()))


def _redacted_inputs(entry: Sequence[str] | str) -> tuple[str, ...]:
    return (redact_url(entry),) if isinstance(entry, str) else tuple(redact_url(str(u)) for u in entry)


def _name(uri: str) -> str:
    """The last path segment of a URI, without any query (never a credential)."""
    return uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or uri.split("?", 1)[0]


def sample_rows(rows: Sequence[ReportRow], k: int, seed: str) -> list[ReportRow]:
    """Every failed row plus ``k`` successful ones drawn at random (repeatable for one ``seed``, e.g.
    the run id), in their original order: what a reviewer looks at before approving a batch."""
    import random

    if k < 0:
        raise ValueError(f"the sample size must be >= 0, got {k}")
    succeeded = [i for i, row in enumerate(rows) if not row.failed]
    picked = set(random.Random(seed).sample(succeeded, min(k, len(succeeded))))
    return [row for i, row in enumerate(rows) if row.failed or i in picked]
