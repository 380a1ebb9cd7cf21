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


def test_a_checkpoint_written_before_submitting_since_still_loads():
    old = {"id": "i0", "image_urls": ["s3://b/0.png"], "prompt": "p", "state": "submitting", "claims": 1}
    assert BatchItem.model_validate(old).submitting_since is None


# -- the resume of a ``submitting`` item whose claim is not there (batch/run.py) ---------------------


class FakeCheckpoint:
    def __init__(self):
        self.claims: dict[tuple[str, int], dict] = {}
        self.claim_calls: list[tuple[str, int, str]] = []

    def read_claim(self, generation, item):
        return self.claims.get((item.id, item.claims))

    def claim(self, generation, item, owner):
        self.claim_calls.append((item.id, item.claims, item.state.value))
        return False  # another copy holds it: nothing is sent


class FakeLedger:
    def __init__(self, run_of):
        self.run_of = run_of
        self.calls: list[tuple[str, str, int, str, int]] = []

    def reserve(self, item_id, claims, usd):
        item = self.run_of().by_id[item_id]
        self.calls.append(("reserve", item_id, claims, item.state.value, item.claims))
        return True

    def release(self, item_id, claims):
        self.calls.append(("release", item_id, claims, "", 0))


def batch_run(item_state, **item_fields):
    import logging
    from types import SimpleNamespace

    from airflow_provider_nanobanana.batch.run import BatchRun

    trigger = SimpleNamespace(
        log=logging.getLogger("test"),
        poll_interval_s=1.0,
        poll_max_s=5.0,
        rate_per_s=10.0,
        max_in_flight=4,
        deadline_epoch_s=1e12,
        price_per_request_usd=None,
    )
    hook = SimpleNamespace(settings=SimpleNamespace(submit_exchange_s=30.0, allow_insecure_inputs=True))
    s = state(item_state)
    for name, value in item_fields.items():
        setattr(s.items[0], name, value)
    holder: dict = {}
    ledger = FakeLedger(lambda: holder["run"])
    run = BatchRun(trigger, hook, None, FakeCheckpoint(), s, ledger=ledger)  # type: ignore[arg-type]
    holder["run"] = run
    return run, ledger


def test_a_submitting_item_without_its_claim_waits_out_the_grace_before_it_is_called_unsent(monkeypatch):
    """Its writer may be between marking it and creating the claim: calling it unsent at once would
    release that writer's budget unit and send it again under the next claim (two paid jobs)."""
    import asyncio

    from tests.fakes import install_clock

    clock = install_clock(monkeypatch)
    run, ledger = batch_run(ItemState.SUBMITTING, claims=1, claim_generation=0, submitting_since=clock.time())
    clock.sleep(run.claim_grace_s - 1)
    asyncio.run(run._settle_from_claim("i0"))
    assert run.by_id["i0"].state is ItemState.SUBMITTING
    assert run.foreign == {"i0"}
    assert ledger.calls == []
    clock.sleep(2)  # past the grace, still no claim: its writer never created it, nothing was sent
    asyncio.run(run._settle_from_claim("i0"))
    assert run.by_id["i0"].state is ItemState.PENDING
    assert run.foreign == set()
    assert ledger.calls == [("release", "i0", 1, "", 0)]


def test_a_submitting_item_from_an_older_checkpoint_without_a_claim_is_pending_again():
    import asyncio

    run, ledger = batch_run(ItemState.SUBMITTING, claims=1, claim_generation=0)
    asyncio.run(run._settle_from_claim("i0"))
    assert run.by_id["i0"].state is ItemState.PENDING
    assert ledger.calls == [("release", "i0", 1, "", 0)]


def test_the_budget_unit_is_reserved_before_the_item_is_marked_submitting(monkeypatch):
    """Nothing slow (the ledger's S3 round trips) may sit between marking and claiming."""
    import asyncio

    import airflow_provider_nanobanana.batch.run as run_module

    monkeypatch.setattr(run_module, "prepare_request", lambda fields, **kw: object())
    run, ledger = batch_run(ItemState.PENDING)
    asyncio.run(run._submit_one("i0"))
    assert ledger.calls == [("reserve", "i0", 1, "pending", 0)]  # claim 1, reserved while still pending
    assert run.checkpoint.claim_calls == [("i0", 1, "submitting")]
    item = run.by_id["i0"]
    assert item.submitting_since is not None
    assert run.foreign == {"i0"}


def test_an_item_re_planned_from_what_other_items_taught_sleeps_on_without_a_request(monkeypatch):
    """``_poll`` asks the watch first: when the shared queue model moved since this item's sleep was
    planned and puts it far from the head, the item sleeps on and no poll is spent (batch/run.py)."""
    import asyncio

    from airflow_provider_nanobanana.models import StatusResponse
    from airflow_provider_nanobanana.polling import JobWatch
    from airflow_provider_nanobanana.queue_drain import QueueDrain
    from tests.fakes import install_clock

    def queued(request_id: str, position: int) -> StatusResponse:
        return StatusResponse.model_validate(
            {"request_id": request_id, "status": "in_queue", "queue_position": position}
        )

    class Hook:
        async def aget_status(self, request_id):
            asked.append(request_id)
            return queued(request_id, 480)

    def watch(item_id: str) -> None:
        run.watches[item_id] = JobWatch(item_id, 1e12, run.policy, drain=run.drain)
        run.watches[item_id].on_status(queued(item_id, 500))
        run.next_poll[item_id] = clock.time() + run.watches[item_id].next_delay()

    clock, asked = install_clock(monkeypatch), []
    run, _ = batch_run(ItemState.ACTIVE, request_id="r0")
    run.hook, run.drain = Hook(), QueueDrain()
    watch("far")  # planned while the model knew nothing
    clock.sleep(10.0)
    run.drain.observe_queue(10, 10.0, clock.time())  # other items: the queue moved 1/s meanwhile
    watch("plain")  # planned after that: nothing new to re-plan from
    asyncio.run(run._poll("far"))
    asyncio.run(run._poll("plain"))
    assert asked == ["plain"]
    assert run.next_poll["far"] - clock.time() > run.policy.max_s  # sleeps on: far from the head
