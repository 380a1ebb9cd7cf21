"""Makes each test's outcome visible to its fixtures, so a passing e2e run can delete its files."""

from __future__ import annotations

from collections.abc import Generator

import pytest


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
