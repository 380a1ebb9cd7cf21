"""The output quality gate: is each output a real, usable image before it is archived?

Nano Banana is known to answer some prompts with no image, an empty URL, or a blocked-content
placeholder, and a CDN can hand out an empty or cut-off file. None of these should land in S3 as if
it were a result. Each output is checked for:

* **bytes**: not empty, and small enough to inspect (:attr:`QualityLimits.max_decode_bytes`);
* **format**: it decodes as the type its bytes (or, failing that, its URL/header) announce
  (:func:`media.content.resolve_content_type`), to the last byte: a truncated file fails here;
* **dimensions**: width and height above zero, and at most :attr:`QualityLimits.max_pixels`; a
  larger header (a decompression bomb) is refused from the header alone, before any pixel is decoded;
* **not a uniform blank**: at least :attr:`QualityLimits.blank_share` of the pixels within
  :attr:`QualityLimits.blank_tolerance` of one colour is a placeholder, not an edit;

and the request as a whole for **count**: as many outputs as ``num_images`` asked for (an empty URL
is dropped by :func:`models.output_urls`, so it shows up here).

Memory: the archiver streams each output into S3 (``multipart.py``); :meth:`QualityGate.watch` keeps
a copy of the bytes of the one output being streamed (at most ``max_decode_bytes``) and decodes it
when its last byte has arrived, *before* the upload is completed. A rejected output therefore never
becomes an object: the single ``PutObject`` is not sent, or the multipart upload is aborted. Per
archiving thread that is one output's bytes plus its decoded pixels, bounded by ``max_pixels``
(a JPEG is decoded at 1/2 to 1/8 scale by ``draft``, so much less). Decoding from the stream without
the copy is not possible for PNG and WebP with Pillow, whose decoders want the whole file.

Nothing here imports Pillow or boto3 at import time: operators read :class:`OnBadOutput` at DAG
parse time.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from airflow_provider_nanobanana.choices import parse_choice
from airflow_provider_nanobanana.exceptions import RunComfyJobFailedError

if TYPE_CHECKING:
    from PIL import Image

    from airflow_provider_nanobanana.media.results import ArchiveResult

log = logging.getLogger(__name__)

#: The manifest's (and the XCom's) key for a problem of the request as a whole, not of one output.
COUNT_KEY = "count"

#: Pillow's plugin name for each content type the gate can decode.
PILLOW_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
    "image/avif": "AVIF",
}

#: What Pillow raises for malformed input: its plugins use all of these, not one base class.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


class OnBadOutput(str, Enum):
    """What a task does with an output the gate rejects."""

    #: The task fails, naming each bad output and why; nothing bad is archived (the default).
    FAIL = "fail"
    #: Archive it anyway and flag it in the manifest (``quality: {index: problem}``) and the XCom.
    KEEP = "keep"
    #: Pay for a new request (at most ``max_resubmits`` times); fail as ``fail`` when they run out.
    RESUBMIT = "resubmit"

    @classmethod
    def parse(cls, value: object) -> OnBadOutput:
        return parse_choice(cls, value, "on_bad_output")


def check_max_resubmits(value: object) -> int:
    """``max_resubmits``: a whole number >= 0 (each one is a new paid request)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_resubmits must be a whole number >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class QualityLimits:
    """The gate's thresholds; the defaults and why they are what they are.

    ``max_pixels`` (25 M): the largest output Nano Banana makes is about 17 M pixels (4K at 21:9 or
    16:9), so this leaves room and still bounds a decode to about 100 MB (RGBA). A header asking for
    more is refused before decoding: that is what a decompression bomb looks like.

    ``max_decode_bytes`` (128 MiB): the copy kept for decoding. A 25 M-pixel RGBA image stored
    without any compression is 100 MB; a real output is 1-30 MB.

    ``blank_tolerance`` (10 of 255): a flat colour re-encoded as JPEG or lossy WebP comes back within
    a few levels of itself (ringing at the rare edge aside), while any real photo or drawing spans tens
    of levels. 10 is above the codec noise and far below real content.

    ``blank_share`` (99.9 %): a placeholder may carry a stray mark (a tiny logo, compression noise at
    a border); real content covering more than 0.1 % of the frame makes the image not blank.

    ``sample_side`` (256): a uniform image stays uniform when averaged down, so blankness is judged on
    at most 256 x 256 pixels whatever the output size; any detail that survives 1/16 averaging with
    more than ``blank_tolerance`` of contrast counts as content.
    """

    max_pixels: int = 25_000_000
    max_decode_bytes: int = 128 * 1024 * 1024
    blank_tolerance: int = 10
    blank_share: float = 0.999
    sample_side: int = 256


