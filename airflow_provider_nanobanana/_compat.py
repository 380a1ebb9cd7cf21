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
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef,attr-defined,unused-ignore]

try:  # Airflow >= 3.2
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf  # type: ignore[assignment]

try:  # Airflow >= 3.3: a task's retry_policy decides retry or fail from the exception itself
    from airflow.sdk.definitions.retry_policy import RetryPolicy

    HAS_RETRY_POLICY = True
except ImportError:  # Airflow < 3.3: operators take no retry_policy; Airflow's retries apply as before
    HAS_RETRY_POLICY = False

    class RetryPolicy:  # type: ignore[no-redef]
        """Stand-in base, so the provider's policy class exists; Airflow never consults it here."""


__all__ = [
    "HAS_RETRY_POLICY",
    "AirflowFailException",
    "AirflowSkipException",
    "RetryPolicy",
    "TaskDeferred",
    "airflow_mask_secret",
    "conf",
]


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
