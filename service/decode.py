"""The decode stage: upload bytes -> model input array + the image as it will be stored.

Decoding is the core's preprocessing (:func:`model.preprocess.preprocess_bytes`, driven by the
bundle's recorded settings) plus :func:`service.imagestore.prepare_image` (GPS removed, sha256 of
the stored bytes). Both run on the decode workers, never on the event loop.

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
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.predictor import Predictor
from model.preprocess import PreprocessConfig, decode_image, image_to_array, preprocess_bytes
from service.imagestore import PreparedImage, jpeg_segments_readable, prepare_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One decoded upload: the model input and the image to store."""

    array: npt.NDArray[np.float32]
    image: PreparedImage


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding is allowed to cost and keep."""

    max_pixels: int
    keep_gps: bool


def decode_array(
    data: bytes, config: PreprocessConfig, limits: DecodeLimits
) -> npt.NDArray[np.float32]:
    """The model input of ``data`` (raises :class:`~model.imageio.ImageError`)."""
    return preprocess_bytes(data, config, max_pixels=limits.max_pixels)


def decode_and_prepare(data: bytes, config: PreprocessConfig, limits: DecodeLimits) -> Decoded:
    """Decode first (it checks the image), then prepare the stored bytes."""
    array = decode_array(data, config, limits)
    return Decoded(array, prepare_image(data, keep_gps=limits.keep_gps))


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
        predictor: Predictor,
        on_stored_bytes: Callable[[PreparedImage], None],
    ) -> Decoded:
        """Decode ``data`` for ``predictor``; ``on_stored_bytes`` gets the image to store as
        soon as it is known (before decoding for most JPEGs, else after). Raises
        :class:`~model.imageio.ImageError` for an unusable image."""
        loop = asyncio.get_running_loop()
        config = predictor.bundle.manifest.preprocess
        self._decoding += 1
        try:
            early: PreparedImage | None = None
            if data[:2] == b"\xff\xd8":
                early = await loop.run_in_executor(
                    self._executor, prepare_jpeg_early, data, self.limits
                )
            if early is not None:
                on_stored_bytes(early)
                array = await loop.run_in_executor(
                    self._executor, decode_array, data, config, self.limits
                )
                return Decoded(array, early)
            decoded = await loop.run_in_executor(
                self._executor, decode_and_prepare, data, config, self.limits
            )
            on_stored_bytes(decoded.image)
            return decoded
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
