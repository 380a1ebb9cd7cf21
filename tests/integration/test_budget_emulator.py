"""The spend budget over real HTTP (emulator) and the real S3 API (moto): batches and mapped fleets."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_nanobanana._compat import AirflowFailException, AirflowSkipException, TaskDeferred
from airflow_provider_nanobanana.batch import BatchCheckpoint, ItemState
from airflow_provider_nanobanana.exceptions import RunComfyError
from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.spend.budget import BudgetExceededError, BudgetLimits, SpendLedger
from tests.fakes import StateStore, new_context
from tests.integration.test_batch_emulator import (
    batch_context,
    batch_operator,
    both,
    first_event,
    rebuilt,
    run_until_jobs_then_kill,
    seed_inputs,
)

pytestmark = pytest.mark.usefixtures("airflow_connections")


def with_balance_url(monkeypatch, emulator):
    """The runcomfy connection, plus ``balance_url`` (the core API; here the emulator too)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps(
            {
                "conn_type": "runcomfy",
                "host": emulator.base_url,
                "password": emulator.token,
                "extra": {
                    "allow_insecure_inputs": True,
                    "retry_max_wait_s": 0.05,
                    "balance_url": emulator.base_url,
                },
            }
        ),
    )


def ledger_of(moto_s3, bucket, result) -> SpendLedger:
    checkpoint_key = result["checkpoint"].split("/", 3)[3]
    prefix = checkpoint_key.removesuffix("/_batch/state.json")
    return SpendLedger(moto_s3.client(), bucket, f"{prefix}/_batch/budget.json", BudgetLimits())


def test_a_batch_of_50_pays_for_exactly_20_across_a_triggerer_restart_and_a_task_retry(
    emulator, moto_s3, s3_bucket
):
    seed_inputs(moto_s3, s3_bucket, 50)
    emulator.configure(queue_s=0.2, run_s=0.3, max_running=4)
    task, context = batch_operator(s3_bucket, max_in_flight=6, max_paid_requests=20), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    asyncio.run(run_until_jobs_then_kill(rebuilt(deferred.value.trigger), emulator, 8))  # triggerer dies
    assert 8 <= emulator.counters()["jobs_created"] < 20
    # ... and the task try fails meanwhile: the retry resumes the checkpoint under a new generation.
    retry = batch_operator(s3_bucket, max_in_flight=6, max_paid_requests=20)
    with pytest.raises(TaskDeferred) as deferred_again:
        retry.execute(context)
    event = asyncio.run(first_event(rebuilt(deferred_again.value.trigger)))
    result = retry.execute_complete(context, event)
    assert emulator.counters()["jobs_created"] == 20
    assert result["counts"] == {"archived": 20, "skipped_budget": 30}
    assert result["failed"] == 0  # skipped is not failed (on_budget_exhausted="skip")
    doc = ledger_of(moto_s3, s3_bucket, result).snapshot()
    assert doc.paid_requests() == 20
    assert doc.spend_usd() == pytest.approx(20 * 0.06)  # settled at the reported cost (0.5K)
    manifest = json.loads(
        moto_s3.client().get_object(Bucket=s3_bucket, Key=result["manifest"].split("/", 3)[3])["Body"].read()
    )
    skipped = [i for i in manifest["items"] if i["state"] == "skipped_budget"]
    assert len(skipped) == 30
    assert all(i["request_id"] is None for i in skipped)
    assert all(i["cost_usd"] == pytest.approx(0.06) for i in manifest["items"] if i["state"] == "archived")
    # ... and so does each request's own manifest beside its outputs
    first = next(i for i in manifest["items"] if i["state"] == "archived")
    assert read_manifest(moto_s3, s3_bucket, first["manifest"])["cost_usd"] == pytest.approx(0.06)


def test_two_copies_of_the_trigger_share_one_budget(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 30)
    emulator.configure(queue_s=0.05, run_s=0.1, max_running=16)
    task, context = batch_operator(s3_bucket, max_in_flight=10, max_paid_requests=12), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    events = asyncio.run(both(rebuilt(deferred.value.trigger), rebuilt(deferred.value.trigger)))
    assert [e["status"] for e in events] == ["success", "success"]
    result = task.execute_complete(context, events[0])
    assert emulator.counters()["jobs_created"] == 12
    assert result["counts"] == {"archived": 12, "skipped_budget": 18}


