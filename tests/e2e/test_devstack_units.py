"""Fast checks of the devstack pieces the e2e test and the demo rely on (no Airflow processes).

Stopping is what matters most: a leaked scheduler or moto server outlives the test run and holds
ports and memory on a 2-core CI machine, so the group kill is tested against a child that ignores
SIGTERM and a grandchild that would otherwise be orphaned.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from devstack.contact_sheet import SheetRow, render_contact_sheet
from devstack.processes import ManagedProcess, ServiceError, stop_all, wait_until
from devstack.seed import make_input_image, parse_s3_uri
from devstack.services import base_env

#: Ignores SIGTERM, starts a grandchild in the same group, prints both pids, then sleeps.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_stop_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    proc = ManagedProcess("stubborn", [sys.executable, "-c", STUBBORN], dict(os.environ), log, grace_s=1.0)
    proc.start()
    grandchild = wait_until(
        lambda: int(log.read_text().split()[0]) if log.exists() and log.read_text().strip() else None,
        timeout_s=20,
        what="the grandchild pid",
        interval_s=0.1,
    )
    leader = proc.pid
    assert leader is not None
    assert _alive(leader)
    assert _alive(grandchild)
    stop_all([proc])  # TERM, then KILL after the grace: bounded by construction
    assert not _alive(leader)
    wait_until(lambda: True if not _alive(grandchild) else None, timeout_s=5, what="the grandchild to die")
    stop_all([proc])  # a second stop must not signal a group id that may have been reused


def test_kill_takes_the_whole_group_down_at_once_and_is_then_not_a_crash(tmp_path: Path) -> None:
    """``kill`` is a simulated crash (the HA triggerer test): SIGKILL, no grace, children included."""
    log = tmp_path / "stubborn.log"
    proc = ManagedProcess("stubborn", [sys.executable, "-c", STUBBORN], dict(os.environ), log, grace_s=600)
    proc.start()
    grandchild = wait_until(
        lambda: int(log.read_text().split()[0]) if log.exists() and log.read_text().strip() else None,
        timeout_s=20,
        what="the grandchild pid",
        interval_s=0.1,
    )
    leader = proc.pid
    assert leader is not None
    proc.kill()  # a 600 s grace would hang here if kill waited for SIGTERM like stop does
    assert not _alive(leader)
    wait_until(lambda: True if not _alive(grandchild) else None, timeout_s=5, what="the grandchild to die")
    proc.check_alive()  # killed on purpose: not reported as a crashed service
    proc.kill()
    stop_all([proc])  # neither signals a group id that may have been reused


def test_wait_until_fails_fast_with_the_log_tail_when_the_service_dies(tmp_path: Path) -> None:
    log = tmp_path / "crash.log"
    argv = [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
    proc = ManagedProcess("crasher", argv, dict(os.environ), log).start()
    # The error names the death and the log, not "timed out after 60s": it did not wait the timeout out.
    with pytest.raises(ServiceError, match=r"crasher exited with code 3(.|\n)*boom: bad config"):
        wait_until(lambda: None, timeout_s=60, what="never", interval_s=0.1, alive=proc.check_alive)
    proc.stop()


def test_base_env_drops_the_test_suites_airflow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    monkeypatch.setenv("AIRFLOW_HOME", "/somewhere/else")
    env = base_env()
    assert not [k for k in env if k.startswith("AIRFLOW")]
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert "127.0.0.1" in env["NO_PROXY"]


def test_seed_images_are_distinct_pngs() -> None:
    images = [make_input_image(i, 6) for i in range(1, 7)]
    assert len(set(images)) == 6
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert image.size == (256, 256)
    assert parse_s3_uri("s3://bucket/in/a.png") == ("bucket", "in/a.png")
    with pytest.raises(ValueError, match="not an s3"):
        parse_s3_uri("https://bucket/in/a.png")


def test_contact_sheet_has_one_row_per_input_and_a_column_per_output() -> None:
    rows = [
        SheetRow("input 1", make_input_image(1, 2), [make_input_image(2, 2)] * 2, ["a", "b"]),
        SheetRow("input 2", make_input_image(2, 2)),
    ]
    sheet = render_contact_sheet(rows, "title", "subtitle")
    narrow = render_contact_sheet(rows[1:], "title")
    assert sheet.width > narrow.width, "three columns are wider than two"
    assert sheet.height > narrow.height, "two rows are taller than one"
