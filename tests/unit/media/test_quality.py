"""The output quality gate, one defect at a time: pure decoding checks and the gate's policies."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any

import pytest
from PIL import Image, ImageFile

from airflow_provider_nanobanana.media.errors import OutputFailure
from airflow_provider_nanobanana.media.quality import (
    COUNT_KEY,
    BadOutputError,
    OnBadOutput,
    QualityGate,
    QualityLimits,
    check_max_resubmits,
    count_problem,
    inspect_output,
)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photo_like(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Real content: a gradient with a bright square, nothing like a placeholder."""
    ramp = Image.linear_gradient("L").resize(size)
    image = Image.merge(
        "RGB", (ramp, ramp.rotate(90).resize(size), ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    )
    image.paste((250, 250, 20), (20, 20, 80, 80))
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * min(width, 4096)) * 8, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


FORMATS = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]


# --- inspect_output: one defect each ----------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "content_type"), FORMATS)
def test_a_real_image_passes(fmt: str, content_type: str) -> None:
    assert inspect_output(encode(photo_like(), fmt), content_type) is None


def test_the_emulators_outputs_pass() -> None:
    from airflow_provider_nanobanana.emulator.images import RenderSpec, render_output

    source = encode(Image.new("RGB", (64, 48), (200, 80, 40)), "JPEG")  # a flat input, as tests use
    for fmt, content_type in [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]:
        data = render_output(RenderSpec(512, 384, 0, 0, "make it purple", fmt, source))
        assert inspect_output(data, content_type) is None


@pytest.mark.parametrize(("fmt", "content_type"), FORMATS)
@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (128, 128, 128), (37, 200, 90)])
def test_a_uniform_blank_is_refused_in_every_format(
    fmt: str, content_type: str, colour: tuple[int, ...]
) -> None:
    problem = inspect_output(encode(Image.new("RGB", (1024, 768), colour), fmt), content_type)
    assert problem is not None
    assert problem.startswith("a uniform blank")


def test_a_blank_with_a_stray_mark_is_still_blank_but_real_content_is_not() -> None:
    image = Image.new("RGB", (1000, 1000), (20, 20, 20))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # 0.04 % of the frame: a tiny logo
    assert inspect_output(encode(image, "PNG"), "image/png") is not None
    image.paste((255, 255, 255), (0, 0, 60, 60))  # 0.36 %: content
    assert inspect_output(encode(image, "PNG"), "image/png") is None


def test_a_fully_transparent_image_is_blank() -> None:
    data = encode(Image.new("RGBA", (300, 200), (10, 200, 30, 0)), "PNG")
    assert "uniform blank" in str(inspect_output(data, "image/png"))


def test_a_palette_image_is_decoded() -> None:
    data = encode(photo_like().convert("P"), "PNG")
    assert inspect_output(data, "image/png") is None


def test_zero_bytes() -> None:
    assert inspect_output(b"", "image/png") == "the output is empty (0 bytes)"


