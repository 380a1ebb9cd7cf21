"""The example DAGs are what users copy: they must import cleanly, have the documented shape and render.

Parsed once per module with Airflow's own :class:`DagBag` (3.3 has no ``include_examples``; the
conftest turns example loading off), so an import error or warning here is exactly what the
dag-processor would report.
"""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
EXPECTED_TASKS = {
    "nanobanana_single_edit": {"edit_image"},
    "nanobanana_s3_enrichment": {"list_input_images", "edit_image", "summarize"},
    "nanobanana_scheduled": {"daily_edit"},
    "nanobanana_batch_enrichment": {"edit_prefix"},
    "nanobanana_review": {"edit_batch", "sample_for_review", "approve", "publish"},
}


@pytest.fixture(scope="module")
def parsed() -> tuple[Any, list[str]]:
    """The DagBag and every warning raised while parsing the folder."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.2
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 3.1

    gc.collect()  # sockets other tests left behind must not be finalised inside the parse window
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    messages = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    return bag, [m for m in messages if not _gc_noise(m)]


def _gc_noise(warning: str) -> bool:
    """An unclosed socket finalised by the garbage collector during the parse: not from a DAG file."""
    return "ResourceWarning: unclosed" in warning


@pytest.fixture(scope="module")
def dagbag(parsed: tuple[Any, list[str]]) -> Any:
    return parsed[0]


def test_every_example_file_defines_a_dag(dagbag: Any) -> None:
    files = {Path(dag.fileloc).name for dag in dagbag.dags.values()}
    assert files == {p.name for p in EXAMPLE_DAGS.glob("example_*.py")}


def test_no_import_errors_or_warnings(parsed: tuple[Any, list[str]]) -> None:
    bag, messages = parsed
    assert bag.import_errors == {}
    captured = {
        path: [w for w in found if not _gc_noise(str(w))] for path, found in bag.captured_warnings.items()
    }
    assert {path: found for path, found in captured.items() if found} == {}
    assert messages == []


@pytest.mark.parametrize(("dag_id", "tasks"), sorted(EXPECTED_TASKS.items()))
def test_expected_tasks(dagbag: Any, dag_id: str, tasks: set[str]) -> None:
    assert {t.task_id for t in dagbag.dags[dag_id].tasks} == tasks


def test_examples_use_the_provider_operator(dagbag: Any) -> None:
    from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator

    for dag_id, task_id in [
        ("nanobanana_single_edit", "edit_image"),
        ("nanobanana_scheduled", "daily_edit"),
        ("nanobanana_s3_enrichment", "edit_image"),
    ]:
        task = dagbag.dags[dag_id].get_task(task_id)
        operator_class = getattr(task, "operator_class", type(task))
        assert operator_class is NanoBananaEditOperator, (dag_id, task_id)


def test_scheduled_dag_renders_prompt_inputs_and_prefix_from_params_and_date(
    dagbag: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps({"conn_type": "runcomfy", "password": "test-token"})
    )
    dag = dagbag.dags["nanobanana_scheduled"]
    assert dag.is_paused_upon_creation is True, "a scheduled paid DAG must not start on deploy"
    task = dag.get_task("daily_edit")
    params = {
        **dict(dag.params),
        "style": "a comic strip",
        "image_urls": ["s3://b/one.png", "s3://b/two.png"],
    }
    task.render_template_fields({"params": params, "ds": "2025-03-04"})
    assert (
        task.prompt == "Restyle this image as a comic strip; print the date 2025-03-04 in the bottom corner"
    )
    assert task.image_urls == ["s3://b/one.png", "s3://b/two.png"], "native rendering must keep the list"
    assert task.output_s3_uri == "s3://nanobanana-demo/daily/2025-03-04/"
    task.validate_inputs()  # the rendered values are a valid edit request


def test_enrichment_dag_defaults_match_the_demo(dagbag: Any) -> None:
    from devstack.enrichment import DEFAULT_BUCKET, INPUT_PREFIX, OUTPUT_PREFIX

    params = dict(dagbag.dags["nanobanana_s3_enrichment"].params)
    assert (params["bucket"], params["input_prefix"], params["output_prefix"]) == (
        DEFAULT_BUCKET,
        INPUT_PREFIX,
        OUTPUT_PREFIX,
    )


def test_enrichment_mapped_edit_renders_from_params(dagbag: Any) -> None:
    dag = dagbag.dags["nanobanana_s3_enrichment"]
    mapped = dag.get_task("edit_image")
    assert set(mapped.expand_input.value) == {"image_urls"}, "one edit task per listed image"
    assert mapped.partial_kwargs["poll_interval"] <= 2, "the demo needs a short first poll"
    env = dag.get_template_env()
    params = {**dict(dag.params), "bucket": "my-bucket", "output_prefix": "edited/", "prompt": "Add a hat"}
    render = {
        k: env.from_string(mapped.partial_kwargs[k]).render(params=params)
        for k in ("prompt", "output_s3_uri")
    }
    assert render == {"prompt": "Add a hat", "output_s3_uri": "s3://my-bucket/edited/"}
    lister = dag.get_task("list_input_images")
    kwargs = {k: env.from_string(v).render(params=params) for k, v in lister.op_kwargs.items()}
    assert kwargs == {"bucket": "my-bucket", "prefix": "inputs/", "max_images": "50"}


def test_enrichment_lists_one_uri_per_task_sorted_and_skips_non_images(
    dagbag: Any, moto_s3: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_s3.aws_conn_json())
    s3 = moto_s3.client()
    for key in ["in/b.png", "in/a.JPG", "in/notes.txt", "in/sub/c.webp", "other/d.png"]:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    list_images = dagbag.dags["nanobanana_s3_enrichment"].get_task("list_input_images").python_callable
    assert list_images(s3_bucket, "in/", "50") == [
        [f"s3://{s3_bucket}/in/a.JPG"],
        [f"s3://{s3_bucket}/in/b.png"],
        [f"s3://{s3_bucket}/in/sub/c.webp"],
    ]
    with pytest.raises(ValueError, match="exceed max_images=2"):
        list_images(s3_bucket, "in/", "2")
    with pytest.raises(ValueError, match="no images"):
        list_images(s3_bucket, "empty/", "50")


def test_enrichment_summary_collects_requests_images_and_manifests(dagbag: Any) -> None:
    summarize = dagbag.dags["nanobanana_s3_enrichment"].get_task("summarize").python_callable
    results = [
        {"request_id": "r1", "archived": ["s3://b/o/r1_0.png"], "manifest": "s3://b/o/r1.manifest.json"},
        {"request_id": "r2", "archived": ["s3://b/o/r2_0.png", "s3://b/o/r2_1.png"], "manifest": None},
    ]
    summary = summarize(results)
    assert summary == {
        "requests": 2,
        "request_ids": ["r1", "r2"],
        "archived": ["s3://b/o/r1_0.png", "s3://b/o/r2_0.png", "s3://b/o/r2_1.png"],
        "manifests": ["s3://b/o/r1.manifest.json"],
    }
    json.dumps(summary)  # XCom-serialisable


def test_review_dag_publishes_only_after_an_approval(dagbag: Any) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags["nanobanana_review"]
    with_outlets = {t.task_id for t in dag.tasks if t.outlets}
    assert with_outlets == {"publish"}, "only the approved path emits the Asset event"
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)
    assert approve.defaults == ["Reject"], "no answer in time must not publish"
    assert dag.get_task("publish").upstream_task_ids >= {"approve"}
