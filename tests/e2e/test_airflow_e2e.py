"""End to end: a real Airflow 3 deployment runs ``nanobanana_s3_enrichment`` against the emulator and moto.

Every component is a separate process (API server, scheduler, dag-processor, triggerer, emulator,
moto S3), exactly as in production minus the network. The emulator runs one job at a time with a
queue delay, so the edit tasks must really wait in the triggerer (``deferred``) while their jobs are
queued or running, and the run must still end with every image archived and exactly one paid
request per input.

On failure the tails of every service log and the newest task logs are printed (pytest shows them
under "Captured stdout"); everything is also kept under ``.run/e2e-<pid>/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from devstack.airflow_api import AirflowClient, TaskInstanceState
from devstack.enrichment import DAG_ID, EDIT_TASK_ID, format_states, trigger_enrichment
from devstack.seed import list_objects, read_object, seed_inputs
from devstack.services import LocalStack
from tests.e2e.conftest import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

N_IMAGES = 3
BUCKET = "nanobanana-e2e"
CONF = {
    "bucket": BUCKET,
    "input_prefix": "in/",
    "output_prefix": "out/",
    "prompt": "Make it look like a pencil sketch",
}
#: One job at a time with a queue delay: the first job ends (at ~8 s) while its worker still
#: watches (``wait_before_defer_s``, 10 s by default), the others outlast that wait and must defer.
EMULATOR_ARGS = ["--max-running", "1", "--queue-s", "2", "--run-s", "6"]
ACTIVE_JOB_STATES = {"in_queue", "in_progress"}
RUN_TIMEOUT_S = 240.0


@dataclass
class Observations:
    """What polling saw while the run was in flight."""

    polls: int = 0
    #: (map_index, request_id, job state at the emulator) for edit TIs seen ``deferred``.
    deferred_while_active: list[tuple[int, str, str]] = field(default_factory=list)
    states_seen: set[str] = field(default_factory=set)
    history: list[str] = field(default_factory=list)


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    yield from running_stack(request, f"e2e-{os.getpid()}", emulator_args=EMULATOR_ARGS)


@contextlib.contextmanager
def logs_on_failure(stack: LocalStack) -> Iterator[None]:
    """Print service and task log tails when the block fails, so CI failures explain themselves."""
    try:
        yield
    except BaseException:
        print(f"\n===== logs of the failed run (all files under {stack.run_dir}) =====")
        print(stack.diagnostics(lines=80, task_logs=12))
        raise


def watch(client: AirflowClient, stack: LocalStack, run_id: str, seen: Observations) -> Any:
    """An ``on_poll`` callback: for each deferred edit TI, ask the emulator what its job is doing."""

    def on_poll(run_state: str, tis: list[TaskInstanceState]) -> None:
        seen.polls += 1
        seen.history.append(f"{run_state} | {format_states(tis)}")
        for ti in tis:
            if ti.task_id != EDIT_TASK_ID:
                continue
            seen.states_seen.add(ti.state or "none")
            if ti.state != "deferred":
                continue
            request_id = client.xcom(
                DAG_ID, run_id, EDIT_TASK_ID, key="runcomfy_request_id", map_index=ti.map_index
            )
            job_state = stack.emulator.job_status(request_id)
            if job_state in ACTIVE_JOB_STATES:
                seen.deferred_while_active.append((ti.map_index, request_id, job_state))

    return on_poll


def check_bucket(s3: Any, results: list[dict[str, Any]], input_uris: list[str]) -> None:
    """Outputs are real images, one manifest per request names it and its input; nothing extra."""
    keys = list_objects(s3, BUCKET, "out/")
    images = [k for k in keys if not k.endswith(".manifest.json")]
    manifests = [k for k in keys if k.endswith(".manifest.json")]
    assert len(images) == N_IMAGES, keys
    assert len(manifests) == N_IMAGES, keys
    archived = sorted(uri for r in results for uri in r["archived"])
    assert archived == sorted(f"s3://{BUCKET}/{k}" for k in images)
    for key in images:
        with Image.open(io.BytesIO(read_object(s3, f"s3://{BUCKET}/{key}"))) as image:
            image.verify()
            assert image.format == "PNG", key
    manifest_inputs = []
    for r in results:
        manifest = json.loads(read_object(s3, r["manifest"]))
        assert manifest["request_id"] == r["request_id"]
        assert r["request_id"] in r["manifest"]
        assert sorted(o["s3_uri"] for o in manifest["outputs"]) == sorted(r["archived"])
        manifest_inputs += manifest["inputs"]
    assert sorted(manifest_inputs) == sorted(input_uris), "each input edited exactly once"


def check_request_page(
    client: AirflowClient, stack: LocalStack, run_id: str, map_index: int, request_id: str
) -> None:
    """Follow the "RunComfy request" extra link as a browser would: a page behind Airflow's login
    that shows the request's state, with no token in it."""
    links = client._call(
        "GET",
        f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{EDIT_TASK_ID}/links",
        params={"map_index": map_index},
    )["extra_links"]
    url = links["RunComfy request"]
    assert url.startswith(f"/nanobanana/requests/{request_id}?"), url
    token = client._http.headers["Authorization"].removeprefix("Bearer ")
    with httpx.Client(base_url=client.base_url, timeout=30) as browser:
        assert browser.get(url).status_code in (401, 403)  # not without an Airflow login
        browser.cookies.set("_token", token)  # the UI's session cookie after logging in
        page = browser.get(url)
    assert page.status_code == 200, page.text[:500]
    assert page.headers["content-type"].startswith("text/html")
    assert request_id in page.text
    assert "<strong>completed</strong>" in page.text
    assert stack.emulator.token not in page.text