@pytest.mark.parametrize(("fmt", "content_type"), FORMATS)
def test_a_truncated_file_does_not_decode(fmt: str, content_type: str) -> None:
    noise = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))  # no compression to hide in
    data = encode(noise, fmt)
    problem = inspect_output(data[: len(data) // 2], content_type)
    assert problem is not None
    assert problem.startswith(f"does not decode as {fmt}")


def test_bytes_that_are_not_the_announced_format() -> None:
    assert "not a PNG file" in str(inspect_output(b"\x89PNG\r\n\x1a\n" + os.urandom(300), "image/png"))
    assert "not a PNG file" in str(inspect_output(encode(photo_like(), "JPEG"), "image/png"))


def test_an_unknown_type_is_not_decodable() -> None:
    problem = inspect_output(os.urandom(300), "application/octet-stream")
    assert problem == "not a decodable image (its bytes and headers say application/octet-stream)"


def test_zero_dimensions() -> None:
    assert inspect_output(png_declaring(0, 100), "image/png") is not None


@pytest.mark.parametrize("side", [6_000, 20_000, 100_000])
def test_a_decompression_bomb_is_refused_without_decoding(monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    """36 M to 10 G pixels declared in a file of a few KB: refused from the header, never loaded."""

    def no_decoding(self: Any) -> None:
        raise AssertionError("a bomb must never be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = png_declaring(side, side)
    assert len(data) < 10_000
    problem = inspect_output(data, "image/png")
    assert problem is not None
    assert problem.startswith("refused without decoding")
    assert "max_pixels=25,000,000" in problem


def test_max_pixels_is_the_limit() -> None:
    data = encode(photo_like((100, 100)), "PNG")
    assert inspect_output(data, "image/png", QualityLimits(max_pixels=10_000)) is None
    assert "refused without decoding" in str(
        inspect_output(data, "image/png", QualityLimits(max_pixels=9_999))
    )


def test_count() -> None:
    assert count_problem(2, 2) is None
    assert count_problem(1, 2) == (
        "1 output URL(s) for num_images=2 (the model returned fewer images, or an empty URL, than asked for)"
    )
    assert count_problem(3, 2) is not None


# --- the policy and its parameters ------------------------------------------------------------------


def test_on_bad_output_parses_with_a_clear_error() -> None:
    assert OnBadOutput.parse("keep") is OnBadOutput.KEEP
    assert OnBadOutput.parse(OnBadOutput.RESUBMIT) is OnBadOutput.RESUBMIT
    with pytest.raises(
        ValueError, match=r"on_bad_output must be one of 'fail', 'keep', 'resubmit', got 'retry'"
    ):
        OnBadOutput.parse("retry")


@pytest.mark.parametrize("value", [-1, 1.5, True, "1", None])
def test_max_resubmits_must_be_a_whole_number(value: Any) -> None:
    with pytest.raises(ValueError, match="max_resubmits must be a whole number >= 0"):
        check_max_resubmits(value)


# --- the gate on a stream -------------------------------------------------------------------------


def chunks_of(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


BLANK = encode(Image.new("RGB", (400, 300), (0, 0, 0)), "PNG")
GOOD = encode(photo_like(), "PNG")


def test_a_good_output_streams_through_unchanged_and_clean() -> None:
    gate = QualityGate()
    assert b"".join(gate.watch(0, chunks_of(GOOD), "image/png")) == GOOD
    assert gate.problems == {}


def test_a_rejected_output_fails_after_its_last_chunk_and_before_the_stream_ends() -> None:
    """The consumer (``upload_stream``) sees every chunk, then the rejection instead of the end of the
    stream: it never reaches its final PutObject or CompleteMultipartUpload."""
    gate = QualityGate(OnBadOutput.FAIL)
    seen = bytearray()

    def consume() -> None:
        for chunk in gate.watch(3, chunks_of(BLANK), "image/png"):
            seen.extend(chunk)

    with pytest.raises(OutputFailure, match="rejected by the quality gate: a uniform blank") as info:
        consume()
    assert bytes(seen) == BLANK
    assert not info.value.transient  # the same bytes again would be just as blank: no download retry
    assert list(gate.rejected) == ["3"]
    assert gate.flagged == {}


def test_keep_flags_and_lets_the_output_through() -> None:
    gate = QualityGate(OnBadOutput.KEEP)
    assert b"".join(gate.watch(1, chunks_of(BLANK), "image/png")) == BLANK
    assert gate.rejected == {}
    assert gate.flagged["1"].startswith("a uniform blank")


def test_resubmit_rejects_like_fail() -> None:
    gate = QualityGate(OnBadOutput.RESUBMIT)
    with pytest.raises(OutputFailure):
        list(gate.watch(0, chunks_of(BLANK), "image/png"))
    assert "0" in gate.rejected


def test_an_output_too_large_to_inspect_is_a_problem_and_not_kept_in_memory() -> None:
    gate = QualityGate(OnBadOutput.KEEP, limits=QualityLimits(max_decode_bytes=len(GOOD) - 1))
    assert b"".join(gate.watch(0, chunks_of(GOOD), "image/png")) == GOOD
    assert gate.flagged["0"].startswith("too large to inspect")


def test_the_count_check() -> None:
    gate = QualityGate(OnBadOutput.FAIL, expected_count=2)
    gate.check_count(2)
    with pytest.raises(OutputFailure):
        gate.check_count(1)
    assert COUNT_KEY in gate.rejected
    keep = QualityGate(OnBadOutput.KEEP, expected_count=1)
    keep.check_count(0)
    assert COUNT_KEY in keep.flagged
    QualityGate(OnBadOutput.FAIL).check_count(7)  # no expected count: not checked


def test_the_task_error_names_each_bad_output_and_why() -> None:
    error = BadOutputError(
        "req_1", {"0": "a uniform blank", COUNT_KEY: "1 output URL(s) for num_images=2"}, paid_requests=2
    )
    text = str(error)
    assert "output 0: a uniform blank" in text
    assert "the request: 1 output URL(s)" in text
    assert "after 2 paid request(s)" in text
    assert error.request_id == "req_1"


# --- the gate inside the archiver, over a real file server and a real S3 API (moto) --------------


def manifest_of(moto_s3: Any, result: Any) -> dict[str, Any]:
    import json

    bucket, _, key = result.manifest_uri[5:].partition("/")
    return json.loads(moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def test_fail_stores_the_good_output_and_never_the_blank_one(
    hook: Any, moto_s3: Any, s3_bucket: str, files: Any
) -> None:
    from airflow_provider_nanobanana.media import OutputsNotArchivedError
    from tests.unit.media.support import REQUEST_ID, RUN_DIR, Route, archive, keys_under

    urls = [files.serve("/0.png", Route(body=GOOD)), files.serve("/1.png", Route(body=BLANK))]
    gate = QualityGate(OnBadOutput.FAIL)
    with pytest.raises(
        OutputsNotArchivedError, match=r"output 1 .*rejected by the quality gate: a uniform blank"
    ):
        archive(hook, urls, s3_bucket, quality=gate)
    assert list(gate.rejected) == ["1"]
    assert keys_under(moto_s3.client(), s3_bucket) == [f"{RUN_DIR}/{REQUEST_ID}_0.png"]  # no manifest either


def test_a_large_rejected_output_leaves_no_multipart_upload_behind(
    moto_s3: Any, s3_bucket: str, files: Any
) -> None:
    """A blank padded past one part: parts were uploaded before the last byte, and are aborted."""
    from airflow_provider_nanobanana.emulator.images import PaddedFile
    from airflow_provider_nanobanana.media import OutputsNotArchivedError
    from tests.unit.media.support import MiB, Route, archive, keys_under, make_hook

    padded = PaddedFile(BLANK, "png", 12 * MiB)
    url = files.serve("/0.png", Route(body=padded.chunks, length=padded.length))
    hook = make_hook(moto_s3.endpoint_url, part_size_bytes=5 * MiB)
    with pytest.raises(OutputsNotArchivedError, match="uniform blank"):
        archive(hook, [url], s3_bucket, quality=QualityGate(OnBadOutput.FAIL))
    client = moto_s3.client()
    assert keys_under(client, s3_bucket) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_keep_archives_the_blank_and_flags_it_in_the_manifest(
    hook: Any, moto_s3: Any, s3_bucket: str, files: Any
) -> None:
    from tests.unit.media.support import Route, archive

    urls = [files.serve("/0.png", Route(body=GOOD)), files.serve("/1.png", Route(body=BLANK))]
    gate = QualityGate(OnBadOutput.KEEP)
    result = archive(hook, urls, s3_bucket, quality=gate)
    assert len(result.outputs) == 2
    manifest = manifest_of(moto_s3, result)
    assert list(manifest["quality"]) == ["1"]
    assert manifest["quality"]["1"].startswith("a uniform blank")
    assert manifest["paid_requests"] == 1


def test_a_zero_byte_output_is_kept_and_flagged_or_rejected(
    hook: Any, moto_s3: Any, s3_bucket: str, files: Any
) -> None:
    from airflow_provider_nanobanana.media import OutputsNotArchivedError
    from tests.unit.media.support import Route, archive

    url = files.serve("/0.png", Route(body=b""))
    with pytest.raises(OutputsNotArchivedError, match=r"rejected by the quality gate: the output is empty"):
        archive(hook, [url], s3_bucket, quality=QualityGate(OnBadOutput.FAIL))
    result = archive(hook, [url], s3_bucket, quality=QualityGate(OnBadOutput.KEEP))
    assert result.outputs[0].size_bytes == 0
    assert manifest_of(moto_s3, result)["quality"] == {"0": "the output is empty (0 bytes)"}


def test_without_a_gate_nothing_is_inspected(hook: Any, moto_s3: Any, s3_bucket: str, files: Any) -> None:
    from tests.unit.media.support import Route, archive

    result = archive(hook, [files.serve("/0.png", Route(body=BLANK))], s3_bucket)
    assert "quality" not in manifest_of(moto_s3, result)
