"""Awkward test images built in memory (bytes), reusable by any test.

Most images share one checkable pattern, :func:`halves`: the left half red, the right half blue,
so a test can tell colour handling and orientation apart. Nothing here reads files.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

WIDTH = 64
HEIGHT = 48


def halves(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """RGB image, left half red and right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    """Encode ``image`` with Pillow into bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def jpeg_rgb(quality: int = 95) -> bytes:
    """Plain baseline JPEG of :func:`halves`."""
    return encode(halves(), "JPEG", quality=quality)


def jpeg_cmyk() -> bytes:
    """CMYK JPEG (Adobe, as print workflows write it) of :func:`halves`."""
    return encode(halves().convert("CMYK"), "JPEG", quality=95)


def jpeg_progressive() -> bytes:
    """Progressive JPEG of :func:`halves`."""
    return encode(halves(), "JPEG", quality=95, progressive=True)


def jpeg_exif_orientation(orientation: int = 6) -> bytes:
    """JPEG of :func:`halves` (64x48 stored) with an EXIF orientation tag.

    With orientation 6 a viewer rotates it 90 degrees clockwise: shown 48x64, red on top.
    """
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(halves(), "JPEG", quality=95, exif=exif.tobytes())


def jpeg_grey() -> bytes:
    """8-bit greyscale JPEG: a horizontal ramp."""
    ramp = np.tile(np.linspace(0, 255, WIDTH).astype(np.uint8), (HEIGHT, 1))
    return encode(Image.fromarray(ramp), "JPEG", quality=95)


def png_rgba() -> bytes:
    """RGBA PNG: left half opaque red, right half fully transparent blue."""
    image = halves().convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (WIDTH // 2, 0, WIDTH, HEIGHT))
    image.putalpha(alpha)
    return encode(image, "PNG")


def png_palette_transparent() -> bytes:
    """Palette PNG (tRNS): left half red, right half palette index 0, which is transparent."""
    image = Image.new("P", (WIDTH, HEIGHT), 0)
    palette = [0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254
    image.putpalette(palette)
    image.paste(1, (0, 0, WIDTH // 2, HEIGHT))
    return encode(image, "PNG", transparency=0)


def grey16_array(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """16-bit grey samples in a narrow band (1000..3000) with a few outliers at 0 and 65535."""
    rng = np.random.default_rng(seed)
    values = rng.integers(1000, 3001, size=(height, width)).astype(np.uint16)
    flat = values.reshape(-1)
    count = max(1, flat.size // 500)  # 0.2 % each side: inside the clipped 0.5 %
    flat[:count] = 0
    flat[-count:] = 65535
    return values


def png_grey16(values: np.ndarray | None = None) -> bytes:
    """16-bit greyscale PNG (Pillow mode ``I;16``)."""
    data = grey16_array() if values is None else values
    return encode(Image.fromarray(data.astype(np.uint16)), "PNG")


def tiff_grey16(values: np.ndarray | None = None, *, big_endian: bool = False) -> bytes:
    """16-bit greyscale TIFF as scanners write it (little- or big-endian)."""
    data = (grey16_array() if values is None else values).astype(np.uint16)
    if big_endian:
        return encode(Image.fromarray(data.astype(">u2")), "TIFF")  # mode I;16B
    return encode(Image.fromarray(data), "TIFF")


def tiff_grey8() -> bytes:
    """8-bit greyscale TIFF: a horizontal ramp."""
    ramp = np.tile(np.linspace(0, 255, WIDTH).astype(np.uint8), (HEIGHT, 1))
    return encode(Image.fromarray(ramp), "TIFF")


def tiff_float32() -> bytes:
    """32-bit float TIFF (Pillow mode ``F``) with the values of :func:`grey16_array`."""
    return encode(Image.fromarray(grey16_array().astype(np.float32)), "TIFF")


def webp() -> bytes:
    """Lossless WebP of :func:`halves`."""
    return encode(halves(), "WEBP", lossless=True)


def heic(orientation: int | None = None) -> bytes:
    """HEIC of :func:`halves` as phones write it (HEVC, through pillow-heif)."""
    import pillow_heif

    heif = pillow_heif.from_pillow(halves())
    buffer = io.BytesIO()
    params: dict[str, Any] = {"quality": 95}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    heif.save(buffer, **params)
    return buffer.getvalue()


def gif_animated() -> bytes:
    """Two-frame animated GIF: the first frame red, the second blue."""
    frames = [Image.new("RGB", (WIDTH, HEIGHT), RED), Image.new("RGB", (WIDTH, HEIGHT), BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def bmp() -> bytes:
    """BMP of :func:`halves`."""
    return encode(halves(), "BMP")


def zeroed_middle(data: bytes, count: int = 800) -> bytes:
    """``data`` with ``count`` bytes in the middle set to zero (a damaged transfer or card)."""
    damaged = bytearray(data)
    middle = len(damaged) // 2
    damaged[middle : middle + count] = b"\x00" * count
    return bytes(damaged)


def truncated_jpeg() -> bytes:
    """A JPEG cut in the middle of its scan data."""
    data = encode(noise_image(256, 192), "JPEG", quality=95)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    """A PNG cut in the middle of its image data."""
    data = encode(noise_image(256, 192), "PNG")
    return data[: len(data) // 2]


def damaged_png() -> bytes:
    """A complete PNG whose compressed image data has 64 bytes overwritten with zeros."""
    data = bytearray(encode(noise_image(256, 192), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    return bytes(data)


def empty() -> bytes:
    """Zero bytes."""
    return b""


def text() -> bytes:
    """A text file, not an image."""
    return b"Hello, this is a shipping manifest, not a photo.\n" * 20


def png_declaring(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose valid header declares ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """RGB image of smooth gradients plus texture, roughly photo-like for codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(x / (width / 7.0)) * np.cos(y / (height / 5.0))
    green = 255 * x / max(1, width - 1)
    blue = 255 * y / max(1, height - 1)
    channels = np.stack([red, green, blue], axis=-1)
    channels += rng.normal(0, 12, size=channels.shape).astype(np.float32)
    return Image.fromarray(np.clip(channels, 0, 255).astype(np.uint8))


def large_jpeg(width: int = 4032, height: int = 3024, quality: int = 90) -> bytes:
    """A phone-sized JPEG (12 MP by default) with photo-like content."""
    small = noise_image(width // 8, height // 8)
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    return encode(image, "JPEG", quality=quality)


ALL_VALID = {
    "jpeg_rgb": jpeg_rgb,
    "jpeg_cmyk": jpeg_cmyk,
    "jpeg_progressive": jpeg_progressive,
    "jpeg_exif_orientation": jpeg_exif_orientation,
    "jpeg_grey": jpeg_grey,
    "png_rgba": png_rgba,
    "png_palette_transparent": png_palette_transparent,
    "png_grey16": png_grey16,
    "tiff_grey16": tiff_grey16,
    "tiff_grey8": tiff_grey8,
    "tiff_float32": tiff_float32,
    "webp": webp,
    "heic": heic,
    "gif_animated": gif_animated,
    "bmp": bmp,
}
"""Every generator of a valid image, by name (small images: fast to decode)."""
