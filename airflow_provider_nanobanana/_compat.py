"""Imports whose public home moved between the Airflow 3.x releases this provider supports.

Everything version-dependent lives here, so the rest of the package reads as plain Airflow 3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:  # Airflow >= 3.2
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException, TaskDeferred  # type: ignore[no-redef]

try:  # Airflow >= 3.2
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment]

__all__ = ["AirflowFailException", "TaskDeferred", "airflow_mask_secret", "conf"]


def airflow_mask_secret() -> Callable[[Any, str | None], None] | None:
    """Airflow's ``mask_secret``, wherever this version keeps it; ``None`` when there is no masker.

    Looked up on each call, so importing this module never loads the task SDK's logging machinery.
    The package itself calls :func:`airflow_provider_nanobanana.redaction.mask_secret`.
    """
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # Airflow < 3.2
        try:
            from airflow.sdk.execution_time.secrets_masker import mask_secret  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - no masker available at all
            return None
    return mask_secret
