"""DAG for tests/integration/test_retry_policy_emulator.py: a wrong API token, three tries allowed.

On Airflow 3.3+ the provider's retry policy fails the task on its first 401; before 3.3 Airflow's
own retries run as they always did.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(dag_id="nanobanana_retry_policy", schedule=None, tags=["test"]):
    NanoBananaEditOperator(
        task_id="edit",
        prompt="Add a rainbow",
        image_urls=["https://images.example.com/cat.png"],
        runcomfy_conn_id="runcomfy_wrong_token",
        aws_conn_id=None,
        timeout=60,
        retries=2,
        retry_delay=timedelta(seconds=0),
    )
