"""Draw a class activation map over the photo it explains (numpy and Pillow only).

:meth:`model.predictor.Predictor.heatmap` gives a small map (e.g. 7x7) in [0, 1] over the model
input. :func:`render_heatmap_overlay` stretches it over the region of the photo the model saw
(the centre square for ``crop="center"``, the whole photo for ``squash``), colours it with a
perceptually ordered map (dark blue -> cyan -> yellow -> red) and alpha-blends it on the photo.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.preprocess import PreprocessConfig

# Anchor colours of the map at 0, 0.25, 0.5, 0.75 and 1 (a "turbo"-like ramp).
_ANCHORS = np.array(
    [
        [48, 18, 59],
        [40, 140, 250],
        [60, 230, 150],
        [250, 190, 40],
        [200, 30, 10],
    ],
    dtype=np.float32,
)
_LUT_SIZE = 256


class HeatmapError(ValueError):
    """The activation map or the image cannot be drawn."""


def _lookup_table() -> npt.NDArray[np.uint8]:
    positions = np.linspace(0.0, 1.0, len(_ANCHORS))
    steps = np.linspace(0.0, 1.0, _LUT_SIZE)
    channels = [np.interp(steps, positions, _ANCHORS[:, c]) for c in range(3)]
    return np.stack(channels, axis=1).round().astype(np.uint8)


COLORMAP = _lookup_table()
"""256 x 3 uint8 colour table used for the map."""


def colorize(cam: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Map values in [0, 1] (clipped) to RGB colours, shape (h, w, 3) uint8."""
    values = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    colored: npt.NDArray[np.uint8] = COLORMAP[(values * (_LUT_SIZE - 1)).round().astype(np.intp)]
    return colored


def model_region(
    size: tuple[int, int], config: PreprocessConfig | None
) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a ``size`` photo that the model input covers."""
    width, height = size
    if config is None or config.crop != "center":
        return (0, 0, width, height)
    side = min(width, height) * config.input_size / config.resize_shorter
    side = min(side, min(width, height))
    left = (width - side) / 2
    top = (height - side) / 2
    return (round(left), round(top), round(left + side), round(top + side))


def render_heatmap_overlay(
    image: Image.Image,
    cam: npt.ArrayLike,
    *,
    alpha: float = 0.45,
    config: PreprocessConfig | None = None,
    max_side: int | None = 1024,
) -> bytes:
    """The photo with the activation map blended over it, as PNG bytes.

    Args:
        image: the decoded (EXIF-oriented) photo, any mode.
        cam: activation map (h, w) with values in [0, 1].
        alpha: opacity of the colours where the map is 1 (scaled down where it is lower).
        config: the bundle's preprocessing; with ``crop="center"`` only the centre square the
            model saw is coloured.
        max_side: downscale the output so its longer side is at most this (None: keep size).
    """
    array = np.asarray(cam, dtype=np.float32)
    if array.ndim != 2 or min(array.shape) < 1:
        raise HeatmapError(f"cam must be a 2-D map, got shape {tuple(array.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise HeatmapError(f"alpha must be in [0, 1], got {alpha}")
    photo = image.convert("RGB")
    if max_side is not None and max(photo.size) > max_side:
        photo.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    left, top, right, bottom = model_region(photo.size, config)
    box_w, box_h = max(right - left, 1), max(bottom - top, 1)
    values = np.clip(np.nan_to_num(array), 0.0, 1.0)
    stretched = np.asarray(
        Image.fromarray(values, mode="F").resize((box_w, box_h), Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    base = np.asarray(photo, dtype=np.float32)
    region = base[top : top + box_h, left : left + box_w]
    weight = (alpha * (0.35 + 0.65 * stretched))[..., None]
    blended = region * (1.0 - weight) + colorize(stretched).astype(np.float32) * weight
    out = base.copy()
    out[top : top + box_h, left : left + box_w] = blended
    buffer = io.BytesIO()
    Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB").save(
        buffer, format="PNG", optimize=False
    )
    return buffer.getvalue()


def heatmap_box(
    cam: npt.ArrayLike, *, level: float = 0.5, upsample: int = 8
) -> tuple[float, float, float, float] | None:
    """Where the map points: the box around its peak, as fractions of the model input.

    The map (values in [0, 1], e.g. 7x7) is upsampled bilinearly ``upsample`` times; the
    connected region of cells at or above ``level`` times the peak that holds the peak is boxed.
    Returns ``(left, top, right, bottom)`` in [0, 1] of the model input's width and height, or
    None for a flat map (nothing stands out).
    """
    array = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, None)
    if array.ndim != 2 or min(array.shape) < 1:
        raise HeatmapError(f"cam must be a 2-D map, got shape {tuple(array.shape)}")
    peak = float(array.max())
    if peak <= 0.0 or float(array.min()) >= peak * 0.999:
        return None
    height, width = array.shape
    size = (width * upsample, height * upsample)
    fine = np.asarray(
        Image.fromarray(array / peak, mode="F").resize(size, Image.Resampling.BILINEAR),
        dtype=np.float32,
    )
    inside = fine >= level * float(fine.max())
    start = np.unravel_index(int(np.argmax(fine)), fine.shape)
    region = _connected(inside, (int(start[0]), int(start[1])))
    rows = np.nonzero(region.any(axis=1))[0]
    cols = np.nonzero(region.any(axis=0))[0]
    fh, fw = fine.shape
    return (
        float(cols[0]) / fw,
        float(rows[0]) / fh,
        float(cols[-1] + 1) / fw,
        float(rows[-1] + 1) / fh,
    )


def _connected(mask: npt.NDArray[np.bool_], start: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """The 4-connected component of ``mask`` holding ``start`` (iterative flood fill)."""
    region = np.zeros_like(mask)
    stack = [start]
    height, width = mask.shape
    while stack:
        y, x = stack.pop()
        if not (0 <= y < height and 0 <= x < width) or region[y, x] or not mask[y, x]:
            continue
        region[y, x] = True
        stack.extend(((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)))
    return region


def box_in_image(
    box: tuple[float, float, float, float], size: tuple[int, int], config: PreprocessConfig | None
) -> tuple[int, int, int, int]:
    """A box in fractions of the model input, in pixels of the ``size`` (width, height) image
    the input was made from (the centre square for ``crop="center"``, all of it for squash)."""
    left, top, right, bottom = model_region(size, config)
    width, height = right - left, bottom - top
    x0, y0, x1, y1 = box
    return (
        left + round(x0 * width),
        top + round(y0 * height),
        left + round(x1 * width),
        top + round(y1 * height),
    )


def draw_box(
    image: Image.Image, box: tuple[int, int, int, int], *, max_side: int | None = 1024
) -> bytes:
    """The image with ``box`` (pixels of ``image``) drawn in red, as PNG bytes (for x-ray
    answers: where the suspected object is)."""
    from PIL import ImageDraw

    picture = image.convert("RGB")
    scale = 1.0
    if max_side is not None and max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
            Image.Resampling.BILINEAR,
        )
    width = max(2, round(max(picture.size) / 200))
    scaled = tuple(round(v * scale) for v in box)
    ImageDraw.Draw(picture).rectangle(scaled, outline=(230, 0, 40), width=width)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