DEFAULT_LIMITS = QualityLimits()


def count_problem(found: int, requested: int) -> str | None:
    """The request-level problem when the number of output URLs is not ``num_images``."""
    if found == requested:
        return None
    if found == 0:
        return f"the job completed but returned no output URLs (num_images={requested})"
    return (
        f"{found} output URL(s) for num_images={requested} "
        "(the model returned fewer images, or an empty URL, than asked for)"
    )


def inspect_output(data: bytes, content_type: str, limits: QualityLimits = DEFAULT_LIMITS) -> str | None:
    """Why ``data`` is not a usable output image of ``content_type``, or ``None`` when it is one.

    CPU-bound (a decode); call it from a worker thread, never on an event loop.
    """
    if not data:
        return "the output is empty (0 bytes)"
    fmt = PILLOW_FORMATS.get(content_type)
    if fmt is None:
        return f"not a decodable image (its bytes and headers say {content_type})"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                return f"the image has no pixels ({width}x{height})"
            if width * height > limits.max_pixels:
                return _bomb(width, height, limits)
            sample = _decoded_sample(image, limits.sample_side)
    except Image.DecompressionBombError:
        return (
            f"refused without decoding: the {fmt} header declares more than max_pixels={limits.max_pixels:,}"
        )
    except Image.UnidentifiedImageError:
        return f"does not decode as {fmt} ({len(data):,} bytes): not a {fmt} file"
    except _DECODE_ERRORS as exc:
        return f"does not decode as {fmt} ({len(data):,} bytes): {str(exc)[:200] or type(exc).__name__}"
    return blank_problem(sample, limits)


def _bomb(width: int, height: int, limits: QualityLimits) -> str:
    return (
        f"refused without decoding: {width}x{height} is {width * height:,} pixels, more than "
        f"max_pixels={limits.max_pixels:,} (a decompression bomb, or not an output of this model)"
    )


