"""One function from image bytes to the model input, driven by the settings a bundle records.

:func:`preprocess_bytes` is the path both training's evaluation and the service use: decode
(:func:`decode_image`, see ``model.imageio`` for formats, colour modes and 16-bit windowing),
then :func:`image_to_array`: resize the shorter side to ``resize_shorter`` with the configured
interpolation, centre-crop ``input_size``, scale to [0, 1] and normalise with ``mean``/``std``.
The defaults of :class:`PreprocessConfig` reproduce the EfficientNet-Lite0 original (resize 256
bicubic, centre-crop 224, mean = std = 0.5). Sizes and crop offsets follow torchvision's
``Resize(int)`` and ``CenterCrop`` exactly, so a model trained with those sees the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.imageio import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_PIXELS,
    WINDOW_PERCENTILES,
    CorruptImageError,
    DecodedImage,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    window_to_uint8,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "CROPS",
    "DEFAULT_MAX_PIXELS",
    "INTERPOLATIONS",
    "WINDOW_PERCENTILES",
    "CorruptImageError",
    "DecodedImage",
    "EmptyImageError",
    "ImageError",
    "ImageTooLargeError",
    "PreprocessConfig",
    "UnsupportedImageError",
    "array_to_pixels",
    "decode_image",
    "image_to_array",
    "image_to_pixels",
    "pixels_to_array",
    "preprocess_bytes",
    "window_to_uint8",
]

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""Interpolation names accepted in a config, and the Pillow filter each one means."""

CROPS = ("center", "squash")
"""``center``: resize the shorter side, then centre-crop a square (the backbone's original).
``squash``: resize straight to ``input_size`` x ``input_size`` ignoring aspect (no crop)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input; recorded in a bundle manifest under ``preprocess``."""

    input_size: int = 224
    resize_shorter: int = 256
    interpolation: str = "bicubic"
    crop: str = "center"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        _check_positive_int("input_size", self.input_size)
        _check_positive_int("resize_shorter", self.resize_shorter)
        if self.crop == "center" and self.resize_shorter < self.input_size:
            raise ValueError(
                f"resize_shorter ({self.resize_shorter}) must be at least input_size "
                f"({self.input_size}) for a centre crop"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {list(CROPS)}, got {self.crop!r}")
        object.__setattr__(self, "mean", _three_floats("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _three_floats("std", self.std, positive=True))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists) that :meth:`from_dict` reads back."""
        return {
            "input_size": self.input_size,
            "resize_shorter": self.resize_shorter,
            "interpolation": self.interpolation,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build a config from a manifest's ``preprocess`` object.

        Every key must be present and known: a missing or unknown key could silently change
        the pixels a model sees. Raises ``ValueError`` naming the bad key.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocess settings must be an object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise ValueError(f"unknown preprocess key {key!r}; known keys: {names}")
        for name in names:
            if name not in data:
                raise ValueError(f"preprocess key {name!r} is missing")
        try:
            return cls(
                input_size=data["input_size"],
                resize_shorter=data["resize_shorter"],
                interpolation=data["interpolation"],
                crop=data["crop"],
                mean=data["mean"],
                std=data["std"],
            )
        except TypeError as exc:
            raise ValueError(f"invalid preprocess settings: {exc}") from exc

    @property
    def decode_shorter(self) -> int:
        """The shorter side the decoder must keep at least (for JPEG draft decoding)."""
        return self.resize_shorter if self.crop == "center" else self.input_size


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"preprocess key {name!r} must be a positive integer, got {value!r}")


def _three_floats(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise ValueError(f"preprocess key {name!r} must be three numbers, got {value!r}")
    items = list(value)
    if len(items) != 3 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in items
    ):
        raise ValueError(f"preprocess key {name!r} must be three numbers, got {value!r}")
    numbers = (float(items[0]), float(items[1]), float(items[2]))
    if not all(math.isfinite(v) for v in numbers) or (positive and min(numbers) <= 0):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"preprocess key {name!r} must be three {kind} numbers, got {value!r}")
    return numbers


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size after scaling the shorter side to ``shorter`` (torchvision ``Resize(int)`` rule)."""
    if width <= height:
        return shorter, max(1, int(shorter * height / width))
    return max(1, int(shorter * width / height)), shorter


def image_to_pixels(image: Image.Image, config: PreprocessConfig) -> npt.NDArray[np.uint8]:
    """Resize and crop an image into the (S, S, 3) uint8 RGB pixels the model sees (before
    normalisation: what the image checks measure)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    resample = INTERPOLATIONS[config.interpolation]
    size = config.input_size
    if config.crop == "squash":
        image = image.resize((size, size), resample)
    else:
        new_size = resized_size(image.width, image.height, config.resize_shorter)
        if new_size != image.size:
            image = image.resize(new_size, resample)
        left = round((image.width - size) / 2.0)
        top = round((image.height - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def pixels_to_array(
    pixels: npt.NDArray[np.uint8], config: PreprocessConfig
) -> npt.NDArray[np.float32]:
    """(S, S, 3) uint8 RGB -> the (3, S, S) float32 model input: scale to [0, 1], then
    normalise with the config's ``mean`` and ``std``."""
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    planar = np.asarray(pixels, dtype=np.uint8).transpose(2, 0, 1)
    result = np.empty(planar.shape, dtype=np.float32)
    np.multiply(planar, np.float32(1.0 / 255.0), out=result)
    result -= mean
    result /= std
    return result


def image_to_array(image: Image.Image, config: PreprocessConfig) -> npt.NDArray[np.float32]:
    """Resize, crop and normalise an RGB image into a float32 array of shape (3, S, S)."""
    return pixels_to_array(image_to_pixels(image, config), config)


def array_to_pixels(
    array: npt.NDArray[np.floating[Any]], config: PreprocessConfig
) -> npt.NDArray[np.uint8]:
    """Undo :func:`image_to_array`'s normalisation: (3, S, S) model input -> (S, S, 3) uint8 RGB,
    the pixels the image checks (:mod:`model.quality`, :mod:`model.modality`) measure."""
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    pixels = (np.asarray(array, dtype=np.float32) * std + mean) * np.float32(255.0)
    result: npt.NDArray[np.uint8] = (
        np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    )
    return result


def preprocess_bytes(
    data: bytes, config: PreprocessConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.float32]:
    """THE path from image bytes to a model input: (3, S, S) float32, normalised.

    Decodes with :func:`decode_image` (large JPEGs at reduced scale when the target is much
    smaller) and converts with :func:`image_to_array`. Raises :class:`ImageError` subclasses
    for input that is empty, not an image, damaged, or larger than ``max_pixels``.
    """
    decoded: DecodedImage = decode_image(
        data, max_pixels=max_pixels, target_shorter=config.decode_shorter
    )
    return image_to_array(decoded.image, config)
