"""Training images in memory for fine-tuning with augmentation.

Each file is decoded once (EXIF orientation applied, RGB) and kept downscaled so that its shorter
side is ``keep_shorter`` pixels; every epoch then draws a fresh augmentation from that copy
instead of decoding the JPEG again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm import tqdm

from training.data import DataError

logger = logging.getLogger(__name__)


def decode_for_training(path: Path, keep_shorter: int) -> Image.Image:
    """Open an image, apply its EXIF orientation, convert to RGB and downscale it."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc
    shorter = min(image.size)
    if shorter > keep_shorter:
        scale = keep_shorter / shorter
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


class AugmentedImages(Dataset[tuple[torch.Tensor, int]]):
    """``(augmented tensor, target)`` pairs from images held in memory."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: NDArray[np.int64],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        keep_shorter: int = 288,
    ) -> None:
        self.images = [
            decode_for_training(p, keep_shorter)
            for p in tqdm(paths, desc="decode train images", unit="img", dynamic_ncols=True)
        ]
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.targets[index]