def _decoded_sample(image: Image.Image, side: int) -> Image.Image:
    """Decode ``image`` completely (a truncated file raises here) into an RGB sample of <= ``side`` px."""
    from PIL import Image

    if image.format == "JPEG":
        image.draft("RGB", (side, side))  # the decoder itself scales by 1/2..1/8: less memory and CPU
    image.load()
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    factor = max(1, -(-max(image.size) // side))
    small = image.reduce(factor) if factor > 1 else image
    if small.mode == "L":
        return small.convert("RGB")
    if small.mode == "RGBA":
        # Transparent pixels count as black: a fully transparent output is a blank one.
        flat = Image.new("RGB", small.size, (0, 0, 0))
        flat.paste(small.convert("RGB"), mask=small.getchannel("A"))
        return flat
    return small


def blank_problem(sample: Image.Image, limits: QualityLimits = DEFAULT_LIMITS) -> str | None:
    """``"a uniform blank ..."`` when nearly every pixel of the RGB ``sample`` is one colour."""
    from PIL import Image, ImageChops, ImageStat

    median = tuple(int(v) for v in ImageStat.Stat(sample).median)
    diff = ImageChops.difference(sample, Image.new("RGB", sample.size, median))
    red, green, blue = diff.split()
    spread = ImageChops.lighter(ImageChops.lighter(red, green), blue)  # per pixel: its largest channel gap
    histogram = spread.histogram()
    total = sample.size[0] * sample.size[1]
    share = sum(histogram[: limits.blank_tolerance + 1]) / total
    if share < limits.blank_share:
        return None
    return (
        f"a uniform blank (a blocked-content placeholder?): {share:.2%} of pixels are within "
        f"{limits.blank_tolerance}/255 of rgb{median}"
    )


class BadOutputError(RunComfyJobFailedError):
    """The job completed but its outputs failed the quality gate; names each bad output and why."""

    def __init__(self, request_id: str, problems: Mapping[str, str], *, paid_requests: int = 1) -> None:
        shown = "; ".join(
            f"{'the request' if key == COUNT_KEY else 'output ' + key}: {why}"
            for key, why in problems.items()
        )
        tail = f" after {paid_requests} paid request(s)" if paid_requests > 1 else ""
        super().__init__(
            f"RunComfy request {request_id}: the output quality gate rejected {shown}{tail} "
            "(on_bad_output='keep' archives and flags such outputs instead)",
            request_id=request_id,
        )
        self.problems = dict(problems)


def archive_through(
    gate: QualityGate,
    request_id: str,
    images: list[str],
    archive: Callable[[list[str]], ArchiveResult],
) -> ArchiveResult:
    """Run ``archive(images)`` behind ``gate``; a rejection, whatever else failed with it, is raised as
    :class:`BadOutputError`. The archiver checks the count once the URLs passed the host allow-list
    and before any download, then each output as it streams.
    """
    from airflow_provider_nanobanana.media.errors import OutputFailure, OutputsNotArchivedError

    try:
        if not images:  # even ``keep`` cannot archive nothing
            gate.check_count(0)
            raise BadOutputError(request_id, gate.problems, paid_requests=gate.paid_requests)
        return archive(images)
    except (OutputFailure, OutputsNotArchivedError):
        if gate.rejected:
            raise BadOutputError(request_id, gate.rejected, paid_requests=gate.paid_requests) from None
        raise


@dataclass
class QualityGate:
    """The gate of one archive call: its policy, and every problem it found.

    Under ``fail`` and ``resubmit`` a bad output is *rejected*: :meth:`report` raises the archiver's
    permanent ``OutputFailure``, so the output is not archived and the archive call fails naming it;
    the caller then reads :attr:`rejected` to tell a quality failure from any other. Under ``keep`` it
    is *flagged*: archived, and listed in :attr:`flagged` for the manifest.
    """

    policy: OnBadOutput = OnBadOutput.FAIL
    #: ``num_images``: how many outputs the request must have (``None``: not checked).
    expected_count: int | None = None
    limits: QualityLimits = DEFAULT_LIMITS
    #: Paid requests made for this edit so far (1 + resubmits); written to the manifest.
    paid_requests: int = 1
    rejected: dict[str, str] = field(default_factory=dict)
    flagged: dict[str, str] = field(default_factory=dict)

    @property
    def problems(self) -> dict[str, str]:
        return {**self.rejected, **self.flagged}

    def report(self, key: int | str, problem: str) -> None:
        """Record ``problem`` of output ``key`` (or of :data:`COUNT_KEY`); raise unless the policy keeps it."""
        name = str(key)
        if self.policy is OnBadOutput.KEEP:
            log.warning("Output %s is flagged but archived (on_bad_output='keep'): %s", name, problem)
            self.flagged[name] = problem
            return
        self.rejected[name] = problem
        from airflow_provider_nanobanana.media.errors import OutputFailure

        raise OutputFailure(f"rejected by the quality gate: {problem}", transient=False)

    def manifest_fields(self) -> dict[str, object]:
        """What the manifest records of the gate: flagged problems (empty when clean) and paid requests."""
        return {"quality": dict(self.flagged), "paid_requests": self.paid_requests}

    def check_count(self, found: int) -> None:
        """Judge the number of output URLs against :attr:`expected_count` (raises unless kept)."""
        if self.expected_count is None:
            return
        problem = count_problem(found, self.expected_count)
        if problem is not None:
            self.report(COUNT_KEY, problem)

    def watch(self, index: int, chunks: Iterable[bytes], content_type: str) -> Iterator[bytes]:
        """Pass ``chunks`` through unchanged; once the last has gone, inspect the whole output.

        The inspection runs when the consumer asks for the chunk after the last one, which is before
        ``upload_stream`` sends the final ``PutObject`` or completes the multipart upload: a rejection
        raised there aborts the upload.
        """
        kept = bytearray()
        too_big = False
        for chunk in chunks:
            if not too_big:
                if len(kept) + len(chunk) > self.limits.max_decode_bytes:
                    too_big, kept = True, bytearray()
                else:
                    kept += chunk
            yield chunk
        if too_big:
            problem: str | None = (
                f"too large to inspect (more than max_decode_bytes={self.limits.max_decode_bytes:,})"
            )
        else:
            data = bytes(kept)
            kept.clear()
            problem = inspect_output(data, content_type, self.limits)
        if problem is not None:
            self.report(index, problem)
