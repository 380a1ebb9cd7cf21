"""The edit fingerprint (``spend/fingerprint.py``): stable across URL changes, sensitive to everything else."""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import pytest

from airflow_provider_nanobanana.exceptions import InvalidEditRequestError
from airflow_provider_nanobanana.spend.fingerprint import InputHasher, fingerprint, fingerprint_hex
from tests.conftest import png_bytes
from tests.unit.media.support import FileServer, Route, make_hook

PARAMS: dict[str, Any] = {
    "num_images": 1,
    "seed": 7,
    "aspect_ratio": "auto",
    "resolution": "1K",
    "output_format": "png",
    "safety_tolerance": 4,
    "limit_generations": True,
    "enable_web_search": False,
}
A, B = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()


def fp(**changes: Any) -> str:
    base: dict[str, Any] = {"model_id": "google/nano-banana-2/edit", "parameters": PARAMS, "prompt": "p"}
    base["input_sha256"] = [A, B]
    return fingerprint(**{**base, **changes})


def test_the_fingerprint_is_versioned_and_independent_of_key_order() -> None:
    value = fp()
    assert value.startswith("v1:")
    assert len(fingerprint_hex(value)) == 64
    assert fp(parameters=dict(reversed(list(PARAMS.items())))) == value


@pytest.mark.parametrize(
    "change",
    [
        {"model_id": "google/nano-banana-2/other"},
        {"prompt": "p "},
        {"input_sha256": [B, A]},  # order is part of the request
        {"input_sha256": [A]},
        {"input_sha256": [A, hashlib.sha256(b"c").hexdigest()]},
        *(
            {"parameters": {**PARAMS, name: value}}
            for name, value in [
                ("seed", 8),
                ("num_images", 2),
                ("aspect_ratio", "16:9"),
                ("resolution", "2K"),
                ("output_format", "jpeg"),
                ("safety_tolerance", 5),
                ("limit_generations", False),
                ("enable_web_search", True),
            ]
        ),
    ],
)
def test_any_change_to_what_decides_the_outputs_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert fp(**change) != fp()


def test_malformed_fingerprints_are_refused() -> None:
    for bad in ("v2:" + "0" * 64, "v1:" + "0" * 63, "v1:../../x", "nonsense"):
        with pytest.raises(ValueError, match="fingerprint"):
            fingerprint_hex(bad)


def test_inputs_are_hashed_by_bytes_so_a_new_presigned_url_keeps_the_fingerprint(
    moto_s3: Any, s3_bucket: str, files: FileServer
) -> None:
    """The same bytes behind an s3:// URI, two differently signed URLs and a gzip-coded answer."""
    body = png_bytes()
    client = moto_s3.client()
    client.put_object(Bucket=s3_bucket, Key="in/a.png", Body=body, ContentType="image/png")
    signed = [
        client.generate_presigned_url(
            "get_object", Params={"Bucket": s3_bucket, "Key": "in/a.png"}, ExpiresIn=e
        )
        for e in (600, 3600)
    ]
    assert signed[0] != signed[1]
    files.serve("/a.png", Route(body=gzip.compress(body), headers={"Content-Encoding": "gzip"}))
    hook = make_hook(moto_s3.endpoint_url)
    hasher = InputHasher(hook.get_client, max_bytes=10_000_000)

    digests = hasher.digests([f"s3://{s3_bucket}/in/a.png", *signed, files.url("/a.png?X-Amz-Signature=1")])

    assert set(digests) == {hashlib.sha256(body).hexdigest()}
    assert files.requests["/a.png"] == 1  # one streamed GET per input


def test_a_changed_byte_changes_the_digest(moto_s3: Any, s3_bucket: str) -> None:
    client = moto_s3.client()
    body = png_bytes()
    client.put_object(Bucket=s3_bucket, Key="in/a.png", Body=body)
    client.put_object(Bucket=s3_bucket, Key="in/b.png", Body=body[:-1] + bytes([body[-1] ^ 1]))
    hasher = InputHasher(make_hook(moto_s3.endpoint_url).get_client, max_bytes=10_000_000)
    first, second = hasher.digests([f"s3://{s3_bucket}/in/a.png", f"s3://{s3_bucket}/in/b.png"], threads=2)
    assert first != second


def test_an_input_over_the_cap_or_unreachable_is_refused_naming_it(files: FileServer) -> None:
    hasher = InputHasher(lambda: None, max_bytes=100)  # type: ignore[arg-type,return-value]
    big = files.serve("/big.png", Route(body=b"x" * 101))
    with pytest.raises(InvalidEditRequestError, match="larger than 100 bytes"):
        hasher.digest(big)
    with pytest.raises(InvalidEditRequestError, match="HTTP 404"):
        hasher.digest(files.url("/missing.png"))
