"""Data lineage of an edit: S3 in, S3 out, as Airflow Assets and OpenLineage datasets.

Assets let a downstream DAG be scheduled on "new enriched images"; OpenLineage (when its provider is
installed) records which input objects produced which output objects. Only ``s3://`` locations are
reported: a pre-signed or public https URL names no stable dataset, and must not leak into lineage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit


def output_asset(output_s3_uri: str | None) -> Any | None:
    """An Asset for a literal output prefix; None when templated (unknown at parse time) or unset."""
    if not output_s3_uri or "{{" in output_s3_uri or "{%" in output_s3_uri:
        return None
    from airflow.sdk import Asset

    return Asset(uri=output_s3_uri)


def _s3_datasets(uris: Iterable[str]) -> list[Any]:
    from airflow.providers.common.compat.openlineage.facet import Dataset

    datasets = []
    for uri in uris:
        parts = urlsplit(uri)
        if parts.scheme == "s3" and parts.netloc:
            datasets.append(Dataset(namespace=f"s3://{parts.netloc}", name=parts.path.lstrip("/")))
    return datasets


def openlineage_facets(inputs: Iterable[str], outputs: Iterable[str]) -> Any | None:
    """``OperatorLineage`` for the OpenLineage listener; None when its provider is not installed."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    return OperatorLineage(inputs=_s3_datasets(inputs), outputs=_s3_datasets(outputs))
