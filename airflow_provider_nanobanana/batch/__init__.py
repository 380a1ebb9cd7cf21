"""Many edits in one task: the batch wing, in one place.

=================  ======================================================================
``state``          items, their states and the merge of two writers' views (pure data)
``checkpoint``     the batch's S3 objects: state (``If-Match``), claims (``If-None-Match``)
``run``            one run of the trigger: claim, submit, watch, record, refill
``trigger``        :class:`RunComfyBatchTrigger`, the Airflow face of a run
``operator``       :class:`NanoBananaBatchEditOperator`: items in, archives and a summary out
=================  ======================================================================

``airflow_provider_nanobanana.operators.batch`` and ``...triggers.batch`` still import the operator
and the trigger (DAGs and serialized triggers of 0.1.0 name those paths).
"""

from __future__ import annotations

from airflow_provider_nanobanana.batch.checkpoint import BatchCheckpoint, BatchSupersededError
from airflow_provider_nanobanana.batch.state import BatchEvent, BatchItem, BatchState, ItemState, summary

__all__ = [
    "BatchCheckpoint",
    "BatchEvent",
    "BatchItem",
    "BatchState",
    "BatchSupersededError",
    "ItemState",
    "summary",
]
