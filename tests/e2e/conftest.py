"""Makes each test's outcome visible to its fixtures, so a passing e2e run can delete its files."""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from devstack.services import LocalStack


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(FAILED_KEY, False)
    if report.failed:
        item.stash[FAILED_KEY] = True
    return report


FAILED_KEY = pytest.StashKey[bool]()


def running_stack(request: pytest.FixtureRequest, name: str, **options: Any) -> Iterator[LocalStack]:
    """A fresh stack for one test (a fixture's body): its files are deleted after a pass and kept,
    with the service logs printed, after a failure."""
    stack = LocalStack(name, **options)
    try:
        with stack:
            yield stack
    except Exception:
        print(stack.diagnostics(lines=80))
        raise
    if not request.node.stash.get(FAILED_KEY, True):
        shutil.rmtree(stack.run_dir, ignore_errors=True)
