from __future__ import annotations

from airflow_provider_nanobanana.batch import BatchItem, BatchState, ItemState, summary


def state(*states):
    items = [
        BatchItem(id=f"i{n}", image_urls=[f"s3://b/{n}.png"], prompt="p", state=s)
        for n, s in enumerate(states)
    ]
    return BatchState(batch_id="b", model_id="m", parameters={}, items=items)


def test_items_caught_mid_submit_are_never_resent():
    s = state(ItemState.SUBMITTING, ItemState.ACTIVE, ItemState.PENDING)
    lost = s.recover_interrupted_submits()
    assert [i.id for i in lost] == ["i0"]
    assert s.items[0].state is ItemState.SUBMIT_UNKNOWN
    assert "not resubmitted" in s.items[0].error
    assert s.items[0].state.is_final


def test_summary_is_compact_and_counts_failures():
    s = state(
        ItemState.ARCHIVED,
        ItemState.COMPLETED,
        ItemState.FAILED,
        ItemState.SUBMIT_UNKNOWN,
        ItemState.CANCELLED,
    )
    assert summary(s) == {
        "batch_id": "b",
        "total": 5,
        "succeeded": 2,
        "failed": 3,
        "counts": {"completed": 1, "archived": 1, "failed": 1, "cancelled": 1, "submit_unknown": 1},
    }


def test_merging_keeps_known_items_state():
    s = state(ItemState.ARCHIVED)
    s.merge_items(
        [BatchItem(id="i0", image_urls=["x"], prompt="p"), BatchItem(id="new", image_urls=["y"], prompt="p")]
    )
    assert [(i.id, i.state) for i in s.items] == [("i0", ItemState.ARCHIVED), ("new", ItemState.PENDING)]


def test_state_round_trips_through_json():
    s = state(ItemState.ACTIVE)
    s.items[0].request_id = "r1"
    assert BatchState.model_validate_json(s.model_dump_json()) == s
