"""Backbone features computed once and cached, for head-only training and OOD fitting.

Images go through the one evaluation preprocessing (``model.preprocess.preprocess_bytes``) and
the frozen pretrained backbone; the pooled ``[F]`` feature vector of each file is cached on disk
keyed by the file's sha256, so a second run (or another head) reads them back instantly. The
cache file name carries a fingerprint of the backbone weights and the preprocessing, so a change
of either never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from model.digest import sha256_file
from model.preprocess import PreprocessConfig
from training.inputs import batches, load_inputs

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "cites-vision" / "features"


@torch.no_grad()
def pooled_features(model: Any, inputs: torch.Tensor) -> torch.Tensor:
    """Globally pooled last feature map (what the classifier sees), ``[N, F]``."""
    feature_map = model.forward_features(inputs.contiguous(memory_format=torch.channels_last))
    pooled: torch.Tensor = feature_map.mean(dim=(2, 3))
    return pooled


def fingerprint(model: Any, config: PreprocessConfig) -> str:
    """A short hash of the backbone weights (all but the classifier) and the preprocessing."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    classifier = {id(p) for p in model.get_classifier().parameters()}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in classifier:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """A ``key -> feature vector`` store in one ``.npz`` file per backbone fingerprint."""

    def __init__(self, directory: Path | None, fingerprint_: str) -> None:
        self.path = None if directory is None else Path(directory) / f"{fingerprint_}.npz"
        self.vectors: dict[str, NDArray[np.float32]] = {}
        if self.path is not None and self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                for key, vector in zip(data["keys"], data["features"], strict=True):
                    self.vectors[str(key)] = vector
            logger.info("feature cache %s: %d vectors", self.path, len(self.vectors))

    def save(self) -> None:
        """Write the cache atomically (no-op without a directory)."""
        if self.path is None or not self.vectors:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(sorted(self.vectors))
        stacked = np.stack([self.vectors[k] for k in keys])
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, features=stacked)
        tmp.replace(self.path)


def extract_features(
    model: nn.Module,
    paths: Sequence[Path],
    config: PreprocessConfig,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    desc: str = "features",
) -> NDArray[np.float32]:
    """Pooled backbone features ``[N, F]`` for image files, reusing the on-disk cache."""
    model = model.eval().to(memory_format=torch.channels_last)
    cache = FeatureCache(cache_dir, fingerprint(model, config))
    keys = [sha256_file(p) for p in paths]
    todo = sorted(
        {k: p for k, p in zip(keys, paths, strict=True) if k not in cache.vectors}.items()
    )
    if todo:
        todo_paths = [p for _, p in todo]
        todo_keys = [k for k, _ in todo]
        done = 0
        with tqdm(total=len(todo), desc=desc, unit="img", dynamic_ncols=True) as bar:
            for chunk in batches(todo_paths, batch_size):
                vectors = pooled_features(model, torch.from_numpy(load_inputs(chunk, config)))
                for key, vector in zip(todo_keys[done : done + len(chunk)], vectors, strict=True):
                    cache.vectors[key] = vector.numpy().astype(np.float32)
                done += len(chunk)
                bar.update(len(chunk))
        cache.save()
    logger.info("%s: %d images (%d from cache)", desc, len(paths), len(paths) - len(todo))
    return np.stack([cache.vectors[k] for k in keys]).astype(np.float32)


def phone_capture_features(
    model: nn.Module,
    paths: Sequence[Path],
    config: PreprocessConfig,
    *,
    share: float,
    seed: int = 0,
    batch_size: int = 32,
) -> NDArray[np.float32]:
    """Pooled features ``[M, F]`` of phone captures (:class:`training.augment.PhoneCapture`,
    always applied) of a deterministic ``share`` of ``paths`` (chosen by a hash of the file name
    and ``seed``; each capture drawn from its own seeded generator, so a rerun gives the same
    features). They join a kNN reference bank so that a product photographed on a bench, tilted
    or blurred is not scored as unknown. Not cached: the captures are random by design."""
    from model.preprocess import image_to_array
    from training.augment import PhoneCapture
    from training.images import decode_for_training

    def chosen(path: Path) -> bool:
        digest = hashlib.sha256(f"{seed}:{path.name}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < share

    picked = [p for p in paths if chosen(p)]
    model = model.eval().to(memory_format=torch.channels_last)
    capture = PhoneCapture(1.0)
    vectors: list[NDArray[np.float32]] = []
    with (
        torch.random.fork_rng(),
        tqdm(total=len(picked), desc="phone captures", unit="img", dynamic_ncols=True) as bar,
    ):
        for start in range(0, len(picked), batch_size):
            arrays = []
            for offset, path in enumerate(picked[start : start + batch_size]):
                torch.manual_seed(seed * 1_000_003 + start + offset)
                image = capture(decode_for_training(path, keep_shorter=1024))
                arrays.append(image_to_array(image, config))
            pooled = pooled_features(model, torch.from_numpy(np.stack(arrays)))
            vectors.append(pooled.numpy().astype(np.float32))
            bar.update(len(arrays))
    logger.info("phone captures: %d of %d training photos", len(picked), len(paths))
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(vectors)
