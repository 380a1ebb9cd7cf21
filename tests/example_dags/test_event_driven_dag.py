"""``nanobanana_event_driven``: its watcher, and the claim that keeps a redelivered upload from paying twice.

The claims run against a real S3 API (moto server), because the guarantee is S3's conditional
create (``If-None-Match: *``): only one writer of a key succeeds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from airflow_provider_nanobanana.events.notifications import NewObject
from airflow_provider_nanobanana.triggers.s3_events import S3NewObjectsTrigger

DAG_FILE = Path(__file__).resolve().parents[2] / "example_dags" / "example_nanobanana_event_driven.py"
QUEUE = "https://sqs.eu-west-1.amazonaws.com/111122223333/uploads"


@pytest.fixture
def dag_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The DAG file imported as the dag-processor would, with this deployment's settings."""
    monkeypatch.setenv("NANOBANANA_EVENTS_QUEUE_URL", QUEUE)
    monkeypatch.setenv("NANOBANANA_EVENTS_INPUT_PREFIX", "up/")
    monkeypatch.setenv("NANOBANANA_EVENTS_OUTPUT_PREFIX", "done/")
    spec = importlib.util.spec_from_file_location("example_nanobanana_event_driven_under_test", DAG_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_dag_runs_on_a_watched_asset_and_is_paused_on_creation(dag_module: ModuleType) -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow >= 3.2
    except ImportError:
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]  # Airflow 3.1

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    dag = bag.dags["nanobanana_event_driven"]
    assert dag.is_paused_upon_creation is True, "paid work must not start on deploy"
    assert {t.task_id for t in dag.tasks} == {"claim_new_images", "edit_image"}
    condition: Any = dag.timetable.asset_condition  # an AssetAll of the schedule's assets
    (asset,) = condition.objects
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, S3NewObjectsTrigger)
    assert (watcher.trigger.queue_url, watcher.trigger.aws_conn_id) == (QUEUE, "aws_default")


def objects(*keys: str, etag: str = "e1", bucket: str = "b") -> list[NewObject]:
    return [NewObject(bucket, k, etag, 1, "ObjectCreated:Put") for k in keys]


def test_objects_of_events_reads_every_event_of_the_run(dag_module: ModuleType) -> None:
    def event(*keys: str) -> SimpleNamespace:
        return SimpleNamespace(
            extra={"from_trigger": True, "payload": {"objects": [o.to_dict() for o in objects(*keys)]}}
        )

    accessor = {
        "asset": [event("up/a.png"), event("up/b.png", "up/a.png")],
        "other": [SimpleNamespace(extra={})],
    }
    found = dag_module.objects_of_events(accessor)
    assert [o.key for o in found] == ["up/a.png", "up/b.png", "up/a.png"]


def test_edit_kwargs_name_the_output_after_the_input(dag_module: ModuleType) -> None:
    assert dag_module.edit_kwargs(objects("up/a b.png", "up/x/y.png")) == [
        {"image_urls": ["s3://b/up/a b.png"], "output_s3_uri": "s3://b/done/a b.png/"},
        {"image_urls": ["s3://b/up/x/y.png"], "output_s3_uri": "s3://b/done/x/y.png/"},
    ]


def test_a_claim_is_won_once_kept_by_its_own_retry_and_renewed_by_new_bytes(
    dag_module: ModuleType, moto_s3: Any, s3_bucket: str
) -> None:
    s3 = moto_s3.client()
    (obj,) = objects("up/a.png", bucket=s3_bucket)
    assert dag_module.claim(s3, obj, "run-1") is True
    assert dag_module.claim(s3, obj, "run-1") is True, "a retry of the claiming run keeps its claim"
    assert dag_module.claim(s3, obj, "run-2") is False, "a duplicate delivery in another run pays nothing"
    (overwritten,) = objects("up/a.png", etag="e2", bucket=s3_bucket)
    assert dag_module.claim(s3, overwritten, "run-2") is True, "new bytes under the same key are new work"
    key = dag_module.claim_key(obj)
    assert key.startswith("done/_claims/")
    assert json.loads(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())["run_id"] == "run-1"