def test_max_spend_usd_reserves_the_list_price_and_fail_policy_fails_after_archiving(
    emulator, moto_s3, s3_bucket
):
    seed_inputs(moto_s3, s3_bucket, 8)
    emulator.configure(queue_s=0.05, run_s=0.1)
    # List price 0.08 per image: $0.40 covers 5 requests; the projection (8 x 0.08) is over budget
    # but "skip" pays for what the budget covers.
    task = batch_operator(s3_bucket, max_spend_usd=0.40)
    context = batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    result = task.execute_complete(context, asyncio.run(first_event(rebuilt(deferred.value.trigger))))
    assert emulator.counters()["jobs_created"] == 5
    assert result["counts"] == {"archived": 5, "skipped_budget": 3}
    assert emulator.counters()["model_reads"] == 1  # one pre-flight price read per task try


def test_the_fail_policy_refuses_an_over_budget_batch_before_any_submit(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 8)
    task = batch_operator(s3_bucket, max_spend_usd=0.40, on_budget_exhausted="fail")
    with pytest.raises(BudgetExceededError, match=r"exceeds max_spend_usd=\$0.40"):
        task.execute(batch_context())
    assert emulator.counters()["submits"] == 0


def test_the_fail_policy_fails_the_task_for_skipped_items(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 5)
    emulator.configure(queue_s=0.05, run_s=0.1)
    task, context = (
        batch_operator(s3_bucket, max_paid_requests=2, on_budget_exhausted="fail"),
        batch_context(),
    )
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    event = asyncio.run(first_event(rebuilt(deferred.value.trigger)))
    with pytest.raises(RunComfyError, match=r"3 item\(s\) were over the spend budget"):
        task.execute_complete(context, event)
    assert emulator.counters()["jobs_created"] == 2
    state = BatchCheckpoint(moto_s3.client(), s3_bucket, "out/enrich/manual__1/batch/-1").load()
    assert state is not None
    assert sum(1 for i in state.items if i.state.value == "archived") == 2


def test_the_balance_refuses_a_batch_it_cannot_pay_for(emulator, moto_s3, s3_bucket, monkeypatch):
    with_balance_url(monkeypatch, emulator)
    emulator.configure(balance_usd=0.5)
    seed_inputs(moto_s3, s3_bucket, 8)
    with pytest.raises(BudgetExceededError, match=r"exceeds the account balance \$0.50"):
        batch_operator(s3_bucket, max_paid_requests=8).execute(batch_context())
    counters = emulator.counters()
    assert counters["submits"] == 0
    assert counters["balance_reads"] == 1


@pytest.mark.parametrize("fault", ["balance_500", "balance_404"])
def test_an_unreadable_balance_is_not_checked_and_the_batch_goes_on(
    emulator, moto_s3, s3_bucket, monkeypatch, fault
):
    with_balance_url(monkeypatch, emulator)
    emulator.configure(balance_usd=0.0, billing_faults=[fault])
    seed_inputs(moto_s3, s3_bucket, 3)
    with pytest.raises(TaskDeferred):
        batch_operator(s3_bucket, max_paid_requests=3).execute(batch_context())


def test_max_spend_without_a_price_is_refused_before_any_submit(emulator, moto_s3, s3_bucket):
    emulator.configure(billing_faults=["price_missing"])
    seed_inputs(moto_s3, s3_bucket, 3)
    with pytest.raises(BudgetExceededError, match="reported no price"):
        batch_operator(s3_bucket, max_spend_usd=5.0).execute(batch_context())
    assert emulator.counters()["submits"] == 0


def test_the_hook_reads_price_and_balance(emulator, monkeypatch):
    hook = RunComfyHook()
    assert hook.get_balance() is None  # no balance_url in the connection
    assert hook.get_model().price_per_request_usd(2) == pytest.approx(0.16)
    with_balance_url(monkeypatch, emulator)
    hook = RunComfyHook()
    assert hook.get_balance().balance_usd == pytest.approx(100.0)
    assert asyncio.run(hook.aget_model()).base_price_usd == pytest.approx(0.08)
    assert asyncio.run(RunComfyHook().aget_balance()).balance_usd == pytest.approx(100.0)


# -- single edits: a mapped fleet shares one budget per DAG run ----------------------------------


def fleet_member(bucket, map_index, run_id="manual__fleet", try_number=1, store=None, **kw):
    params = {
        "task_id": "edit",
        "prompt": "make it teal",
        "image_urls": [f"s3://{bucket}/inputs/img_{map_index:04d}.png"],
        "output_s3_uri": f"s3://{bucket}/out/",
        "poll_interval": 0.05,
        "poll_max_interval": 0.2,
        "wait_before_defer": 30,
        "max_paid_requests": 3,
        **kw,
    }
    context = new_context(store, task_id="edit", run_id=run_id, map_index=map_index, try_number=try_number)
    return NanoBananaEditOperator(**params), context


