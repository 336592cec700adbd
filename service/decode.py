"""The decode stage: upload bytes -> model input array + the image as it will be stored.

Decoding is the core's preprocessing (:func:`model.preprocess.decode_image`, then
:func:`~model.preprocess.image_to_array` with the recorded settings of the model that serves the
image's modality: the caller's ``modality``, else the file's own evidence, else camera) plus
:func:`service.imagestore.prepare_image` (GPS removed, sha256 of the stored bytes; DICOM/DICOS
and TIFFs only tifffile reads are stored as the rendered PNG). Both run in decode worker
processes (:mod:`service.decodeworkers`) with a time limit that really stops them, never on the
event loop. Before any pixel is decoded, a cheap pass over the bytes refuses what would make
decoding or GPS removal expensive (:func:`check_decoding_cost`): a JPEG with more than
:data:`MAX_JPEG_SCANS` scans (a progressive JPEG normally has about ten; a scan repeated
thousands of times costs minutes of CPU), more than :data:`MAX_JPEG_EXIF_SEGMENTS` EXIF segments
or :data:`MAX_JPEG_HEADER_SEGMENTS` segments before its first scan.

JPEG damage: libjpeg only *warns* when compressed data is corrupt (e.g. a run of bytes zeroed in
the middle of the file) and goes on with garbage pixels, and Pillow does not pass those warnings
on. The stage therefore decodes with the core's ``strict_jpeg`` (libjpeg-turbo in strict mode
through ``simplejpeg``, the same pixels as Pillow's, one decode; :mod:`model.imageio`): a warning
refuses the image as ``corrupt-image``. A damaged photo must not produce a confident answer.

:meth:`DecodeStage.decoding` counts the images being decoded now: the micro-batcher's
``incoming`` signal, so that it waits (at most its max wait) for them instead of running a
batch that they could join.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.checks import ImageChecks, check_decoded, scanner_evidence
from model.imageio import DecodedImage, ImageError, sniff_format
from model.modality import ModalityEvidence
from model.preprocess import (
    PreprocessConfig,
    decode_image,
    image_to_array,
    image_to_pixels,
    pixels_to_array,
)
from service.decodeworkers import DecodeStoppedError, DecodeWorkers, FileContent
from service.imagestore import PreparedImage, prepare_image
from service.uploads import Upload

if TYPE_CHECKING:
    from model.predictor import Predictor

logger = logging.getLogger(__name__)

R = TypeVar("R")

MAX_JPEG_SCANS = 100
"""Scans (SOS markers) a JPEG may have: baseline has 1, progressive about 10 (libjpeg) to 20."""

MAX_JPEG_EXIF_SEGMENTS = 2
"""EXIF (APP1 ``Exif``) segments before the first scan: the format allows one."""

MAX_JPEG_HEADER_SEGMENTS = 256
"""Segments of any kind before the first scan (ICC profiles and extended XMP come in chunks)."""


class ImageTooComplexError(ImageError):
    """The image is built in a way that makes decoding it too expensive."""

    code: ClassVar[str] = "too_complex"


@dataclass(frozen=True)
class Decoded:
    """One decoded upload: the model input and the image to store, the image's modality and
    how it was known (``caller``, the file's evidence, or ``default``). ``array`` is None when
    no active model serves that modality (the pipeline answers 422). ``size`` is the decoded
    image's (width, height) and ``full_size`` the file's own in the same orientation (they
    differ after a reduced-scale JPEG decode)."""

    array: npt.NDArray[np.float32] | None
    image: PreparedImage
    modality: str = "camera"
    modality_source: str = "default"
    size: tuple[int, int] = (0, 0)
    full_size: tuple[int, int] = (0, 0)
    checks: ImageChecks | None = None
    """The image checks (quality, scanner signature: :mod:`model.checks`) of the whole decoded
    image, which :meth:`model.predictor.Predictor.predict_arrays` turns into ``unusable_image``
    or ``outside_training_domain`` (a scan given to a camera-only model)."""
    pixels: npt.NDArray[np.uint8] | None = None
    """The model input before normalisation, (S, S, 3) uint8: what a decode worker sends back
    (a quarter of the float32 input's bytes through the pipe); :meth:`DecodeStage.decode`
    normalises it into ``array``."""


BROWSER_UNREADABLE = frozenset({"DICOS", "DICOM"})
"""Formats stored as the rendered PNG (browsers cannot show them; DICOM headers can hold
personal data of the bag's owner)."""


def resolve_modality(
    decoded: DecodedImage, requested: str | None, evidence: ModalityEvidence | None = None
) -> tuple[str, str]:
    """(modality, how it was known): the caller's choice wins, then the file's own evidence
    (DICOM/DICOS, 16-bit grey, dual-energy TIFF), then the pixels (``evidence`` from the
    scanner-image detector: a dual-energy pseudo-colour scan), else ``camera``."""
    if requested:
        return requested, "caller"
    if decoded.modality is not None:
        return decoded.modality, decoded.modality_evidence or "file"
    if evidence is not None and evidence.looks_like_scanner:
        return "xray", f"pixels:{evidence.signature}"
    return "camera", "default"


def _oriented_full_size(decoded: DecodedImage) -> tuple[int, int]:
    width, height = decoded.original_size
    if (decoded.image.width >= decoded.image.height) != (width >= height):
        return height, width  # EXIF rotation swapped the sides
    return width, height


def stored_image(data: bytes, decoded: DecodedImage, limits: DecodeLimits) -> PreparedImage:
    """The bytes to store: the upload itself, or for DICOM/DICOS and TIFFs only tifffile reads
    the rendered 8-bit image as PNG (what the model analysed, displayable, no DICOM headers)."""
    if decoded.format in BROWSER_UNREADABLE or decoded.mode.startswith("tifffile"):
        buffer = io.BytesIO()
        decoded.image.save(buffer, format="PNG")
        return prepare_image(buffer.getvalue(), keep_gps=limits.keep_gps)
    return prepare_image(data, keep_gps=limits.keep_gps)


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding is allowed to cost and keep."""

    max_pixels: int
    keep_gps: bool


@dataclass(frozen=True)
class HeatmapSource:
    """What a heat map needs from a stored image: the model input and the photo to draw on
    (at most ``max_side`` pixels on its longer side)."""

    array: npt.NDArray[np.float32]
    photo: Image.Image


# ---- what runs in a worker process --------------------------------------------------------------


def check_decoding_cost(data: bytes) -> None:
    """Refuse a JPEG whose structure makes it expensive (see the module docstring); a cheap
    pass over the bytes. Other formats pass (their cost is bounded by the pixel limit and the
    workers' time limit)."""
    if sniff_format(data) != "JPEG":
        return
    scans = data.count(b"\xff\xda")  # 0xFF in entropy-coded data is stuffed: only real markers
    if scans > MAX_JPEG_SCANS:
        raise ImageTooComplexError(
            f"This JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted (a progressive "
            "photo has about 10). Send the photo as saved by the camera or phone."
        )
    segments = 0
    exif = 0
    pos = 2
    size = len(data)
    while pos + 4 <= size and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA or 0xD0 <= marker <= 0xD9:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments += 1
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            exif += 1
        if exif > MAX_JPEG_EXIF_SEGMENTS or segments > MAX_JPEG_HEADER_SEGMENTS:
            raise ImageTooComplexError(
                f"This JPEG has more than {MAX_JPEG_EXIF_SEGMENTS} EXIF segments or "
                f"{MAX_JPEG_HEADER_SEGMENTS} metadata segments; a camera writes one EXIF block. "
                "Send the photo as saved by the camera or phone."
            )
        pos += 2 + max(length, 2)


def decode_upload(
    data: bytes,
    configs: Mapping[str, PreprocessConfig],
    requested_modality: str | None,
    target_shorter: int,
    limits: DecodeLimits,
) -> Decoded:
    """Runs in a decode worker: check the cost, decode, resolve the modality, make the input
    of the model serving it (``configs``: modality -> that model's preprocessing; no array when
    none serves it) and prepare the bytes to store. The returned image carries no bytes when
    they are the upload's own (the caller has them)."""
    check_decoding_cost(data)
    decoded = decode_image(
        data, max_pixels=limits.max_pixels, target_shorter=target_shorter, strict_jpeg=True
    )
    evidence = scanner_evidence(decoded)
    # Pixels that look like a scan go to the x-ray model when one is served; without one they
    # stay with the camera model, whose image checks answer them as outside its domain.
    pixel_evidence = evidence if "xray" in configs else None
    modality, source = resolve_modality(decoded, requested_modality, pixel_evidence)
    config = configs.get(modality)
    pixels: npt.NDArray[np.uint8] | None = None
    checks: ImageChecks | None = None
    if config is not None:
        pixels = image_to_pixels(decoded.image, config)
        checks = check_decoded(decoded, None, config, evidence=evidence, pixels=pixels)
    image = stored_image(data, decoded, limits)
    if image.data == data:
        image = replace(image, data=b"")
    return Decoded(
        None,
        image,
        modality,
        source,
        decoded.image.size,
        _oriented_full_size(decoded),
        checks,
        pixels,
    )


def decode_for_heatmap(
    path: Path, config: PreprocessConfig, limits: DecodeLimits, max_side: int
) -> HeatmapSource:
    """Runs in a decode worker: decode a stored image once, giving the model input as at
    identification and a photo of at most ``max_side`` pixels."""
    data = path.read_bytes()
    check_decoding_cost(data)
    decoded = decode_image(data, max_pixels=limits.max_pixels, target_shorter=config.decode_shorter)
    photo = decoded.image
    if max(photo.size) > max_side:
        photo = photo.copy()
        photo.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return HeatmapSource(image_to_array(decoded.image, config), photo)


# ---- the stage (event loop side) ----------------------------------------------------------------


class DecodeStage:
    """Runs decoding on the decode workers (see the module docstring)."""

    def __init__(self, workers: DecodeWorkers, limits: DecodeLimits) -> None:
        self._workers = workers
        self.limits = limits
        self._decoding = 0

    @property
    def timeout_s(self) -> float:
        """How long one decode may take before its worker is stopped."""
        return self._workers.timeout_s

    def start(self) -> None:
        """Start the worker processes (blocking)."""
        self._workers.start()

    def decoding(self) -> int:
        """Images being decoded now (the micro-batcher's ``incoming`` signal)."""
        return self._decoding

    async def decode(
        self,
        upload: Upload,
        predictors: Mapping[str, Predictor],
        requested_modality: str | None = None,
    ) -> Decoded:
        """Decode ``upload``, resolve its modality (the caller's, else the file's evidence, else
        camera) and make the input of the model ``predictors`` holds for it (none when it holds
        none: ``array`` is None). Raises :class:`~model.imageio.ImageError` for an unusable
        image (:class:`ImageTooComplexError` when it was stopped or refused for its cost).

        A large upload's spool file goes to the worker as its descriptor, and when the image
        is stored as uploaded the result's image reads its bytes from the upload
        (:mod:`service.uploads`): the server never holds them."""
        configs = {m: p.bundle.manifest.preprocess for m, p in predictors.items()}
        if requested_modality is not None and requested_modality in configs:
            target = configs[requested_modality].decode_shorter
        else:  # never decode smaller than any model needs
            target = max((c.decode_shorter for c in configs.values()), default=256)
        self._decoding += 1
        try:
            fd = upload.file_descriptor()
            content: bytes | FileContent
            if fd is None:
                content = await asyncio.to_thread(upload.read)
            else:
                content = FileContent(fd, upload.size)
            decoded = await self._run_worker(
                decode_upload, content, configs, requested_modality, target, self.limits
            )
        finally:
            self._decoding -= 1
        if not decoded.image.data:  # stored as uploaded: the worker did not send them back
            decoded = replace(decoded, image=decoded.image.from_source(upload))
        if decoded.pixels is not None:
            array = pixels_to_array(decoded.pixels, configs[decoded.modality])
            decoded = replace(decoded, array=array, pixels=None)
        return decoded

    async def heatmap_source(
        self, path: Path, config: PreprocessConfig, max_side: int
    ) -> HeatmapSource:
        """Decode the stored image at ``path`` for a heat map (raises ImageError)."""
        return await self._run_worker(decode_for_heatmap, path, config, self.limits, max_side)

    async def _run_worker(self, function: Callable[..., R], *args: Any) -> R:
        try:
            return await self._workers.run(function, *args)
        except DecodeStoppedError as exc:
            logger.warning("decode stopped: %s", exc)
            if exc.timed_out:
                raise ImageTooComplexError(
                    f"Decoding this image took longer than {self.timeout_s:g} s "
                    "(CITES_DECODE_TIMEOUT_S) and was stopped. Send the photo as saved by the "
                    "camera or phone, or re-saved as an ordinary JPEG or PNG."
                ) from None
            raise ImageTooComplexError(
                "Decoding this image needed more memory than a decoder may use, and was "
                "stopped. Send a smaller image."
            ) from None

    def close(self) -> None:
        """Stop the workers."""
        self._workers.close()
