"""Registering secrets with Airflow's log masker, across the 3.x releases that moved it."""

from __future__ import annotations

from typing import Any


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
