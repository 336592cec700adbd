"""decode_image(strict_jpeg=True): one strict libjpeg-turbo decode, Pillow's own pixels, damaged
compressed data refused."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model.imageio import CorruptImageError, DecodedImage, decode_image
from tests import images

pytest.importorskip("simplejpeg")


def both(data: bytes, target: int | None) -> tuple[DecodedImage, DecodedImage]:
    return (
        decode_image(data, target_shorter=target),
        decode_image(data, target_shorter=target, strict_jpeg=True),
    )


def assert_same(plain: DecodedImage, strict: DecodedImage) -> None:
    assert strict.image.size == plain.image.size
    assert strict.image.mode == plain.image.mode == "RGB"
    assert np.array_equal(np.asarray(strict.image), np.asarray(plain.image))
    assert (strict.reduced_scale, strict.original_size) == (
        plain.reduced_scale,
        plain.original_size,
    )


SYNTHETIC: dict[str, Callable[[], bytes]] = {
    "baseline": images.jpeg_rgb,
    "progressive": images.jpeg_progressive,
    "grey": images.jpeg_grey,
    **{f"orientation {o}": (lambda o=o: images.jpeg_exif_orientation(o)) for o in range(1, 9)},
    "1/2 scale": lambda: images.large_jpeg(1100, 700),
    "1/4 scale": lambda: images.large_jpeg(2048, 1536),
    "1/8 scale, 12 MP": images.large_jpeg,
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_strict_decoding_gives_pillows_pixels(name: str) -> None:
    plain, strict = both(SYNTHETIC[name](), 256)
    assert strict.strict and not plain.strict
    assert_same(plain, strict)
    if "scale" in name:
        assert strict.reduced_scale


def test_strict_decoding_of_real_photos_gives_pillows_pixels(shared_data: Path) -> None:
    photos = sorted((shared_data / "met-ivory").rglob("*.jpg")) + sorted(
        (shared_data / "wood-trade-groups").rglob("*.jpg")
    )
    assert photos
    for path in random.Random(12).sample(photos, min(40, len(photos))):
        for target in (64, 256):  # 64 makes most of them decode at reduced scale
            plain, strict = both(path.read_bytes(), target)
            assert_same(plain, strict)


def test_damaged_compressed_data_is_refused_only_when_strict() -> None:
    damaged = images.zeroed_middle(images.large_jpeg(1024, 768))
    decode_image(damaged, target_shorter=256)  # Pillow decodes garbage without a word
    with pytest.raises(CorruptImageError, match="damaged"):
        decode_image(damaged, target_shorter=256, strict_jpeg=True)


def test_cmyk_is_decoded_by_pillow_and_its_data_still_checked() -> None:
    plain, strict = both(images.jpeg_cmyk(), 256)
    assert strict.strict  # Pillow's pixels, the compressed data checked on its own
    assert_same(plain, strict)
    cmyk = images.encode(images.noise_image(640, 480).convert("CMYK"), "JPEG", quality=90)
    damaged = images.zeroed_middle(cmyk)
    decode_image(damaged, target_shorter=256)
    with pytest.raises(CorruptImageError, match="damaged"):
        decode_image(damaged, target_shorter=256, strict_jpeg=True)


def test_truncated_jpeg_is_refused_either_way() -> None:
    for strict in (False, True):
        with pytest.raises(CorruptImageError):
            decode_image(images.truncated_jpeg(), strict_jpeg=strict)
