"""Which edits a report shows, and how each is classified: the cap keeps every failure it can."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana.report.rows import (
    ReportRow,
    RowStatus,
    rows_from_batch,
    rows_from_edits,
    sample_rows,
    select_rows,
)


def row(n: int, failed: bool = False) -> ReportRow:
    status = RowStatus.FAILED if failed else RowStatus.SUCCEEDED
    return ReportRow(label=f"item-{n}", status=status, request_id=f"r{n}")


def test_the_cap_keeps_every_failure_first_and_shows_rows_in_batch_order() -> None:
    rows = [row(n, failed=n in (3, 7, 9)) for n in range(10)]
    selection = select_rows(rows, max_rows=5)
    assert [r.label for r in selection.shown] == ["item-0", "item-1", "item-3", "item-7", "item-9"]
    assert (selection.total, selection.failed_total, selection.hidden, selection.hidden_failed) == (
        10,
        3,
        5,
        0,
    )


def test_more_failures_than_the_cap_are_counted_not_shown() -> None:
    rows = [row(n, failed=True) for n in range(10)] + [row(10)]
    selection = select_rows(rows, max_rows=4)
    assert [r.label for r in selection.shown] == ["item-0", "item-1", "item-2", "item-3"]
    assert (selection.hidden, selection.hidden_failed) == (7, 6)
    with pytest.raises(ValueError, match="max_rows"):
        select_rows(rows, max_rows=0)


def test_batch_items_map_to_succeeded_failed_and_unfinished() -> None:
    entries = [
        {
            "id": "a",
            "state": "archived",
            "request_id": "ra",
            "archived": ["s3://b/o/a.png"],
            "image_urls": ["s3://b/i/a.png"],
        },
        {
            "id": "b",
            "state": "failed",
            "request_id": "rb",
            "error": "model refused",
            "image_urls": ["s3://b/i/b.png"],
        },
        {"id": "c", "state": "completed", "request_id": "rc", "error": "archive: 403", "image_urls": []},
        {"id": "d", "state": "submit_unknown", "image_urls": ["s3://b/i/d.png"]},
        {"id": "e", "state": "active", "request_id": "re", "image_urls": ["s3://b/i/e.png"]},
        {"id": "f", "state": "skipped_budget", "image_urls": ["s3://b/i/f.png"]},
    ]
    rows = rows_from_batch(entries)
    assert [r.status for r in rows] == [
        RowStatus.SUCCEEDED,
        RowStatus.FAILED,
        RowStatus.FAILED,
        RowStatus.FAILED,
        RowStatus.UNFINISHED,
        RowStatus.SKIPPED,
    ]
    assert rows[0].outputs == ("s3://b/o/a.png",)
    assert rows[0].inputs == ("s3://b/i/a.png",)
    assert rows[1].error == "model refused"
    assert rows[3].error == "submit_unknown"


def test_batch_errors_are_redacted() -> None:
    entries = [{"id": "x", "state": "failed", "error": "GET https://h/a.png?X-Amz-Signature=s3cr3t failed"}]
    assert "s3cr3t" not in rows_from_batch(entries)[0].error


def test_a_fleet_lines_outputs_up_with_inputs_and_marks_inputs_without_a_result() -> None:
    results = [
        {"request_id": "r2", "archived": ["s3://b/o/r2_0.png"], "manifest": "s3://b/o/r2.manifest.json"},
        None,
        {"request_id": "r1", "archived": ["s3://b/o/r1_0.png"], "manifest": "s3://b/o/r1.manifest.json"},
    ]
    manifests = {"r1": ["s3://b/in/one.png"], "r2": ["s3://b/in/two.png"]}
    expected = [["s3://b/in/one.png"], ["s3://b/in/two.png"], "s3://b/in/three.png"]
    rows = rows_from_edits(results, manifests, expected)
    assert [(r.label, r.request_id, r.status) for r in rows] == [
        ("one.png", "r1", RowStatus.SUCCEEDED),
        ("two.png", "r2", RowStatus.SUCCEEDED),
        ("three.png", None, RowStatus.FAILED),
    ]
    assert rows[0].outputs == ("s3://b/o/r1_0.png",)
    assert "failed" in rows[2].error


def test_a_sample_keeps_every_failure_and_k_successes_repeatably() -> None:
    rows = [row(n, failed=n % 5 == 0) for n in range(20)]
    first = sample_rows(rows, 3, seed="run-1")
    assert sum(r.failed for r in first) == 4
    assert sum(not r.failed for r in first) == 3
    assert first == sample_rows(rows, 3, seed="run-1")
    assert [rows.index(r) for r in first] == sorted(rows.index(r) for r in first)


def test_a_quality_flagged_batch_item_is_flagged_and_always_sampled() -> None:
    """``on_bad_output="keep"`` archives flagged outputs: not a clean success, a reviewer must see it."""
    entries = [
        {"id": f"i{n}", "state": "archived", "request_id": f"r{n}", "archived": [f"s3://b/o/{n}.png"]}
        for n in range(10)
    ]
    entries[4]["quality"] = {"0": "blank image"}
    rows = rows_from_batch(entries)
    assert rows[4].status is RowStatus.FLAGGED
    assert rows[4].failed
    assert rows[4].error == "quality: output 0: blank image"
    assert [r.status for r in rows].count(RowStatus.SUCCEEDED) == 9
    for seed in ("run-1", "run-2", "run-3"):
        assert rows[4] in sample_rows(rows, 1, seed=seed)
    assert rows[4] in select_rows(rows, max_rows=1).shown


def test_a_fleet_edit_skipped_by_the_budget_is_skipped_not_failed() -> None:
    skipped = {"request_id": None, "status": "skipped_budget", "images": [], "archived": [], "manifest": None}
    done = {"request_id": "r1", "archived": ["s3://b/o/r1_0.png"], "manifest": "s3://b/o/r1.manifest.json"}
    rows = rows_from_edits(
        [done, skipped], {"r1": ["s3://b/in/one.png"]}, ["s3://b/in/one.png", "s3://b/in/two.png"]
    )
    assert [(r.label, r.status) for r in rows] == [
        ("one.png", RowStatus.SUCCEEDED),
        ("two.png", RowStatus.SKIPPED),
    ]
    assert "budget" in rows[1].error


def test_a_fleet_matches_pre_signed_inputs_to_their_redacted_manifest_inputs() -> None:
    raw = "https://b.s3.amazonaws.com/in/one.png?X-Amz-Credential=AKID&X-Amz-Signature=s3cr3t"
    recorded = "https://b.s3.amazonaws.com/in/one.png?X-Amz-Credential=***&X-Amz-Signature=***"
    result = {"request_id": "r1", "archived": ["s3://b/o/r1_0.png"], "manifest": "s3://b/o/r1.manifest.json"}
    rows = rows_from_edits([result], {"r1": [recorded]}, [raw])
    assert [(r.request_id, r.status) for r in rows] == [("r1", RowStatus.SUCCEEDED)]
    assert "s3cr3t" not in repr(rows)
