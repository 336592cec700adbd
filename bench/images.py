"""The images every benchmark uses, made on the fly (never stored in the repository).

* ``phone_12mp.jpg``: a 4032x3024 JPEG (quality 90, 4:2:0), the size of a phone camera photo,
  made by enlarging a real photo from ``../shared/data`` and adding sensor-like noise so that it
  compresses like a real one (a smooth enlargement would be unrealistically small and fast).
* ``photo_1600.jpg``: the same scene at 1600x1200.
* ``scanner_16bit.tif``: a 2048x2048 16-bit grayscale TIFF, like an x-ray scanner's export.
* the *load set*: real photos from ``../shared/data`` (a few hundred, up to 512 px) that the
  load tests send in turn; synthetic 640x480 JPEGs when the shared folder is absent.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import CACHE_DIR, shared_data_dir

logger = logging.getLogger(__name__)

PHONE_SIZE = (4032, 3024)
MEDIUM_SIZE = (1600, 1200)
SCANNER_SIZE = (2048, 2048)


@dataclass(frozen=True)
class BenchImage:
    """One named benchmark image held in memory."""

    name: str
    filename: str
    data: bytes
    mime: str
    width: int
    height: int


def _source_photo() -> Image.Image:
    """A real colour photo to enlarge, or a synthetic scene when shared data is absent."""
    folder = shared_data_dir() / "met-ivory"
    candidates = sorted(folder.glob("*/*.jpg"))[:50] if folder.is_dir() else []
    if candidates:
        # the largest of the first few keeps the enlargement factor small
        best = max(candidates, key=lambda p: Image.open(p).size[0] * Image.open(p).size[1])
        return Image.open(best).convert("RGB")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:384, 0:512]
    base = np.stack([x / 2, y / 1.5, (x + y) / 3.5], axis=-1) % 256
    noise = rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def _noisy_resize(image: Image.Image, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    big = np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 6.0, big.shape).astype(np.int16)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8), "RGB")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def _cached(name: str) -> Path:
    return CACHE_DIR / name


def phone_jpeg() -> BenchImage:
    """A 12 MP (4032x3024) phone-sized JPEG."""
    return _make_photo("phone_12mp.jpg", PHONE_SIZE, seed=1)


def medium_jpeg() -> BenchImage:
    """A 1600x1200 JPEG."""
    return _make_photo("photo_1600.jpg", MEDIUM_SIZE, seed=2)


def _make_photo(filename: str, size: tuple[int, int], seed: int) -> BenchImage:
    path = _cached(filename)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(_noisy_resize(_source_photo(), size, seed)))
        logger.info("made %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return BenchImage(filename, filename, path.read_bytes(), "image/jpeg", *size)


def scanner_tiff() -> BenchImage:
    """A 2048x2048 16-bit grayscale TIFF, like an x-ray scanner's export."""
    filename = "scanner_16bit.tif"
    path = _cached(filename)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = shared_data_dir() / "xray-baggage"
        sources = sorted(folder.glob("*/*.jpg")) if folder.is_dir() else []
        if sources:
            gray = (
                Image.open(sources[0]).convert("L").resize(SCANNER_SIZE, Image.Resampling.BICUBIC)
            )
            base = np.asarray(gray, dtype=np.float64) * 257.0
        else:
            y, x = np.mgrid[0 : SCANNER_SIZE[1], 0 : SCANNER_SIZE[0]]
            base = (np.sin(x / 90.0) * np.cos(y / 70.0) + 1.0) * 30000.0
        rng = np.random.default_rng(3)
        data = np.clip(base + rng.normal(0, 300, base.shape), 0, 65535).astype("<u2")
        image = Image.fromarray(data)  # uint16 -> mode I;16
        buf = io.BytesIO()
        image.save(buf, format="TIFF")
        path.write_bytes(buf.getvalue())
        logger.info("made %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return BenchImage(filename, filename, path.read_bytes(), "image/tiff", *SCANNER_SIZE)


def load_set(count: int = 256) -> list[BenchImage]:
    """Real photos for the load tests (ivory and wood sets), or synthetic ones when absent."""
    root = shared_data_dir()
    paths: list[Path] = []
    for name in ("met-ivory", "wood-trade-groups"):
        folder = root / name
        if folder.is_dir():
            paths.extend(sorted(folder.glob("*/*.jpg")))
    images: list[BenchImage] = []
    if paths:
        step = max(1, len(paths) // count)
        for path in paths[::step][:count]:
            with Image.open(path) as im:
                width, height = im.size
            images.append(
                BenchImage(path.stem, path.name, path.read_bytes(), "image/jpeg", width, height)
            )
        return images
    logger.warning("%s is absent: the load set is synthetic", root)
    rng = np.random.default_rng(4)
    for i in range(min(count, 32)):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        images.append(
            BenchImage(
                f"synthetic-{i}",
                f"synthetic-{i}.jpg",
                _jpeg(Image.fromarray(pixels)),
                "image/jpeg",
                640,
                480,
            )
        )
    return images


def write_load_set(images: list[BenchImage], folder: Path) -> Path:
    """Write ``images`` to ``folder`` (for the load generator process); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for image in images:
        (folder / image.filename).write_bytes(image.data)
    return folder
