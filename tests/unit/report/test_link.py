"""The "Contact sheet" extra link: the report's URL from XCom, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_nanobanana.get_provider_info import get_provider_info
from airflow_provider_nanobanana.report.link import REPORT_XCOM_KEY, ContactSheetLink


def link_for(monkeypatch: pytest.MonkeyPatch, value: Any) -> str:
    from airflow.sdk.execution_time.xcom import XCom

    seen: list[str] = []

    def get_value(*, ti_key: Any, key: str) -> Any:
        seen.append(key)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(XCom, "get_value", staticmethod(get_value))
    url = ContactSheetLink().get_link(None, ti_key=object())  # type: ignore[arg-type]
    assert seen == [REPORT_XCOM_KEY]
    return url


def test_the_link_opens_the_reports_url(monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"html": "s3://b/k.html", "url": "http://127.0.0.1:5000/b/k.html"}
    assert link_for(monkeypatch, report) == "http://127.0.0.1:5000/b/k.html"


@pytest.mark.parametrize(
    "value", [None, {"url": "javascript:alert(1)"}, {"url": "s3://b/k.html"}, "x", RuntimeError("db down")]
)
def test_no_report_no_link_and_never_an_error(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    assert link_for(monkeypatch, value) == ""


def test_the_link_is_registered_with_airflow() -> None:
    assert "airflow_provider_nanobanana.report.link.ContactSheetLink" in get_provider_info()["extra-links"]
