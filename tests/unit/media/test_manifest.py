"""Object metadata and the manifest document (``media/manifest.py``)."""

from __future__ import annotations

import json

from airflow_provider_nanobanana.media.manifest import ascii_metadata, build_manifest


def test_ascii_metadata_escapes_and_cleans() -> None:
    meta = ascii_metadata({"Team Name": "café\n", "seed": 7, "skip": None, "long": "x" * 400, "%": "a%b"})
    assert meta == {"team-name": "caf%C3%A9", "seed": "7", "long": "x" * 256}
    assert all(v.isascii() for v in meta.values())


def test_build_manifest_totals_and_redaction() -> None:
    manifest = build_manifest(
        request_id="rid",
        model_id="m",
        bucket="b",
        fields={"dag_id": "d"},
        inputs=["s3://b/in.png", "https://h/x.png?sig=secret"],
        parameters={"prompt": "p", "image_urls": ["https://h/x.png?X-Amz-Signature=secret"]},
        prompt_sha256="abc",
        outputs=[{"index": 0, "size_bytes": 3}, {"index": 1, "size_bytes": 4}],
        started_at="s",
        finished_at="f",
        duration_s=1.23456,
    )
    assert manifest["total_bytes"] == 7
    assert manifest["output_count"] == 2
    assert manifest["duration_s"] == 1.235
    assert "secret" not in json.dumps(manifest)
    assert manifest["manifest_version"] == 1
