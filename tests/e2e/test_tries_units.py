"""The try counting and log scanning of ``devstack.tries`` against log lines Airflow 3.3 really wrote.

The lines below are from a stress run that hit the defer-exit race (issue #14): map index 18
deferred, its trigger fired 1.7 s later, the worker's supervisor noticed the task process had exited
only after 5.2 s, and the scheduler drained that stale "success" after the task had been queued again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack import demo
from devstack.airflow_api import TaskInstanceState
from devstack.services import AirflowDeployment
from devstack.tries import (
    TryTally,
    deferral_timings,
    describe_affected,
    format_timings,
    format_tries,
    scan_scheduler_log,
)

DAG = "nanobanana_s3_enrichment"
RUN = "manual__2026-12-02T01:38:03.249280+00:00"
TI_18 = "01a23466-e6ee-7882-bf3d-b46d905bf4b1"

SCHEDULER_LOG = f"""\
2026-12-02T01:38:26.677753Z [info     ] Not executing <TaskInstance: {DAG}.edit_image {RUN} map_index=18 [scheduled] ti_id={TI_18}> since the number of tasks running or queued from DAG {DAG} is >= to the DAG's max_active_tasks limit of 16
2026-12-02T01:38:28.921079Z [info     ] Workload finished              [supervisor] duration=9.560425405999979 exit_code=0 final_state=deferred loc=supervisor.py:2658 workload_id={TI_18} workload_type=ExecuteTask
2026-12-02T01:38:29.100000Z [info     ] Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG}', task_id='edit_image', run_id='{RUN}', try_number=1, map_index=7) [airflow.jobs.scheduler_job_runner.SchedulerJobRunner] loc=scheduler_job_runner.py:1347
2026-12-02T01:38:29.255682Z [info     ] Received executor event with state success for task instance TaskInstanceKey(dag_id='{DAG}', task_id='edit_image', run_id='{RUN}', try_number=1, map_index=18) [airflow.jobs.scheduler_job_runner.SchedulerJobRunner] loc=scheduler_job_runner.py:1347
2026-12-02T01:38:29.278228Z [error    ] Executor LocalExecutor(parallelism=8) reported that the task instance <TaskInstance: {DAG}.edit_image {RUN} map_index=18 [queued] ti_id={TI_18}> finished with state success, but the task instance's state attribute is queued. Learn more: https://airflow.apache.org/docs/apache-airflow/stable/troubleshooting.html#task-state-changed-externally [airflow.task] loc=taskinstance.py:1878
2026-12-02T01:38:29.290000Z [info     ] Marking task as UP_FOR_RETRY. dag_id={DAG}, task_id=edit_image
2026-12-02T01:38:32.292339Z [info     ] Received executor event with state failed for task instance TaskInstanceKey(dag_id='{DAG}', task_id='edit_image', run_id='{RUN}', try_number=1, map_index=18) [airflow.jobs.scheduler_job_runner.SchedulerJobRunner] loc=scheduler_job_runner.py:1347
"""


def _record(timestamp: str, event: str, map_index: int, ti_id: str = TI_18) -> str:
    fields = {"timestamp": timestamp, "level": "info", "event": event, "map_index": map_index, "ti_id": ti_id}
    return json.dumps(fields)


def write_logs(root: Path) -> tuple[Path, Path]:
    scheduler_log = root / "scheduler.log"
    scheduler_log.write_text(SCHEDULER_LOG)
    task_logs = root / "task-logs"
    mapped = task_logs / f"dag_id={DAG}" / f"run_id={RUN}" / "task_id=edit_image"
    (mapped / "map_index=18").mkdir(parents=True)
    (mapped / "map_index=18" / "attempt=1.log").write_text(
        "\n".join(
            [
                _record("2026-12-02T01:38:23.687419Z", "Deferring: waiting for ea1b in the triggerer", 18),
                _record("2026-12-02T01:38:23.699042Z", "Pausing task as DEFERRED. ", 18),
                "not json at all",
            ]
        )
    )
    # The triggerer writes the trigger's lines next to the try's log.
    (mapped / "map_index=18" / "attempt=1.log.trigger.2.log").write_text(
        _record("2026-12-02T01:38:25.426830Z", "Trigger fired event", 18)
    )
    (mapped / "map_index=7").mkdir()
    (mapped / "map_index=7" / "attempt=1.log").write_text(
        _record("2026-12-02T01:38:28.600000Z", "Pausing task as DEFERRED. ", 7, ti_id="other")
    )
    return scheduler_log, task_logs


def ti(map_index: int, state: str, try_number: int = 1) -> TaskInstanceState:
    return TaskInstanceState("edit_image", map_index, state, try_number)


def test_tally_counts_first_try_successes_retries_and_failed_tries() -> None:
    tally = TryTally([ti(0, "success"), ti(1, "success", 2), ti(2, "up_for_retry"), ti(3, "failed", 2)])
    assert (tally.total, len(tally.first_try_successes)) == (4, 1)
    assert [t.map_index for t in tally.retried] == [1, 3]
    assert [t.map_index for t in tally.failed] == [2, 3]
    assert [t.map_index for t in tally.affected] == [1, 2, 3]
    assert not tally.clean
    assert describe_affected(tally) == [
        "edit_image[1]: try 2, success",
        "edit_image[2]: try 1, up_for_retry",
        "edit_image[3]: try 2, failed",
    ]
    assert TryTally([ti(0, "success"), ti(1, "success")]).clean
    assert not TryTally([ti(0, "running")]).clean  # not failed, but not a first-try success either


def test_scheduler_log_scan_finds_the_mismatch_and_the_retry(tmp_path: Path) -> None:
    scheduler_log, _ = write_logs(tmp_path)
    scan = scan_scheduler_log(scheduler_log)
    assert len(scan.mismatch_lines) == 1
    assert "map_index=18 [queued]" in scan.mismatch_lines[0]
    assert len(scan.up_for_retry_lines) == 1
    assert not scan.clean
    assert scan_scheduler_log(tmp_path / "missing.log").clean
    line = format_tries(TryTally([ti(0, "success"), ti(18, "failed")]), scan)
    assert line == (
        "task tries: 1 of 2 succeeded first try; 0 retried, 1 failed; "
        "scheduler log: 1 executor/state mismatches, 1 up_for_retry lines"
    )


def test_deferral_timings_line_up_deferral_fire_exit_and_drain(tmp_path: Path) -> None:
    scheduler_log, task_logs = write_logs(tmp_path)
    timings = deferral_timings(scheduler_log, task_logs, DAG, RUN)
    assert [(t.map_index, t.try_number) for t in timings] == [(7, 1), (18, 1)]
    seven, eighteen = timings
    assert eighteen.ti_id == TI_18
    assert eighteen.fire_s == pytest.approx(1.7278, abs=1e-3)
    assert eighteen.exit_s == pytest.approx(5.2220, abs=1e-3)
    assert eighteen.drain_s == pytest.approx(5.5566, abs=1e-3)
    assert eighteen.mismatch_at is not None
    assert eighteen.fired_before_drain
    # Map index 7 deferred but never fired in these logs; its drain is still measured.
    assert seven.fire_s is None
    assert seven.exit_s is None
    assert seven.drain_s == pytest.approx(0.5, abs=1e-3)
    assert seven.mismatch_at is None
    lines = format_timings(timings)
    assert lines[0].startswith("2 deferral(s); deferral -> executor event drained: min 0.50s")
    assert "1 fired before the drain, 1 met a mismatch" in lines[2]
    assert lines[3].startswith("  edit_image[18] try 1: deferred 01:38:23.699042, fired +1.73s")
    assert lines[3].endswith("process exit +5.22s, drained +5.56s, mismatch +5.58s")
    assert deferral_timings(tmp_path / "none.log", tmp_path / "none", DAG, RUN) == []


def test_local_settings_are_written_where_airflow_imports_them(tmp_path: Path) -> None:
    deployment = AirflowDeployment(home=tmp_path / "home", log_dir=tmp_path, local_settings="X = 1\n")
    path = deployment.write_local_settings()
    assert path == tmp_path / "home" / "config" / "airflow_local_settings.py"
    assert path.read_text() == "X = 1\n"
    assert AirflowDeployment(home=tmp_path / "h2", log_dir=tmp_path).write_local_settings() is None


def test_demo_run_timeout_and_cap_scale_with_the_image_count() -> None:
    assert demo.parse_args([]).timeout == 300.0
    args = demo.parse_args(["--images", "40", "--emulator-args", "--max-running 8 --queue-s 0 --run-s 3"])
    assert args.timeout == 120 + 8 * 40
    assert demo.parse_args(["--images", "40", "--timeout", "90"]).timeout == 90.0
    env = demo.parse_args(["--airflow-env", "AIRFLOW__CORE__PARALLELISM=8", "--airflow-env", "A=b=c"])
    assert demo.airflow_env(env.airflow_env) == {"AIRFLOW__CORE__PARALLELISM": "8", "A": "b=c"}
    with pytest.raises(SystemExit):
        demo.parse_args(["--images", "501"])  # beyond the DAG's max_images limit
    with pytest.raises(SystemExit):
        demo.parse_args(["--airflow-env", "NO_EQUALS_SIGN"])
