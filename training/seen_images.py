"""The images a bundle was built from, by content: which given images did it train or tune on?

Training writes :data:`SEEN_IMAGES_FILE` into every bundle: one line per image of the split,
``<sha256 of the file's bytes>\\t<train|val|test>``, sorted. ``evaluate`` reads it back
(:func:`read_seen_images`) and reports how many of the images it is given were trained on
(``train``) or tuned on (``val``: head choice, temperature, thresholds, OOD threshold, early
stopping), warns when any were, and reports the figures on the unseen images separately. The
content hash finds the images whatever their path or file name.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.bundle import Bundle
from model.digest import sha256_file
from training.data import DataError, Sample, SplitFractions, load_dataset
from training.data import split_samples as split_anew

logger = logging.getLogger(__name__)

SEEN_IMAGES_FILE = "seen-images.tsv"
SEEN_SPLITS = ("train", "val")
"""Splits whose images the bundle was fitted or tuned on (``test`` images were held out)."""
_HEADER = "# sha256 of each image of the bundle's training data, and its split (train, val, test)"
_SPLITS = ("train", "val", "test")


def write_seen_images(path: Path, splits: Mapping[str, Sequence[Sample]]) -> Path:
    """Write the digest file for ``splits`` (``{"train": [...], "val": [...], "test": [...]}``).

    An image present in several splits (byte-identical copies) is recorded under the first of
    train, val, test: the one that matters for an overlap warning."""
    digests: dict[str, str] = {}
    for split in _SPLITS:
        for sample in splits.get(split, ()):
            digests.setdefault(sha256_file(sample.path), split)
    lines = [_HEADER, *(f"{digest}\t{split}" for digest, split in sorted(digests.items()))]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def recorded_split(samples: Sequence[Sample], seen: Mapping[str, str]) -> dict[str, list[Sample]]:
    """``samples`` split as the bundle whose digest file is ``seen`` was split: each image on
    its recorded side, whatever the grouping or seed of today's code. Raises
    :class:`~training.data.DataError` naming an image the bundle was not built from."""
    result: dict[str, list[Sample]] = {split: [] for split in _SPLITS}
    found = overlap(seen, [s.path for s in samples])
    absent = [s for s, split in zip(samples, found.splits, strict=True) if split is None]
    if absent:
        raise DataError(
            f"{len(absent)} images are not among the bundle's own (e.g. {absent[0].path}): "
            "reusing a bundle keeps its split, so give it the data it was built from"
        )
    for sample, split in zip(samples, found.splits, strict=True):
        result[str(split)].append(sample)
    return result


def bundle_split(
    bundle: Bundle | None, samples: Sequence[Sample], fractions: SplitFractions, seed: int
) -> dict[str, list[Sample]]:
    """The split of ``samples`` for work on ``bundle`` (reusing, studying or retraining it): as
    the bundle recorded it in its digest file (:func:`recorded_split`), else (no bundle, or one
    trained before the file existed) split anew (:func:`training.data.split_samples`)."""
    if bundle is not None:
        seen = read_seen_images(bundle)
        if seen is not None:
            logger.info("the split of %s, as recorded in its %s", bundle.path, SEEN_IMAGES_FILE)
            return recorded_split(samples, seen)
        logger.warning("%s has no %s: splitting anew", bundle.path, SEEN_IMAGES_FILE)
    return split_anew(samples, fractions, seed=seed)


def read_seen_images(bundle: Bundle) -> dict[str, str] | None:
    """``{sha256: split}`` of the bundle's images, or None for a bundle trained before the
    file existed. Raises :class:`~training.data.DataError` for a malformed file."""
    path = bundle.path / SEEN_IMAGES_FILE
    if SEEN_IMAGES_FILE not in bundle.manifest.files or not path.is_file():
        return None
    seen: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        digest, _, split = line.partition("\t")
        if len(digest) != 64 or split not in _SPLITS:
            raise DataError(f"{path}:{number}: expected '<sha256>\\t<train|val|test>'")
        seen[digest] = split
    return seen


def split_samples(
    bundle: Bundle, data_dir: Path, splits: Sequence[str]
) -> dict[str, list[tuple[Sample, str]]]:
    """The bundle's own images of ``splits``, found again: the datasets its ``config.json``
    records, looked up by folder name under ``data_dir``, filtered by :data:`SEEN_IMAGES_FILE`;
    each with its dataset's folder name. A file present twice (byte-identical) counts once.
    Raises :class:`~training.data.DataError` for a bundle without the file (its splits are
    unknown)."""
    seen = read_seen_images(bundle)
    if seen is None:
        raise DataError(f"{bundle.path} has no {SEEN_IMAGES_FILE}: its splits are unknown")
    recorded = json.loads((bundle.path / "config.json").read_text())["config"]["data"]
    found: dict[str, list[tuple[Sample, str]]] = {split: [] for split in splits}
    taken: set[str] = set()
    for name in (Path(folder).name for folder in recorded):
        for sample in load_dataset(data_dir / name):
            digest = sha256_file(sample.path)
            split = seen.get(digest)
            if split in found and digest not in taken:
                taken.add(digest)
                found[split].append((sample, name))
    return found


@dataclass(frozen=True)
class Overlap:
    """Which of the given images the bundle has seen.

    Attributes:
        splits: per given image, the bundle split it belongs to, or None (never seen).
    """

    splits: tuple[str | None, ...]

    @property
    def counts(self) -> dict[str, int]:
        """How many given images are in each bundle split (``unseen`` for the rest)."""
        counter = Counter(s or "unseen" for s in self.splits)
        return {name: counter.get(name, 0) for name in (*_SPLITS, "unseen")}

    @property
    def trained_or_tuned(self) -> int:
        """Images of the ``train`` and ``val`` splits."""
        return sum(1 for s in self.splits if s in SEEN_SPLITS)

    @property
    def unseen_mask(self) -> list[bool]:
        """Per given image: True when the bundle neither trained nor tuned on it."""
        return [s not in SEEN_SPLITS for s in self.splits]


def overlap(seen: Mapping[str, str], paths: Sequence[Path]) -> Overlap:
    """Look up every image file (by the sha256 of its bytes) in the bundle's digest set."""
    return Overlap(tuple(seen.get(sha256_file(p)) for p in paths))
