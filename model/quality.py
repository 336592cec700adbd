"""The image quality gate: photos the model cannot judge are refused before it answers.

A blank, tiny, black, washed-out or badly blurred photo carries no evidence, yet a classifier
still spreads its probability over the labels it knows, sometimes confidently. The gate
measures the pixels the model would see (8-bit RGB of the model input) and names each problem:

- ``uniform``: no colour channel spans ``uniform_range`` levels or more between its 1st and
  99th percentile (a blank page, a lens cap, a 1x1 image enlarged);
- ``too_dark``: even the brightest 1% of pixels (brightest channel of each pixel, HSV value)
  stay below ``dark_p99``;
- ``too_bright``: even the darkest 1% of pixels (darkest channel of each pixel) are above
  ``bright_p1`` (washed out);
- ``blurred``: the mean absolute Laplacian of the brightness (mean of the three channels), the
  fine detail at the pixel scale, is below ``min_detail`` levels. Badly blurred photos and
  tiny images enlarged to the model's size (4x4 to about 64x64 pixels) both lack it;
- ``too_small``: the source image has a side below ``min_side`` pixels (checked when its size
  is known).

The thresholds were set so that at most 1% of the real photos in ../shared/data are refused;
the measured rates are in docs/model.md ("Image checks before the model") and are reproduced
by ``python -m training.image_checks``. Only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

QualityProblem = Literal["too_small", "uniform", "too_dark", "too_bright", "blurred"]
QUALITY_PROBLEMS: tuple[QualityProblem, ...] = (
    "too_small",
    "uniform",
    "too_dark",
    "too_bright",
    "blurred",
)


@dataclass(frozen=True)
class QualityThresholds:
    """The limits of the gate (levels are 0-255 channel values)."""

    min_side: int = 32
    uniform_range: float = 10.0
    dark_p99: float = 40.0
    bright_p1: float = 235.0
    min_detail: float = 1.3


DEFAULT_QUALITY_THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class QualityReport:
    """The gate's verdict on one image.

    Attributes:
        problems: what is wrong, in :data:`QUALITY_PROBLEMS` order; empty when usable.
        measures: the values the problems were judged on (see below).
    """

    problems: tuple[QualityProblem, ...]
    measures: dict[str, float]
    """``range`` (widest channel's 1-99 percentile span), ``p99_value`` (brightest channel),
    ``p1_darkest`` (darkest channel) and ``detail`` (mean absolute Laplacian)."""

    @property
    def usable(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _percentile(values: npt.NDArray[np.uint8], percent: float) -> float:
    """The ``percent`` percentile of uint8 values (lower value), from a histogram: fast."""
    counts = np.bincount(values.ravel(), minlength=256)
    rank = percent / 100.0 * (int(counts.sum()) - 1)
    return float(np.searchsorted(np.cumsum(counts), rank, side="right"))


def fine_detail(brightness: npt.NDArray[np.float32]) -> float:
    """Mean absolute 4-neighbour Laplacian of a (H, W) brightness image (0 below 3x3)."""
    if brightness.shape[0] < 3 or brightness.shape[1] < 3:
        return 0.0
    centre = brightness[1:-1, 1:-1]
    laplacian = (
        4.0 * centre
        - brightness[:-2, 1:-1]
        - brightness[2:, 1:-1]
        - brightness[1:-1, :-2]
        - brightness[1:-1, 2:]
    )
    return float(np.abs(laplacian).mean())


def assess_quality(
    pixels: npt.ArrayLike,
    *,
    source_size: tuple[int, int] | None = None,
    thresholds: QualityThresholds = DEFAULT_QUALITY_THRESHOLDS,
) -> QualityReport:
    """Check (H, W, 3) uint8 RGB pixels (the model input) for the problems listed above.

    ``source_size`` is the (width, height) of the original file, when known. Raises
    ``ValueError`` for another shape.
    """
    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"pixels must be an (H, W, 3) RGB array, got shape {array.shape}")
    image = array if array.dtype == np.uint8 else np.clip(array, 0, 255).astype(np.uint8)
    spread = max(
        _percentile(image[..., c], 99.0) - _percentile(image[..., c], 1.0) for c in range(3)
    )
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    p99_value = _percentile(np.maximum(np.maximum(red, green), blue), 99.0)
    p1_darkest = _percentile(np.minimum(np.minimum(red, green), blue), 1.0)
    brightness = (red.astype(np.float32) + green + blue) * np.float32(1.0 / 3.0)
    detail = fine_detail(brightness)
    problems: list[QualityProblem] = []
    if source_size is not None and min(source_size) < thresholds.min_side:
        problems.append("too_small")
    uniform = spread < thresholds.uniform_range
    if uniform:
        problems.append("uniform")
    if p99_value < thresholds.dark_p99:
        problems.append("too_dark")
    if p1_darkest > thresholds.bright_p1:
        problems.append("too_bright")
    if not uniform and detail < thresholds.min_detail:
        problems.append("blurred")
    measures = {
        "range": spread,
        "p99_value": p99_value,
        "p1_darkest": p1_darkest,
        "detail": detail,
    }
    return QualityReport(tuple(problems), measures)
