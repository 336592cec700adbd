"""Preprocessing as most teams first write it: full decode, full-resolution resize with PIL.

Uses the same :class:`model.preprocess.PreprocessConfig` values as the product (read from the
bundle manifest: shorter side, crop, interpolation, mean and std), but decodes every pixel of the
image and resizes from full resolution, without reduced-scale JPEG decoding.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.preprocess import INTERPOLATIONS, PreprocessConfig


def bundle_config(bundle_dir: Path) -> PreprocessConfig:
    """The preprocessing recorded in ``bundle_dir/manifest.json``."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    return PreprocessConfig.from_dict(manifest["preprocess"])


def naive_preprocess(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """Decode ``data`` fully, resize, centre-crop and normalise: a (3,S,S) float32 array."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    size = config.input_size
    resample = INTERPOLATIONS[config.interpolation]
    if config.crop == "squash":
        image = image.resize((size, size), resample)
    else:
        width, height = image.size
        scale = config.resize_shorter / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, resample)
        left = (new[0] - size) // 2
        top = (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
