"""The batch trigger's class path, as serialized by every version (0.1.0 included).

Airflow stores a deferred trigger by class path; this module keeps that path importable. The code
lives in :mod:`airflow_provider_nanobanana.batch.trigger`.
"""

from __future__ import annotations

from airflow_provider_nanobanana.batch.trigger import RunComfyBatchTrigger

__all__ = ["RunComfyBatchTrigger"]
