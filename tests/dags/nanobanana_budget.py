"""DAG for tests/e2e/test_budget_e2e.py: a batch of 50 with ``max_paid_requests=20``, whose first try
fails (a short timeout) after some submits, while the test kills and restarts the triggerer.

Only the first try gets the short ``timeout`` (``first_try_timeout_s`` from the run's conf); the
retry resumes the same checkpoint and spends from the same S3 ledger.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator


class FirstTryTimesOut(NanoBananaBatchEditOperator):
    """The batch operator, with a short batch ``timeout`` for the try that starts the batch: a task
    retry on demand. (That is the first try to reach ``execute``: on a loaded machine Airflow may
    lose a try before it runs at all, so "try 1" would be the wrong test.)"""

    def execute(self, context: Any) -> Any:
        if self._checkpoint(context).load() is None:
            self.timeout = float(context["params"]["first_try_timeout_s"])
        return super().execute(context)


with DAG(
    dag_id="nanobanana_budget",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "bucket": Param("nanobanana-budget", type="string"),
        "first_try_timeout_s": Param(90, type="integer"),
    },
    tags=["test"],
):
    FirstTryTimesOut(
        task_id="batch",
        prompt="Give {name} a cool look",
        input_s3_prefix="s3://{{ params.bucket }}/in/",
        output_s3_uri="s3://{{ params.bucket }}/out/",
        max_paid_requests=20,
        max_in_flight=4,
        item_retries=0,
        poll_interval=1.0,
        poll_max_interval=2.0,
        timeout=20 * 60,
        retries=3,  # one planned (the short timeout); spares for tries lost before they start
        retry_delay=timedelta(seconds=2),
    )
