"""Operator extra link: a button in the Airflow UI that opens the request on RunComfy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which the operator stores the request's status URL right after submitting.
REQUEST_URL_XCOM_KEY = "runcomfy_request_url"
REQUEST_ID_XCOM_KEY = "runcomfy_request_id"


class RunComfyRequestLink(BaseOperatorLink):
    """Links to the status endpoint of the request this task submitted (no secret in the URL)."""

    name = "RunComfy request"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            from airflow.sdk.execution_time.xcom import XCom

            url = XCom.get_value(ti_key=ti_key, key=REQUEST_URL_XCOM_KEY)
        except Exception:  # noqa: BLE001 - a missing link must never break the UI or the task
            return ""
        return url if isinstance(url, str) else ""
