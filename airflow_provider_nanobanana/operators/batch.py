"""The batch operator's 0.1.0 import path; it lives in :mod:`airflow_provider_nanobanana.batch.operator`."""

from __future__ import annotations

from airflow_provider_nanobanana.batch.operator import NanoBananaBatchEditOperator

__all__ = ["NanoBananaBatchEditOperator"]
