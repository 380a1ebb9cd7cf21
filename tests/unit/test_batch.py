from __future__ import annotations

from airflow_provider_nanobanana.batch import BatchItem, BatchState, ItemState, summary


def state(*states):
    items = [
        BatchItem(id=f"i{n}", image_urls=[f"s3://b/{n}.png"], prompt="p", state=s)
        for n, s in enumerate(states)
    ]
    return BatchState(batch_id="b", model_id="m", parameters={}, items=items)


def test_a_merge_keeps_the_most_advanced_view_of_each_item():
    mine = state(ItemState.PENDING, ItemState.ACTIVE, ItemState.PENDING)
    theirs = mine.model_copy(deep=True)
    mine.items[0].claims += 1
    mine.items[0].move(ItemState.SUBMITTING)  # I claimed item 0
    theirs.items[1].move(ItemState.COMPLETED)  # they saw item 1 finish
    theirs.items.append(BatchItem(id="new", image_urls=["s3://b/n.png"], prompt="p"))
    merged = mine.merged_with(theirs)
    assert [(i.id, i.state) for i in merged.items] == [
        ("i0", ItemState.SUBMITTING),
        ("i1", ItemState.COMPLETED),
        ("i2", ItemState.PENDING),
        ("new", ItemState.PENDING),
    ]
    assert theirs.merged_with(mine).counts() == merged.counts()  # the same whoever merges


def test_a_merge_never_drops_a_known_request_id_and_a_newer_generation_wins():
    mine = state(ItemState.PENDING)
    theirs = mine.model_copy(deep=True)
    for view in (mine, theirs):
        view.items[0].claims = 1
    mine.items[0].move(ItemState.SUBMIT_UNKNOWN)  # I gave up waiting for their claim...
    theirs.items[0].move(ItemState.ACTIVE, request_id="r1")  # ...which they had just settled
    assert mine.merged_with(theirs).items[0].request_id == "r1"
    newer = state(ItemState.PENDING)
    newer.generation = 2
    assert mine.merged_with(newer) is newer
    assert newer.merged_with(mine) is newer


def test_item_moves_bump_the_version_and_keep_the_request_id():
    item = BatchItem(id="x", image_urls=["s3://b/x.png"], prompt="p")
    item.move(ItemState.ACTIVE, request_id="r9")
    item.move(ItemState.COMPLETED)
    assert (item.state, item.request_id, item.version) == (ItemState.COMPLETED, "r9", 2)


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
