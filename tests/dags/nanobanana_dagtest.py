"""DAG used by tests/integration/test_dag_test.py through Airflow's own ``dag.test()`` path.

Inputs and the output prefix come from the run conf, so the test can point it at its own moto
bucket; the prompt is a Jinja template over params and the map index.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

with DAG(
    dag_id="nanobanana_dagtest",
    schedule=None,
    params={"inputs": Param([], type="array"), "output": Param("", type="string"), "style": "watercolour"},
    tags=["test"],
):

    @task
    def batches(params=None) -> list[list[str]]:
        return [[uri] for uri in params["inputs"]]

    NanoBananaEditOperator.partial(
        task_id="edit",
        prompt="Repaint image {{ ti.map_index }} as a {{ params.style }}",
        output_s3_uri="{{ params.output }}",
        poll_interval=0.2,
        poll_max_interval=1.0,
        timeout=120,
    ).expand(image_urls=batches())
