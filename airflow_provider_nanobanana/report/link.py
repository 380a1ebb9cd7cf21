"""Operator extra link "Contact sheet": opens the HTML report a batch or a fleet report task wrote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: XCom key of the :class:`~airflow_provider_nanobanana.report.writer.ReportLocation` dict.
REPORT_XCOM_KEY = "nanobanana_report"


class ContactSheetLink(BaseOperatorLink):
    """Links to the task's contact sheet page (an unsigned object URL, or the AWS console's page)."""

    name = "Contact sheet"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            from airflow.sdk.execution_time.xcom import XCom

            report = XCom.get_value(ti_key=ti_key, key=REPORT_XCOM_KEY)
        except Exception:  # noqa: BLE001 - a missing link must never break the UI or the task
            return ""
        url = report.get("url") if isinstance(report, dict) else None
        return url if isinstance(url, str) and url.startswith(("https://", "http://")) else ""
