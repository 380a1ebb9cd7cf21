"""Review before publish: edit a prefix, show a person a sample, publish only what they approve.

Shape: one batch edit (:class:`NanoBananaBatchEditOperator`, which also writes a contact sheet of
the whole batch beside its manifest) -> a review sample (every failure plus a few random successes)
as a contact sheet -> Airflow's human-in-the-loop :class:`ApprovalOperator` (Airflow 3.1+) -> the
``publish`` task, whose outlet is the reviewed-edits Asset.

Only an approval emits the Asset event that downstream, asset-scheduled DAGs wait for. "Reject" skips
``publish``; so does no answer within ``response_timeout`` (the default option is "Reject"). Either
way nothing is published and the edits stay in S3 for a look. The approval is given in the UI
(Required actions) or through the REST API (``PATCH .../taskInstances/approve/-1/hitlDetails``).

Connections: ``runcomfy_default`` (API token as password) and ``aws_default``.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator

with warnings.catch_warnings():
    # On Airflow 3.1 the standard provider's compat layer imports ``BranchMixIn`` from a path 3.1
    # marks deprecated; the FutureWarning would show as a DAG warning with nothing to fix here.
    warnings.simplefilter("ignore", FutureWarning)
    from airflow.providers.standard.operators.hitl import ApprovalOperator

#: What downstream DAGs schedule on: the edits a person approved (the event's extra says where).
REVIEWED_EDITS = Asset(name="nanobanana_reviewed_edits", uri="s3://nanobanana-demo/reviewed/")

APPROVAL_BODY = """\
**{{ ti.xcom_pull(task_ids='edit_batch')['total'] }} edits** are ready, \
{{ ti.xcom_pull(task_ids='edit_batch')['failed'] }} of them not succeeded.

Review sample ({{ ti.xcom_pull(task_ids='sample_for_review')['shown'] }} edits, every failure \
included): [contact sheet]({{ ti.xcom_pull(task_ids='sample_for_review')['url'] }})

Whole batch: `{{ ti.xcom_pull(task_ids='edit_batch')['manifest'] }}`

*Approve* publishes the edits (emits the `nanobanana_reviewed_edits` asset event). *Reject*, or no
answer within a day, publishes nothing.
"""


@dag(
    dag_id="nanobanana_review",
    description="Batch-edit a prefix, sample the results into a contact sheet, publish on approval",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nanobanana", "runcomfy", "s3", "review", "example"],
    params={
        "bucket": Param("nanobanana-demo", type="string"),
        "input_prefix": Param("inputs/", type="string"),
        "output_prefix": Param("reviewed/", type="string"),
        "prompt": Param("Give {name} a warm, golden-hour look", type="string", minLength=1),
        "sample_size": Param(12, type="integer", minimum=1, maximum=200),
    },
    doc_md=__doc__,
)
def nanobanana_review() -> None:
    batch = NanoBananaBatchEditOperator(
        task_id="edit_batch",
        prompt="{{ params.prompt }}",
        input_s3_prefix="s3://{{ params.bucket }}/{{ params.input_prefix }}",
        output_s3_uri="s3://{{ params.bucket }}/{{ params.output_prefix }}",
        max_in_flight=3,
        max_failed_fraction=0.25,  # up to a quarter may fail; the reviewer sees which on the sheet
        poll_interval=1.0,
        poll_max_interval=5.0,
        timeout=2 * 3600,
    )

    @task
    def sample_for_review(summary: dict[str, Any], sample_size: int | str) -> dict[str, Any]:
        """Every failure plus ``sample_size`` random successes on one contact sheet (PNG + HTML)."""
        from airflow_provider_nanobanana.media.hook import S3MediaHook
        from airflow_provider_nanobanana.report.review import review_sample

        media = S3MediaHook("aws_default")
        return review_sample(get_current_context(), media, summary["manifest"], sample_size=int(sample_size))

    sample = sample_for_review(batch.output, "{{ params.sample_size }}")  # type: ignore[arg-type]

    approve = ApprovalOperator(
        task_id="approve",
        subject="Publish the edits of {{ dag_run.run_id }}?",
        body=APPROVAL_BODY,
        defaults="Reject",  # no answer in time counts as a rejection: nothing is published
        response_timeout=timedelta(days=1),
    )

    @task(outlets=[REVIEWED_EDITS])
    def publish(summary: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
        """Runs only after "Approve" (a rejection skips it): emit the reviewed-edits Asset event."""
        context = get_current_context()
        decision = context["ti"].xcom_pull(task_ids="approve") or {}
        extra = {
            "manifest": summary["manifest"],
            "report": review["html"],
            "succeeded": summary["succeeded"],
            "approved_by": (decision.get("responded_by_user") or {}).get("name"),
        }
        context["outlet_events"][REVIEWED_EDITS].extra = extra
        return extra

    sample >> approve >> publish(batch.output, sample)  # type: ignore[arg-type]


nanobanana_review()