def test_a_mapped_fleet_shares_one_budget_per_dag_run(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 5)
    emulator.configure(queue_s=0.0, run_s=0.05)
    outcomes = []
    for index in range(5):
        task, context = fleet_member(s3_bucket, index)
        try:
            outcomes.append(task.execute(context)["status"])
        except AirflowSkipException:
            outcomes.append("skipped")
    assert outcomes == ["completed"] * 3 + ["skipped"] * 2
    assert emulator.counters()["jobs_created"] == 3
    # a cleared member runs again as a new try: it would pay again, so the spent budget skips it
    task, context = fleet_member(s3_bucket, 0, try_number=2)
    with pytest.raises(AirflowSkipException):
        task.execute(context)
    # another DAG run has a budget of its own
    task, context = fleet_member(s3_bucket, 3, run_id="manual__other")
    assert task.execute(context)["status"] == "completed"
    assert emulator.counters()["jobs_created"] == 4


def read_manifest(moto_s3, bucket, uri):
    key = uri.split("/", 3)[3]
    return json.loads(moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_single_edit_records_the_reported_cost_in_xcom_and_manifest(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 1)
    emulator.configure(queue_s=0.0, run_s=0.05)
    task, context = fleet_member(s3_bucket, 0)
    result = task.execute(context)
    assert result["cost_usd"] == pytest.approx(0.08)  # the emulator's price at 1K
    assert read_manifest(moto_s3, s3_bucket, result["manifest"])["cost_usd"] == pytest.approx(0.08)


def test_a_retry_that_reattaches_reserves_nothing(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 1)
    emulator.configure(queue_s=0.5, run_s=0.05)
    store = StateStore()  # Airflow 3.3's task state store: what survives between tries
    task, context = fleet_member(s3_bucket, 0, store=store, max_paid_requests=1, wait_before_defer=0)
    with pytest.raises(TaskDeferred):
        task.execute(context)  # try 1 reserved, paid and deferred; then it dies
    task, context = fleet_member(s3_bucket, 0, store=store, try_number=2, max_paid_requests=1)
    assert task.execute(context)["status"] == "completed"  # re-attached, not skipped over budget
    assert emulator.counters()["jobs_created"] == 1
    ledger = SpendLedger(
        moto_s3.client(), s3_bucket, "out/_budget/enrich/manual__fleet/edit.json", BudgetLimits()
    )
    assert list(ledger.snapshot().reservations) == ["edit/0#1"]


def test_a_fleet_member_over_budget_can_fail_or_succeed_instead(emulator, moto_s3, s3_bucket):
    seed_inputs(moto_s3, s3_bucket, 2)
    emulator.configure(queue_s=0.0, run_s=0.05)
    task, context = fleet_member(s3_bucket, 0, max_paid_requests=0, on_budget_exhausted="fail")
    with pytest.raises(AirflowFailException, match="not submitted and not paid"):
        task.execute(context)
    task, context = fleet_member(s3_bucket, 1, max_paid_requests=0, on_budget_exhausted="succeed")
    assert task.execute(context)["status"] == "skipped_budget"
    assert emulator.counters()["submits"] == 0


def test_a_budget_without_a_place_for_its_ledger_is_refused_at_parse_time():
    with pytest.raises(ValueError, match="budget_s3_uri"):
        NanoBananaEditOperator(task_id="e", prompt="p", image_urls=["https://x/a.png"], max_paid_requests=1)
    with pytest.raises(ValueError, match="on_budget_exhausted must be one of"):
        NanoBananaEditOperator(
            task_id="e", prompt="p", image_urls=["https://x/a.png"], on_budget_exhausted="pause"
        )


def test_a_quality_gate_resubmit_pays_again_and_is_counted(emulator, moto_s3, s3_bucket):
    """on_bad_output="resubmit" sends a second paid request: it needs a unit of the budget too."""
    seed_inputs(moto_s3, s3_bucket, 2)
    emulator.configure(queue_s=0.0, run_s=0.05)
    emulator.set_faults(bad_output="blank", bad_output_jobs=1)  # the first job's output is blank
    task, context = fleet_member(s3_bucket, 0, max_paid_requests=2, on_bad_output="resubmit")
    assert task.execute(context)["status"] == "completed"
    ledger = SpendLedger(
        moto_s3.client(), s3_bucket, "out/_budget/enrich/manual__fleet/edit.json", BudgetLimits()
    )
    assert sorted(ledger.snapshot().reservations) == ["edit/0#1", "edit/0#1.2"]
    assert emulator.counters()["jobs_created"] == 2
    # over budget, the resubmit is not sent: the task is skipped (on_budget_exhausted="skip")
    emulator.set_faults(bad_output="zero_bytes", bad_output_jobs=1)  # a new setting: the next job
    task, context = fleet_member(s3_bucket, 1, max_paid_requests=3, on_bad_output="resubmit")
    with pytest.raises(AirflowSkipException, match="not submitted and not paid"):
        task.execute(context)
    assert emulator.counters()["jobs_created"] == 3


def test_a_task_retry_finds_the_posts_an_earlier_try_sent_and_neither_pays_nor_counts_again(
    emulator, moto_s3, s3_bucket
):
    """Claims live under the generation (task try) that took them: a retry must look there."""
    seed_inputs(moto_s3, s3_bucket, 6)
    emulator.configure(queue_s=0.3, run_s=0.2, max_running=8)
    task, context = batch_operator(s3_bucket, max_in_flight=6, max_paid_requests=6), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    asyncio.run(run_until_jobs_then_kill(rebuilt(deferred.value.trigger), emulator, 6))
    # The try died after its POSTs (their claims hold the request ids) but before its state said so.
    checkpoint = BatchCheckpoint(moto_s3.client(), s3_bucket, "out/enrich/manual__1/batch/-1")
    state = checkpoint.load()
    assert state is not None
    for item in state.items:
        item.state, item.request_id = ItemState.SUBMITTING, None
    checkpoint.save(state)
    retry = batch_operator(s3_bucket, max_in_flight=6, max_paid_requests=6)
    with pytest.raises(TaskDeferred) as again:
        retry.execute(context)  # a new generation
    result = retry.execute_complete(context, asyncio.run(first_event(rebuilt(again.value.trigger))))
    assert emulator.counters()["jobs_created"] == 6
    assert result["counts"] == {"archived": 6}
    assert ledger_of(moto_s3, s3_bucket, result).snapshot().paid_requests() == 6


def test_a_ledger_that_cannot_settle_never_fails_the_archived_batch(
    emulator, moto_s3, s3_bucket, monkeypatch
):
    """Recording reported costs is bookkeeping: an S3 error there must not fail a task whose outputs
    are archived, nor keep the checkpoint from recording them as archived."""
    seed_inputs(moto_s3, s3_bucket, 4)
    emulator.configure(queue_s=0.05, run_s=0.05)

    def broken_settle(self, costs):
        raise RunComfyError("S3 refused the ledger write")

    monkeypatch.setattr(SpendLedger, "settle", broken_settle)
    task, context = batch_operator(s3_bucket, max_paid_requests=10), batch_context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    result = task.execute_complete(context, asyncio.run(first_event(rebuilt(deferred.value.trigger))))
    assert result["counts"] == {"archived": 4}
    checkpoint_key = result["checkpoint"].split("/", 3)[3]
    state = BatchCheckpoint(moto_s3.client(), s3_bucket, checkpoint_key.removesuffix("/_batch/state.json"))
    assert {item.state for item in state.load().items} == {ItemState.ARCHIVED}
    assert emulator.counters()["jobs_created"] == 4


def test_a_ledger_that_cannot_settle_still_archives_and_reports_the_cost(
    emulator, moto_s3, s3_bucket, monkeypatch, caplog
):
    """Settling the cost is bookkeeping: a paid job's outputs are archived even if the ledger is down."""
    seed_inputs(moto_s3, s3_bucket, 1)
    emulator.configure(queue_s=0.0, run_s=0.05)
    task, context = fleet_member(s3_bucket, 0)

    def broken(*_args, **_kwargs):
        raise RuntimeError("the ledger bucket is unreachable")

    monkeypatch.setattr(SpendLedger, "settle", broken)
    result = task.execute(context)
    assert result["status"] == "completed"
    assert len(result["archived"]) == 1
    assert read_manifest(moto_s3, s3_bucket, result["manifest"])["cost_usd"] == pytest.approx(0.08)
    assert result["cost_usd"] == pytest.approx(0.08)
    assert "the ledger bucket is unreachable" in caplog.text
