"""Fixtures of the reliability suite: fake task instance and state store, a deferral driver and
connections tuned for fast retries. The emulator, moto and bucket fixtures come from tests/conftest.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.triggers.batch import RunComfyBatchTrigger
from airflow_provider_nanobanana.triggers.runcomfy import RunComfyJobTrigger
from tests.fakes import TI, StateStore, new_context  # noqa: F401 - re-exported to the suite

PROVIDER_LOGGERS = ("airflow_provider_nanobanana", "airflow.task", "airflow.triggers", "httpx")


@pytest.fixture
def context() -> Any:
    return new_context()


def edit_operator(image: str, bucket: str | None, **kw: Any) -> NanoBananaEditOperator:
    params: dict[str, Any] = {
        "task_id": "edit",
        "prompt": "turn the sky purple",
        "image_urls": [image],
        "num_images": 2,
        "output_s3_uri": f"s3://{bucket}/edited/" if bucket else None,
        "poll_interval": 0.1,
        "poll_max_interval": 0.3,
        "timeout": 30,
    }
    return NanoBananaEditOperator(**{**params, **kw})


def rebuild(trigger: Any) -> Any:
    """What a triggerer does: import the path, JSON round-trip the kwargs, construct."""
    path, kwargs = trigger.serialize()
    cls = {
        "airflow_provider_nanobanana.triggers.runcomfy.RunComfyJobTrigger": RunComfyJobTrigger,
        "airflow_provider_nanobanana.triggers.batch.RunComfyBatchTrigger": RunComfyBatchTrigger,
    }[path]
    return cls(**json.loads(json.dumps(kwargs)))


async def first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger ended without an event")


def run_trigger(trigger: Any) -> dict[str, Any]:
    return asyncio.run(first_event(trigger))


def defer(task: Any, context: dict[str, Any]) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as info:
        task.execute(context)
    return info.value


def run_deferred(task: Any, context: dict[str, Any], seen: list[Any] | None = None) -> Any:
    """execute → TaskDeferred → the real trigger, rebuilt from its kwargs → execute_complete."""
    try:
        return task.execute(context)
    except TaskDeferred as deferred:
        trigger = rebuild(deferred.trigger)
        event = run_trigger(trigger)
        if seen is not None:
            seen.extend([deferred.trigger.serialize(), event])
        return getattr(task, deferred.method_name)(context, event)


@pytest.fixture
def make_conn(monkeypatch: pytest.MonkeyPatch, emulator: Any) -> Callable[..., str]:
    """Define a runcomfy connection to the emulator with the given extras; returns its id."""

    def make(conn_id: str, **extra: Any) -> str:
        extra = {"allow_insecure_inputs": True, "retry_max_wait_s": 0.05, **extra}
        body = {"conn_type": "runcomfy", "host": emulator.base_url, "password": emulator.token}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**body, "extra": extra}))
        return conn_id

    return make


class TaskLogs:
    """Task-log text from both logging stacks: stdlib records (provider modules, httpx) via caplog,
    and Airflow's structlog task/trigger loggers, which print to stdout, via capfd."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
        self._caplog, self._capfd = caplog, capfd
        self._printed: list[str] = []

    @property
    def text(self) -> str:
        out, _err = self._capfd.readouterr()
        self._printed.append(out)
        return client_side_log_text(self._caplog) + "\n" + "".join(self._printed)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> TaskLogs:
    """Every record of the provider, Airflow task/trigger and httpx loggers, at DEBUG."""
    caplog.set_level(logging.INFO)
    for name in PROVIDER_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return TaskLogs(caplog, capfd)


def client_side_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Formatted log lines emitted by the provider's side (not by the emulator's or moto's threads)."""
    lines = []
    for record in caplog.records:
        if (record.threadName or "").startswith("runcomfy-emulator") or record.name.startswith(
            ("werkzeug", "moto", "botocore", "urllib3", "boto3", "s3transfer")
        ):
            continue
        lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")
    return "\n".join(lines)


def emulator_signature(url: str) -> str:
    """The ``sig`` query value of an emulator output URL."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["sig"][0]
