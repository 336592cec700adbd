"""The checks every image passes before the model's answer counts: quality and modality.

:func:`prepare_input` is the checked twin of :func:`model.preprocess.preprocess_bytes`: it
decodes once and returns the model input together with :class:`ImageChecks`, measured on

- the model input's pixels for quality (:func:`model.quality.assess_quality`, with the file's
  own size for ``too_small``);
- the whole decoded image, reduced to at most :data:`MODALITY_VIEW` pixels on its longer side,
  for the scanner-image detector (:func:`model.modality.detect_modality`).

:class:`model.predictor.Predictor` turns failed checks into decisions: ``unusable_image``, or
``outside_training_domain`` for a scanner image given to a camera-only model. When a caller has
only model inputs, :func:`check_array` measures both on the input itself (the detector is less
sure there: the centre crop cuts the white border of a scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.imageio import DEFAULT_MAX_PIXELS, DecodedImage, decode_image
from model.modality import ModalityEvidence, detect_modality
from model.preprocess import PreprocessConfig, array_to_pixels, image_to_pixels, pixels_to_array
from model.quality import QualityReport, assess_quality

MODALITY_VIEW = 224
"""Longer side (pixels) of the whole-image view the scanner detector measures."""


@dataclass(frozen=True)
class ImageChecks:
    """The verdicts on one image before the model."""

    quality: QualityReport
    modality: ModalityEvidence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (problems, detected modality, measures)."""
        return {
            "quality_problems": list(self.quality.problems),
            "modality": self.modality.modality,
            "modality_signature": self.modality.signature,
        }


def scanner_evidence(decoded: DecodedImage) -> ModalityEvidence:
    """The scanner-image detector on the whole decoded image (at most :data:`MODALITY_VIEW`
    pixels on its longer side)."""
    view = decoded.image.copy()
    view.thumbnail((MODALITY_VIEW, MODALITY_VIEW), Image.Resampling.BILINEAR)
    return detect_modality(np.asarray(view), bit_depth=decoded.bit_depth)


def check_decoded(
    decoded: DecodedImage,
    array: npt.NDArray[np.float32] | None,
    config: PreprocessConfig,
    *,
    evidence: ModalityEvidence | None = None,
    pixels: npt.NDArray[np.uint8] | None = None,
) -> ImageChecks:
    """Checks of a decoded image whose model input is ``array`` (see the module docstring).
    ``evidence`` is :func:`scanner_evidence` of the image and ``pixels`` the model input before
    normalisation (:func:`~model.preprocess.image_to_pixels`) when the caller already has them
    (``array`` may then be None)."""
    width, height = decoded.original_size
    if pixels is None:
        if array is None:
            raise ValueError("check_decoded needs the model input's array or its pixels")
        pixels = array_to_pixels(array, config)
    return ImageChecks(
        quality=assess_quality(pixels, source_size=(width, height)),
        modality=evidence if evidence is not None else scanner_evidence(decoded),
    )


def check_array(array: npt.NDArray[np.floating[Any]], config: PreprocessConfig) -> ImageChecks:
    """Checks measured on a model input alone (when the decoded image is not at hand)."""
    pixels = array_to_pixels(array, config)
    return ImageChecks(quality=assess_quality(pixels), modality=detect_modality(pixels))


def prepare_input(
    data: bytes, config: PreprocessConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.float32], ImageChecks]:
    """Decode ``data`` once: the model input (3, S, S) and its checks. Raises the
    :class:`~model.imageio.ImageError` subclasses of :func:`~model.imageio.decode_image`."""
    decoded = decode_image(data, max_pixels=max_pixels, target_shorter=config.decode_shorter)
    pixels = image_to_pixels(decoded.image, config)
    array = pixels_to_array(pixels, config)
    return array, check_decoded(decoded, array, config, pixels=pixels)
