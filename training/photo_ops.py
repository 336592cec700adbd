"""PIL operations that imitate how a product photo is taken, shared by the ``phone``
augmentation (:class:`training.augment.PhoneCapture`, training) and the software re-shoots that
measure robustness (:func:`training.open_set.reshoot`, evaluation). Each caller draws its own
random values, so the two keep their own distributions and surfaces."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image


def lay_on(
    image: Image.Image,
    canvas: Image.Image,
    *,
    scale: float,
    angle: float,
    place: Callable[[int, int], tuple[int, int]],
) -> Image.Image:
    """``image`` shrunk to ``scale`` of its size, tilted by ``angle`` degrees and pasted onto
    ``canvas`` (an image of the same size, changed in place and returned), so that a border of
    the canvas shows around it. ``place(free_width, free_height)`` gives the top-left corner
    within the free room (each in ``0..free``)."""
    width, height = image.size
    inner = image.resize((max(1, round(width * scale)), max(1, round(height * scale))))
    mask = Image.new("L", inner.size, 255).rotate(angle, Image.Resampling.BICUBIC, expand=True)
    inner = inner.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    fit = min(1.0, width / inner.size[0], height / inner.size[1])
    if fit < 1.0:
        fitted = (max(1, int(inner.size[0] * fit)), max(1, int(inner.size[1] * fit)))
        inner, mask = inner.resize(fitted), mask.resize(fitted)
    canvas.paste(inner, place(width - inner.size[0], height - inner.size[1]), mask)
    return canvas