def test_enrichment_dag_runs_deferred_and_archives_every_image(stack: LocalStack) -> None:
    with logs_on_failure(stack):
        s3 = stack.moto.client()
        seeded = seed_inputs(s3, BUCKET, CONF["input_prefix"], N_IMAGES)
        client = stack.airflow.client()
        run_id = trigger_enrichment(client, CONF, alive=stack.check_alive)

        seen = Observations()
        state = client.wait_for_run(
            DAG_ID,
            run_id,
            timeout_s=RUN_TIMEOUT_S,
            on_poll=watch(client, stack, run_id, seen),
            interval_s=0.3,
        )
        print(f"{seen.polls} polls; edit states seen: {sorted(seen.states_seen)}; last: {seen.history[-1]}")
        assert state == "success", "\n".join(seen.history[-20:])

        edit_tis = [ti for ti in client.task_instances(DAG_ID, run_id) if ti.task_id == EDIT_TASK_ID]
        assert sorted(ti.map_index for ti in edit_tis) == list(range(N_IMAGES))
        assert {ti.state for ti in edit_tis} == {"success"}
        # map_index_template labels each mapped task with its input in the UI.
        assert sorted(ti.rendered_map_index or "" for ti in edit_tis) == sorted(img.uri for img in seeded)
        assert seen.deferred_while_active, (
            "no edit task was seen deferred while its job was queued/running:\n" + "\n".join(seen.history)
        )

        results = [client.xcom(DAG_ID, run_id, EDIT_TASK_ID, map_index=ti.map_index) for ti in edit_tis]
        for ti, result in zip(edit_tis, results, strict=True):
            pushed_id = client.xcom(
                DAG_ID, run_id, EDIT_TASK_ID, key="runcomfy_request_id", map_index=ti.map_index
            )
            assert result["request_id"] == pushed_id
            assert result["status"] == "completed"
            assert result["archived"], result
            assert all(uri.startswith(f"s3://{BUCKET}/out/") for uri in result["archived"]), result
            assert result["manifest"].startswith(f"s3://{BUCKET}/out/"), result
        assert len({r["request_id"] for r in results}) == N_IMAGES

        check_bucket(s3, results, [img.uri for img in seeded])
        check_request_page(client, stack, run_id, edit_tis[0].map_index, results[0]["request_id"])

        summary = client.xcom(DAG_ID, run_id, "summarize")
        assert summary["requests"] == N_IMAGES
        assert sorted(summary["request_ids"]) == sorted(r["request_id"] for r in results)

        counters = stack.emulator.counters()
        assert counters["submits"] == N_IMAGES, counters
        assert counters["cancels"] == 0, counters
        assert counters["jobs_by_state"]["completed"] == N_IMAGES, counters
        assert counters["peak_running"] <= 1, counters  # the emulator really ran one job at a time


BATCH_DAG_ID = "nanobanana_batch_enrichment"
BATCH_TASK_ID = "edit_prefix"
N_BATCH = 8


def test_batch_dag_edits_a_prefix_in_one_deferred_task(stack: LocalStack) -> None:
    """One task, one trigger, eight images: bounded in flight, one paid job each, all archived."""
    with logs_on_failure(stack):
        s3 = stack.moto.client()
        seeded = seed_inputs(s3, BUCKET, "batch-in/", N_BATCH)
        client = stack.airflow.client()
        client.wait_for_dag(BATCH_DAG_ID, timeout_s=120, alive=stack.check_alive)
        client.unpause(BATCH_DAG_ID)
        conf = {"bucket": BUCKET, "input_prefix": "batch-in/", "output_prefix": "batch-out/"}
        run_id = client.trigger(BATCH_DAG_ID, conf=conf)

        deferred_while_active: list[int] = []

        def on_poll(run_state: str, tis: list[TaskInstanceState]) -> None:
            for ti in tis:
                if ti.task_id == BATCH_TASK_ID and ti.state == "deferred":
                    active = stack.emulator.counters()["active"]
                    if active:
                        deferred_while_active.append(active)

        state = client.wait_for_run(
            BATCH_DAG_ID, run_id, timeout_s=RUN_TIMEOUT_S, on_poll=on_poll, interval_s=0.5
        )
        assert state == "success"
        assert deferred_while_active, "the batch task was never seen deferred while jobs were active"

        summary = client.xcom(BATCH_DAG_ID, run_id, BATCH_TASK_ID)
        assert summary["total"] == N_BATCH
        assert summary["succeeded"] == N_BATCH
        assert summary["failed"] == 0
        manifest = json.loads(read_object(s3, summary["manifest"]))
        assert sorted(i["image_urls"][0] for i in manifest["items"]) == sorted(img.uri for img in seeded)
        archived = [uri for item in manifest["items"] for uri in item["archived"]]
        assert len(archived) == N_BATCH
        for uri in archived:
            with Image.open(io.BytesIO(read_object(s3, uri))) as image:
                image.verify()

        counters = stack.emulator.counters()
        assert counters["jobs_created"] == N_BATCH, counters  # one paid job per image
        assert counters["peak_active"] <= 3, counters  # the DAG's max_in_flight held at RunComfy
