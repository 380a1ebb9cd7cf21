"""Data lineage of an edit: S3 in, S3 out, as Airflow Assets and OpenLineage datasets.

Assets let a downstream DAG be scheduled on "new enriched images"; OpenLineage (when its provider is
installed) records which input objects produced which output objects. Only ``s3://`` locations are
reported: a pre-signed or public https URL names no stable dataset, and must not leak into lineage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.media.keys import parse_s3_uri


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
        try:
            bucket, key = parse_s3_uri(uri)  # S3 keys are literal: "?" and "#" belong to the key
        except InvalidEditRequestError:
            continue  # an https URL or a malformed URI names no stable dataset
        datasets.append(Dataset(namespace=f"s3://{bucket}", name=key))
    return datasets


def openlineage_facets(inputs: Iterable[str], outputs: Iterable[str]) -> Any | None:
    """``OperatorLineage`` for the OpenLineage listener; None when its provider is not installed."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    return OperatorLineage(inputs=_s3_datasets(inputs), outputs=_s3_datasets(outputs))
