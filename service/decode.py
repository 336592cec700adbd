"""The decode stage: upload bytes -> model input array + the image as it will be stored.

Decoding is the core's preprocessing (:func:`model.preprocess.decode_image`, then
:func:`~model.preprocess.image_to_array` with the recorded settings of the bundle that serves the
image's modality: the caller's ``modality``, else the file's own evidence, else camera) plus
:func:`service.imagestore.prepare_image` (GPS removed, sha256 of the stored bytes; DICOM/DICOS
and TIFFs only tifffile reads are stored as the rendered PNG). Both run on the decode workers,
never on the event loop.

For a JPEG whose segments parse, GPS removal is a byte-level edit that needs no pixels, so the
stored bytes are known before decoding: ``on_stored_bytes`` is called with them at once and the
durable write overlaps decoding as well as inference. Other images are prepared after decoding
has checked them (a re-encode must wait for the decode's pixel limit).

:meth:`DecodeStage.decoding` counts the images being decoded now: the micro-batcher's
``incoming`` signal, so that it waits (at most its max wait) for them instead of running a
batch that they could join.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.predictor import Predictor
from model.preprocess import (
    DecodedImage,
    PreprocessConfig,
    decode_image,
    image_to_array,
)
from service.imagestore import PreparedImage, jpeg_segments_readable, prepare_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One decoded upload: the model input, the image to store, the predictor chosen for its
    modality and how the modality was known (``caller``, the file's evidence, or ``default``).
    ``size`` is the decoded image's (width, height) and ``full_size`` the file's own size in
    the same orientation (they differ after a reduced-scale JPEG decode)."""

    array: npt.NDArray[np.float32]
    image: PreparedImage
    predictor: Predictor
    modality: str
    modality_source: str
    size: tuple[int, int]
    full_size: tuple[int, int]


ModelChooser = Callable[[str, str], Predictor]
"""(modality, how it was known) -> the predictor that serves it; raises ProblemError (422)
when none does."""

BROWSER_UNREADABLE = frozenset({"DICOS", "DICOM"})
"""Formats stored as the rendered PNG (browsers cannot show them; DICOM headers can hold
personal data of the bag's owner)."""


def resolve_modality(decoded: DecodedImage, requested: str | None) -> tuple[str, str]:
    """(modality, how it was known): the caller's choice wins, then the file's own evidence
    (DICOM/DICOS, 16-bit grey, dual-energy TIFF), else ``camera``."""
    if requested:
        return requested, "caller"
    if decoded.modality is not None:
        return decoded.modality, decoded.modality_evidence or "file"
    return "camera", "default"


def _oriented_full_size(decoded: DecodedImage) -> tuple[int, int]:
    width, height = decoded.original_size
    if (decoded.image.width >= decoded.image.height) != (width >= height):
        return height, width  # EXIF rotation swapped the sides
    return width, height


def decode_for_model(
    data: bytes,
    requested: str | None,
    choose: ModelChooser,
    limits: DecodeLimits,
    target_shorter: int,
) -> tuple[DecodedImage, Decoded]:
    """Decode ``data``, resolve its modality, choose the predictor and make its input; the
    stored image is prepared by the caller (see :meth:`DecodeStage.decode`)."""
    decoded = decode_image(data, max_pixels=limits.max_pixels, target_shorter=target_shorter)
    modality, source = resolve_modality(decoded, requested)
    predictor = choose(modality, source)
    array = image_to_array(decoded.image, predictor.bundle.manifest.preprocess)
    placeholder = PreparedImage(b"", "", "", "", 0, 0, False)
    return decoded, Decoded(
        array,
        placeholder,
        predictor,
        modality,
        source,
        decoded.image.size,
        _oriented_full_size(decoded),
    )


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


def prepare_jpeg_early(data: bytes, limits: DecodeLimits) -> PreparedImage | None:
    """The stored bytes of a JPEG before decoding; None when that would need more than a
    byte-level edit (unparsable segments mean a re-encode, which must wait for the decode's
    pixel limit) or its headers are unreadable (decoding then reports what is wrong)."""
    if not jpeg_segments_readable(data):
        return None
    try:
        return prepare_image(data, keep_gps=limits.keep_gps)
    except ValueError:
        return None


@dataclass(frozen=True)
class HeatmapSource:
    """What a heat map needs from a stored image: the model input and the photo to draw on
    (at most ``max_side`` pixels on its longer side)."""

    array: npt.NDArray[np.float32]
    photo: Image.Image


def decode_for_heatmap(
    path: Path, config: PreprocessConfig, limits: DecodeLimits, max_side: int
) -> HeatmapSource:
    """Decode a stored image once: the model input as at identification, and a small photo."""
    data = path.read_bytes()
    decoded = decode_image(data, max_pixels=limits.max_pixels, target_shorter=config.decode_shorter)
    photo = decoded.image
    if max(photo.size) > max_side:
        photo = photo.copy()
        photo.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return HeatmapSource(image_to_array(decoded.image, config), photo)


class DecodeStage:
    """Runs decoding on ``executor`` (see the module docstring)."""

    def __init__(self, executor: Executor, limits: DecodeLimits) -> None:
        self._executor = executor
        self.limits = limits
        self._decoding = 0

    def decoding(self) -> int:
        """Images being decoded now (the micro-batcher's ``incoming`` signal)."""
        return self._decoding

    async def decode(
        self,
        data: bytes,
        requested_modality: str | None,
        choose: ModelChooser,
        target_shorter: int,
        on_stored_bytes: Callable[[PreparedImage], None],
    ) -> Decoded:
        """Decode ``data``, resolve its modality (the caller's, else the file's evidence, else
        camera) and make the input of the predictor ``choose`` gives for it; ``on_stored_bytes``
        gets the image to store as soon as it is known (before decoding for most JPEGs, else
        after). Raises :class:`~model.imageio.ImageError` for an unusable image and whatever
        ``choose`` raises when no model serves the modality."""
        loop = asyncio.get_running_loop()
        self._decoding += 1
        try:
            early: PreparedImage | None = None
            if data[:2] == b"\xff\xd8":
                early = await loop.run_in_executor(
                    self._executor, prepare_jpeg_early, data, self.limits
                )
            if early is not None:
                on_stored_bytes(early)
            file_image, decoded = await loop.run_in_executor(
                self._executor,
                decode_for_model,
                data,
                requested_modality,
                choose,
                self.limits,
                target_shorter,
            )
            if early is not None:
                return dataclasses.replace(decoded, image=early)
            image = await loop.run_in_executor(
                self._executor, stored_image, data, file_image, self.limits
            )
            on_stored_bytes(image)
            return dataclasses.replace(decoded, image=image)
        finally:
            self._decoding -= 1

    async def heatmap_source(
        self, path: Path, config: PreprocessConfig, max_side: int
    ) -> HeatmapSource:
        """Decode the stored image at ``path`` for a heat map (raises ImageError)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, decode_for_heatmap, path, config, self.limits, max_side
        )

    def close(self) -> None:
        """Stop the workers (queued decodes are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
