"""``triggerer_queue``: the deferral's trigger row carries the queue a dedicated triggerer runs."""

from __future__ import annotations

import logging

import pytest

from airflow_provider_nanobanana._compat import TaskDeferred
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.trigger_queue import check_triggerer_queue, route_deferral
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger


def _edit(**kw):
    return NanoBananaEditOperator(task_id="edit", prompt="p", image_urls=["https://x/a.png"], **kw)


def _trigger():
    return RunComfyJobTrigger(request_id="req-1", deadline_epoch_s=2e9, runcomfy_conn_id="runcomfy_default")


@pytest.mark.parametrize("bad", ["", "a,b", "with space", 3, "x" * 257])
def test_a_queue_name_triggerer_cannot_list_is_refused_at_parse_time(bad):
    with pytest.raises(ValueError, match="triggerer_queue"):
        _edit(triggerer_queue=bad)


def test_valid_names_pass():
    assert check_triggerer_queue(None) is None
    assert check_triggerer_queue("nanobanana-polling") == "nanobanana-polling"


def test_deferring_moves_only_the_trigger_to_the_queue(monkeypatch):
    monkeypatch.setenv("AIRFLOW__TRIGGERER__QUEUES_ENABLED", "True")
    task = _edit(triggerer_queue="nanobanana", queue="gpu-workers")
    with pytest.raises(TaskDeferred):
        task.defer(trigger=_trigger(), method_name="execute_complete")
    assert task.queue == "nanobanana"  # what Airflow's task runner reads for the trigger row


def test_without_a_triggerer_queue_the_tasks_own_queue_stays(monkeypatch):
    monkeypatch.setenv("AIRFLOW__TRIGGERER__QUEUES_ENABLED", "True")
    task = _edit(queue="gpu-workers")
    with pytest.raises(TaskDeferred):
        task.defer(trigger=_trigger(), method_name="execute_complete")
    assert task.queue == "gpu-workers"


def test_with_queues_disabled_it_is_a_logged_no_op(monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__TRIGGERER__QUEUES_ENABLED", "False")
    task = _edit(triggerer_queue="nanobanana")
    before = task.queue
    with caplog.at_level(logging.WARNING, logger="airflow_provider_nanobanana.trigger_queue"):
        route_deferral(task, "nanobanana")
    assert task.queue == before
    assert "queues_enabled is off" in caplog.text
