"""``python -m benchmarks.child TASK JSON``: one measurement in a fresh process, result on stdout.

A fresh process per measurement keeps peak RSS (``ru_maxrss``) and CPU time attributable to exactly
one variant. The last stdout line is ``RESULT {json}``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from typing import Any

RESULT_PREFIX = "RESULT "
TASKS = {
    "density": "benchmarks.density",
    "workers": "benchmarks.workers",
    "polls": "benchmarks.polls",
    "archive": "benchmarks.archive",
    "reuse": "benchmarks.reuse",
    "batch": "benchmarks.batch",
    "transport": "benchmarks.transport",
}


def write_result(result: dict[str, Any]) -> None:
    """A child's answer: one ``RESULT {json}`` line on stdout, read back by :func:`read_result`."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def read_result(stdout: str) -> dict[str, Any] | None:
    """The last ``RESULT`` line of a child's stdout, or ``None`` if it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX) :]))
    return None


def run_child(task: str, args: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Run ``task`` in a child process; a crash or timeout becomes an ``error`` entry, not an abort."""
    cmd = [sys.executable, "-m", "benchmarks.child", task, json.dumps(args)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"error": f"child {task} exceeded {timeout_s:.0f}s"}
    if (result := read_result(done.stdout)) is not None:
        return result
    tail = (done.stderr or "").strip().splitlines()[-5:]
    return {"error": f"child {task} exited {done.returncode}: {' | '.join(tail)}"}


def main(argv: list[str]) -> int:
    task, raw = argv[0], argv[1]
    args = json.loads(raw)
    from benchmarks.common import configure_airflow_env

    configure_airflow_env(args["emulator_url"], args.get("moto_url"))
    module = importlib.import_module(TASKS[task])
    write_result(module.child_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
