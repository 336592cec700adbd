"""Does an image look like a scanner (x-ray) image rather than a camera photo?

A camera-only model must not answer a baggage scan with a taxon or a look-alike: it was never
taught what a scan looks like. :func:`detect_modality` tells scans apart by two signatures:

- **pseudo-colour** (dual-energy baggage scanners): a bright, nearly white background that
  reaches the image border, with the objects drawn in the scanners' material palette, orange
  (organic) together with blue or green (metal, mixed), and strong colour overall;
- **16-bit grey**: a single-channel image of more than 8 bits per sample (DICOS/DICOM, 16-bit
  PNG/TIFF from a scanner). Camera photos reach the service as 8-bit JPEG/HEIC/PNG. An 8-bit
  grey image is *not* called a scan: studio photos in black and white look the same.

It works on 8-bit RGB pixels, (H, W, 3) ``uint8``: the whole decoded image reduced to at most
224 pixels on its longer side (:func:`model.checks.check_decoded`); the model input's centre
crop cuts away the white border that marks a scan and is only a fallback. The thresholds
were set on ../shared/data/xray-backgrounds (scans) and the camera sets; the rates measured on
the 35 scans of xray-baggage and the camera sets are in docs/model.md ("Image checks before
the model"), reproduced by ``python -m training.image_checks``. numpy and Pillow only: the x-ray
input path reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

Modality = Literal["camera", "xray"]
Signature = Literal["pseudo_colour", "grey_high_bit_depth", "none"]

_WHITE = 200
"""A pixel whose darkest channel is above this is background white."""
_BORDER = 4
"""Border width in pixels (of the image analysed) that must be background in a scan."""
_COLOURED_SATURATION = 0.25
"""Object pixels above this HSV saturation count towards the palette fractions."""


@dataclass(frozen=True)
class PseudoColourThresholds:
    """Limits of the pseudo-colour signature (all must hold)."""

    border_white: float = 0.8
    """Least fraction of border pixels that are background white."""
    white: float = 0.2
    """Least fraction of all pixels that are background white."""
    crowded_white: float = 0.1
    """A crowded bag leaves less white: this much is enough when the palette is strong."""
    crowded_orange: float = 0.2
    crowded_blue_green: float = 0.15
    crowded_colourfulness: float = 30.0
    orange: float = 0.01
    """Least fraction of object pixels in the organic (orange) palette."""
    blue_green: float = 0.05
    """Least fraction of object pixels in the metal / mixed (blue, green) palette."""
    colourfulness: float = 14.0
    """Least mean of (max - min channel) over all pixels: grey images do not qualify."""


DEFAULT_THRESHOLDS = PseudoColourThresholds()


@dataclass(frozen=True)
class ModalityEvidence:
    """What :func:`detect_modality` saw.

    Attributes:
        modality: ``xray`` when a scanner signature was found, else ``camera``.
        signature: which signature decided (``none`` for camera).
        measures: the measured fractions, for logs and the threshold report.
    """

    modality: Modality
    signature: Signature
    measures: dict[str, float]

    @property
    def looks_like_scanner(self) -> bool:
        """True when the image looks like a scanner image."""
        return self.modality == "xray"


def _hue_saturation(
    pixels: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """HSV hue in degrees [0, 360) and saturation in [0, 1] of uint8 RGB pixels (Pillow's
    conversion: fast)."""
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "RGB").convert("HSV"))
    hue = hsv[..., 0].astype(np.float32) * np.float32(360.0 / 255.0)
    saturation = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    return hue, saturation


def pseudo_colour_measures(pixels: npt.NDArray[np.uint8]) -> dict[str, float]:
    """The fractions the pseudo-colour signature is judged on (see the module docstring)."""
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    low = np.minimum(np.minimum(red, green), blue)  # much faster than min(axis=-1) on uint8
    high = np.maximum(np.maximum(red, green), blue)
    white = low > _WHITE
    border = np.concatenate(
        [
            white[:_BORDER].ravel(),
            white[-_BORDER:].ravel(),
            white[:, :_BORDER].ravel(),
            white[:, -_BORDER:].ravel(),
        ]
    )
    hue, saturation = _hue_saturation(pixels)
    objects = ~white
    count = max(int(objects.sum()), 1)
    coloured = objects & (saturation > _COLOURED_SATURATION)
    orange = coloured & (hue > 10.0) & (hue < 50.0)
    blue_green = coloured & (hue > 70.0) & (hue < 260.0)
    return {
        "border_white": float(border.mean()),
        "white": float(white.mean()),
        "orange": float(orange.sum()) / count,
        "blue_green": float(blue_green.sum()) / count,
        "colourfulness": float((high - low).mean(dtype=np.float64)),
    }


def detect_modality(
    pixels: npt.ArrayLike,
    *,
    bit_depth: int = 8,
    thresholds: PseudoColourThresholds = DEFAULT_THRESHOLDS,
) -> ModalityEvidence:
    """Whether ``pixels`` (H, W, 3) uint8 RGB look like a scanner image or a camera photo.

    ``bit_depth`` is the bits per sample of the file as decoded (``DecodedImage.bit_depth``);
    a grey image above 8 bits is a scanner image. Raises ``ValueError`` for another shape.
    """
    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"pixels must be an (H, W, 3) RGB array, got shape {array.shape}")
    image = array if array.dtype == np.uint8 else np.clip(array, 0, 255).astype(np.uint8)
    measures = pseudo_colour_measures(image)
    if bit_depth > 8 and measures["colourfulness"] < 3.0:
        return ModalityEvidence("xray", "grey_high_bit_depth", measures)
    palette = (
        measures["border_white"] >= thresholds.border_white
        and measures["orange"] >= thresholds.orange
        and measures["blue_green"] >= thresholds.blue_green
        and measures["colourfulness"] >= thresholds.colourfulness
    )
    crowded = (
        measures["white"] >= thresholds.crowded_white
        and measures["orange"] >= thresholds.crowded_orange
        and measures["blue_green"] >= thresholds.crowded_blue_green
        and measures["colourfulness"] >= thresholds.crowded_colourfulness
    )
    if palette and (measures["white"] >= thresholds.white or crowded):
        return ModalityEvidence("xray", "pseudo_colour", measures)
    return ModalityEvidence("camera", "none", measures)
