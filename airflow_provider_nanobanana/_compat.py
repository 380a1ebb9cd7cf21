"""Imports whose public home moved between the Airflow 3.x releases this provider supports.

Everything version-dependent lives here, so the rest of the package reads as plain Airflow 3.
"""

from __future__ import annotations

from typing import Any

try:  # Airflow >= 3.2
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException, TaskDeferred  # type: ignore[no-redef]

try:  # Airflow >= 3.2
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment]

__all__ = ["AirflowFailException", "TaskDeferred", "conf", "mask_secret"]


def mask_secret(secret: Any, name: str | None = None) -> None:
    """Ask Airflow to redact ``secret`` from task logs and rendered fields; a no-op outside Airflow."""
    if not secret:
        return
    try:
        from airflow.sdk.log import mask_secret as _mask
    except ImportError:  # Airflow < 3.2
        try:
            from airflow.sdk.execution_time.secrets_masker import mask_secret as _mask  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - no masker available at all
            return
    _mask(secret, name)
