"""The page's app icons as PNG, drawn with Pillow from the same geometry as ``static/icon.svg``.

Installable web apps need raster icons (192 and 512 px, plus a "maskable" one with a safe zone).
They are drawn here at request time instead of being committed as binaries, so they follow the
SVG's shapes and are the same bytes on every run (the drawing is deterministic; supersampled 4x
and reduced with a box filter for smooth edges).
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageDraw

BRAND = (11, 79, 138)  # #0b4f8a, the page's --brand
WHITE = (255, 255, 255)
SIZES: tuple[int, ...] = (192, 512)
_SUPERSAMPLE = 4


def _eye(draw: ImageDraw.ImageDraw, unit: float, offset: float) -> None:
    """The SVG's eye (viewBox 32): an almond from two arcs, an iris and a pupil."""

    def p(x: float, y: float) -> tuple[float, float]:
        return (offset + x * unit, offset + y * unit)

    # The almond "M4 16c3-6 7-9 12-9s9 3 12 9c-3 6-7 9-12 9S7 22 4 16z" as a polygon of its
    # cubic Bezier curves.
    curves = [
        ((4, 16), (7, 10), (11, 7), (16, 7)),
        ((16, 7), (21, 7), (25, 10), (28, 16)),
        ((28, 16), (25, 22), (21, 25), (16, 25)),
        ((16, 25), (11, 25), (7, 22), (4, 16)),
    ]
    points: list[tuple[float, float]] = []
    for a, b, c, d in curves:
        for step in range(24):
            t = step / 24
            u = 1 - t
            x = u**3 * a[0] + 3 * u * u * t * b[0] + 3 * u * t * t * c[0] + t**3 * d[0]
            y = u**3 * a[1] + 3 * u * u * t * b[1] + 3 * u * t * t * c[1] + t**3 * d[1]
            points.append(p(x, y))
    draw.polygon(points, fill=WHITE)
    for radius, colour in ((5.5, BRAND), (2.2, WHITE)):
        x0, y0 = p(16 - radius, 16 - radius)
        x1, y1 = p(16 + radius, 16 + radius)
        draw.ellipse((x0, y0, x1, y1), fill=colour)


@functools.cache
def icon_png(size: int, *, maskable: bool = False) -> bytes:
    """The icon as a ``size`` x ``size`` PNG. ``maskable``: a full-bleed square whose eye sits
    inside the central 80% safe zone (launchers cut it to their own shape)."""
    if size not in SIZES:
        raise ValueError(f"icon size must be one of {SIZES}, got {size}")
    big = size * _SUPERSAMPLE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    if maskable:
        draw.rectangle((0, 0, big, big), fill=BRAND)
        unit = big * 0.7 / 32
        _eye(draw, unit, (big - 32 * unit) / 2)
    else:
        unit = big / 32
        draw.rounded_rectangle((0, 0, big - 1, big - 1), radius=7 * unit, fill=BRAND)
        _eye(draw, unit, 0.0)
    small = image.resize((size, size), Image.Resampling.BOX)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=False)
    return out.getvalue()
