"""Image files to model inputs through the one preprocessing (no torch needed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from model.preprocess import PreprocessConfig, preprocess_bytes
from training.data import DataError


def load_inputs(paths: Sequence[Path], config: PreprocessConfig) -> NDArray[np.float32]:
    """Preprocess image files into one ``[N, 3, S, S]`` batch (the evaluation path)."""
    arrays = []
    for path in paths:
        try:
            arrays.append(preprocess_bytes(Path(path).read_bytes(), config))
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc.strerror})") from exc
        except ValueError as exc:  # model.preprocess.ImageError and subclasses
            raise DataError(f"{path}: {exc}") from exc
    return np.stack(arrays).astype(np.float32, copy=False)


def batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
