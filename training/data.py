"""Datasets for training and evaluation: folder trees, CSV manifests, label maps and splits.

A dataset is a list of :class:`Sample` rows. It comes from a folder tree ``<class>/<image>``
(``source`` is the folder name, ``case_id`` a normalised file stem so that variants of one
photographed object stay together) or from a CSV manifest with the header
``path,label,modality,source,case_id`` (relative paths are relative to the CSV file).

A label map ties dataset class names to model labels and taxa; the split is deterministic and
grouped by ``case_id`` so that one case never sits on two sides. In a folder tree, photos a
phone camera named by date and time (``20170923_163057.jpg``) taken within
:data:`BURST_GAP` of each other are one case (:func:`camera_bursts`): shots of one shelf or
board seconds apart are near copies, and one on each side of the split would measure memory.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray

from model.digest import sha256_file
from model.labels import Label, LabelKind

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".heic", ".heif", ""}
)
MANIFEST_COLUMNS = ("path", "label", "modality", "source", "case_id")
MODALITIES = ("camera", "xray")
KINDS = ("cites", "lookalike", "not_wildlife")
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A dataset, manifest or label map cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class Sample:
    """One image: where it is, its dataset class, modality, source and case (group) id."""

    path: Path
    label: str
    modality: str = "camera"
    source: str = ""
    case_id: str = ""

    @property
    def group(self) -> str:
        """The key that keeps related images on one side of the split."""
        return f"{self.source}:{self.case_id or self.path.name}"


# Variant tokens in file names of one board or object (wood-database style names such as
# ``black-walnut-sealed-200x200.jpg`` and ``black-walnut-endgrain-zoom-200x200.jpg``).
_SIZE = re.compile(r"[-_]\d+x\d+$")
_COPY = re.compile(r"\(\d+\)$")
_VARIANT_TOKENS = frozenset(
    {"sealed", "s", "endgrain", "zoom", "ez", "full", "fs", "alt", "veneer"}
)


def normalised_stem(name: str) -> str:
    """A group key from a file name: lower case, no extension, size suffix, copy marker,
    variant words (sealed, endgrain, zoom, full...) or short series numbers (``-1``,
    ``sealed1``); numbers of three or more digits are ids and stay.

    >>> normalised_stem("black-walnut-endgrain-zoom-200x200.jpg")
    'black-walnut'
    >>> normalised_stem("peruvian-walnut-sealed1-200x200.jpg")
    'peruvian-walnut'
    """
    stem = Path(name).stem.lower() if Path(name).suffix.lower() in IMAGE_SUFFIXES else name.lower()
    stem = _COPY.sub("", _SIZE.sub("", stem))
    if re.fullmatch(r"[\d_]+", stem):  # camera file names (load_folder groups their bursts)
        return stem
    tokens = [t for t in re.split(r"[-_ ]+", stem) if t]
    kept: list[str] = []
    for token in tokens:
        if token.isdigit():  # ids (ivory_10074) stay; a short series index (-1, -2) goes
            if len(token) >= 3:
                kept.append(token)
            continue
        word = re.sub(r"\d+$", "", token)  # sealed1, balsamea2: numbered variants
        if word not in _VARIANT_TOKENS:
            kept.append(word)
    return "-".join(kept) or stem


CAMERA_FILE_NAME = re.compile(r"^(?:IMG_|PXL_)?((?:19|20)\d{6})_(\d{6})")
"""How phone cameras name photos: date_time (Samsung and most Android phones; Pixel's ``PXL_``,
some ``IMG_``)."""

BURST_GAP = timedelta(minutes=2)
"""Camera-named photos of one dataset taken at most this long after the previous one are one
case (the timber set's store photos: one shelf is shot 3 to 9 times within a minute, and the
next shelf a minute or more later)."""


def camera_time(name: str) -> datetime | None:
    """When a photo named by a phone camera (``20170923_163057.jpg``) was taken; None for other
    names (or an impossible date)."""
    match = CAMERA_FILE_NAME.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:
        return None


def camera_bursts(paths: Iterable[Path], gap: timedelta = BURST_GAP) -> dict[Path, str]:
    """A case id for each camera-named photo of ``paths``: photos taken within ``gap`` of the
    previous one (in time order, whatever their class folder) share ``burst-<first stamp>``.
    Other photos are not in the result."""
    timed = sorted((when, str(path), path) for path in paths if (when := camera_time(path.name)))
    cases: dict[Path, str] = {}
    case = ""
    previous: datetime | None = None
    for when, _name, path in timed:
        if previous is None or when - previous > gap:
            case = "burst-" + when.strftime("%Y%m%d_%H%M%S")
        cases[path] = case
        previous = when
    return cases


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and (path.suffix.lower() in IMAGE_SUFFIXES)
    )


def load_folder(root: Path, *, modality: str = "camera") -> list[Sample]:
    """Samples from ``root/<class>/<image>``; classes are the sub-folder names.

    Files directly under ``root`` and non-image files (``SOURCE.txt``) are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    found = [
        (class_dir.name, path)
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(p for p in class_dir.rglob("*") if _is_image(p))
    ]
    bursts = camera_bursts(path for _label, path in found)
    samples = [
        Sample(
            path=path,
            label=label,
            modality=modality,
            source=root.name,
            case_id=bursts.get(path) or normalised_stem(path.name),
        )
        for label, path in found
    ]
    if not samples:
        raise DataError(f"{root}: no images found in <class>/<image> sub-folders")
    return samples


def load_manifest(path: Path) -> list[Sample]:
    """Samples from a CSV manifest with the header ``path,label,modality,source,case_id``.

    ``modality`` defaults to ``camera``, ``source`` to the manifest's name and ``case_id`` to
    the normalised file stem. Errors name the file and line.
    """
    path = Path(path)
    samples = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("path", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}:1: header must include {', '.join(MANIFEST_COLUMNS)}; "
                f"missing {', '.join(missing)}"
            )
        for row in reader:
            line = reader.line_num
            rel = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            if not rel or not label:
                raise DataError(f"{path}:{line}: 'path' and 'label' must not be empty")
            modality = (row.get("modality") or "").strip() or "camera"
            if modality not in MODALITIES:
                raise DataError(
                    f"{path}:{line}: modality {modality!r} is not one of {', '.join(MODALITIES)}"
                )
            image = Path(rel) if Path(rel).is_absolute() else path.parent / rel
            if not image.is_file():
                raise DataError(f"{path}:{line}: image {image} does not exist")
            samples.append(
                Sample(
                    path=image,
                    label=label,
                    modality=modality,
                    source=(row.get("source") or "").strip() or path.stem,
                    case_id=(row.get("case_id") or "").strip() or normalised_stem(image.name),
                )
            )
    if not samples:
        raise DataError(f"{path}: the manifest lists no images")
    return samples


def write_manifest(samples: Sequence[Sample], path: Path) -> Path:
    """A CSV manifest (absolute paths) that :func:`load_manifest` reads back: the same
    classes, modalities, sources and case ids, so that the split groups as before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for s in samples:
            writer.writerow((str(s.path.resolve()), s.label, s.modality, s.source, s.case_id))
    return path


def load_dataset(spec: Path, *, modality: str = "camera") -> list[Sample]:
    """A folder tree or a ``.csv`` manifest, chosen by what ``spec`` is."""
    spec = Path(spec)
    if spec.is_file() and spec.suffix.lower() == ".csv":
        return load_manifest(spec)
    if spec.is_dir():
        return load_folder(spec, modality=modality)
    raise DataError(f"{spec}: neither a folder of <class>/<image> nor a .csv manifest")


def load_datasets(specs: Iterable[Path], *, modality: str = "camera") -> list[Sample]:
    """Concatenate several datasets and drop byte-identical duplicate files (first one kept)."""
    samples: list[Sample] = []
    for spec in specs:
        samples.extend(load_dataset(spec, modality=modality))
    return drop_duplicates(samples)


def drop_duplicates(samples: Sequence[Sample]) -> list[Sample]:
    """Keep the first of byte-identical files; a duplicate with another label is an error."""
    seen: dict[str, Sample] = {}
    kept = []
    for sample in samples:
        digest = sha256_file(sample.path)
        first = seen.get(digest)
        if first is None:
            seen[digest] = sample
            kept.append(sample)
        elif first.label != sample.label:
            raise DataError(
                f"{sample.path} is byte-identical to {first.path} but labelled "
                f"{sample.label!r} instead of {first.label!r}"
            )
    if len(kept) < len(samples):
        logger.info("dropped %d byte-identical duplicate files", len(samples) - len(kept))
    return kept


# ---------------------------------------------------------------------------------------------
# Label maps


@dataclass(frozen=True)
class LabelMap:
    """Dataset class names -> model labels (several classes may share one label)."""

    labels: tuple[Label, ...]
    classes: dict[str, str]  # dataset class name -> label id
    source: str = ""

    def index_of(self, dataset_class: str) -> int:
        """Index of the label a dataset class maps to; :class:`DataError` when unmapped."""
        label_id = self.classes.get(dataset_class)
        if label_id is None:
            raise DataError(
                f"dataset class {dataset_class!r} is not in the label map {self.source or ''}; "
                f"add a line for it (known: {', '.join(sorted(self.classes))})"
            )
        return next(label.index for label in self.labels if label.id == label_id)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form recorded in the bundle manifest (``training.label_map``)."""
        return {"classes": dict(sorted(self.classes.items())), "file": self.source}

    @classmethod
    def from_labels(cls, labels: Sequence[Label], classes: dict[str, str]) -> LabelMap:
        """Rebuild a map from a bundle's labels and its recorded class -> label id table."""
        return cls(tuple(labels), dict(classes), "bundle")


LABEL_MAP_HEADER = ("dataset_class", "label_id", "label_name", "taxon_id", "kind")


def read_label_map(path: Path) -> LabelMap:
    """Parse a label-map TSV with the header ``dataset_class label_id label_name taxon_id kind``.

    Blank lines and lines starting with ``#`` are ignored. A ``not_wildlife`` label may name no
    taxon: ``-`` in the ``taxon_id`` column. Labels are numbered in order of
    first appearance. A label id used twice must name the same taxon and kind. Every error names
    the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the label map ({exc.strerror})") from exc
    header_seen = False
    classes: dict[str, str] = {}
    labels: dict[str, Label] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in raw.split("\t")]
        if not header_seen:
            if tuple(fields) != LABEL_MAP_HEADER:
                raise DataError(
                    f"{path}:{number}: expected the header {' '.join(LABEL_MAP_HEADER)} "
                    "(tab-separated)"
                )
            header_seen = True
            continue
        if len(fields) != len(LABEL_MAP_HEADER):
            raise DataError(
                f"{path}:{number}: expected {len(LABEL_MAP_HEADER)} tab-separated fields, "
                f"got {len(fields)}"
            )
        dataset_class, label_id, name, taxon_id, kind = fields
        if taxon_id == "-" and kind == "not_wildlife":
            taxon_id = ""  # "not wildlife" names no taxon
        elif not all(fields):
            raise DataError(f"{path}:{number}: empty field")
        if kind not in KINDS:
            raise DataError(f"{path}:{number}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if dataset_class in classes:
            raise DataError(f"{path}:{number}: dataset class {dataset_class!r} is mapped twice")
        known = labels.get(label_id)
        if known is None:
            labels[label_id] = Label(len(labels), label_id, name, taxon_id, cast(LabelKind, kind))
        elif (known.taxon_id, known.kind) != (taxon_id, kind):
            raise DataError(
                f"{path}:{number}: label {label_id!r} was mapped to {known.taxon_id} "
                f"({known.kind}) on an earlier line"
            )
        classes[dataset_class] = label_id
    if not header_seen:
        raise DataError(f"{path}: empty label map")
    if len(labels) < 2:
        raise DataError(f"{path}: a label map needs at least two labels, found {len(labels)}")
    return LabelMap(tuple(labels.values()), classes, str(path))


def identity_label_map(samples: Sequence[Sample]) -> LabelMap:
    """One label per dataset class, kind ``cites`` and taxon id equal to the class name.

    For quick experiments only: a bundle for officers needs a real map to taxa.
    """
    names = sorted({s.label for s in samples})
    if len(names) < 2:
        raise DataError(f"need at least two classes to train, found {names}")
    labels = tuple(Label(i, name, name, name, "cites") for i, name in enumerate(names))
    return LabelMap(labels, {n: n for n in names}, "identity")


def check_taxa(label_map: LabelMap) -> None:
    """Every label's taxon id must exist in the default taxonomy."""
    from model.taxonomy import default_taxonomy

    taxonomy = default_taxonomy()
    for label in label_map.labels:
        if not label.taxon_id and label.kind == "not_wildlife":
            continue
        try:
            taxonomy.get(label.taxon_id)
        except KeyError as exc:
            raise DataError(
                f"{label_map.source}: label {label.id!r} names taxon {label.taxon_id!r}, "
                "which is not in the taxonomy (cites-vision taxa lists them)"
            ) from exc


def encode_labels(samples: Sequence[Sample], label_map: LabelMap) -> NDArray[np.int64]:
    """Label index for every sample."""
    return np.array([label_map.index_of(s.label) for s in samples], dtype=np.int64)


def class_weights(
    targets: NDArray[np.int64], num_classes: int, power: float = 1.0
) -> NDArray[np.float64]:
    """Inverse-frequency weights ``(n / (C * count)) ** power``; 0 for a class with no images.

    ``power`` 1 balances the classes fully; 0.5 (square root) tempers the weight of classes
    with a handful of images so that one of them does not dominate a mini-batch.
    """
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)
    present = int((counts > 0).sum())
    with np.errstate(divide="ignore"):
        ratio = np.where(counts > 0, counts.sum() / (present * counts.astype(np.float64)), 0.0)
    weights: NDArray[np.float64] = ratio**power
    return weights


# ---------------------------------------------------------------------------------------------
# Split


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class SplitFractions:
    """Share of groups for validation and test; the rest is training."""

    val: float = 0.15
    test: float = 0.15


def split_samples(
    samples: Sequence[Sample],
    fractions: SplitFractions = SplitFractions(),
    *,
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """Deterministic, grouped, stratified split into ``train``, ``val`` and ``test``.

    Images with the same :attr:`Sample.group` always land on one side. Within each dataset
    class (a group's most common class), groups are ordered by a hash of their key and the
    first ``round(val * n)`` go to validation, the next ``round(test * n)`` to test; a class
    with at least three groups gets at least one group in each. Nothing depends on file order
    or the machine.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    by_class: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        majority = Counter(m.label for m in members).most_common(1)[0][0]
        by_class[majority].append(key)
    side: dict[str, str] = {}
    for keys in by_class.values():
        keys.sort(key=lambda k: _unit_hash(k, seed))
        n = len(keys)
        n_val = round(fractions.val * n)
        n_test = round(fractions.test * n)
        if n >= 3:
            n_val, n_test = (
                max(n_val, 1 if fractions.val > 0 else 0),
                max(n_test, 1 if fractions.test > 0 else 0),
            )
        for i, key in enumerate(keys):
            side[key] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    result: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in samples:
        result[side[sample.group]].append(sample)
    return result


def subsample(samples: Sequence[Sample], limit: int, *, seed: int = 0) -> list[Sample]:
    """A deterministic sample of at most ``limit`` images, spread over the classes.

    Within each class, images are ordered by a hash of their path; classes then take turns, so
    a small limit still sees every class.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    queues = [
        sorted(members, key=lambda s: _unit_hash(str(s.path), seed))
        for _, members in sorted(by_class.items())
    ]
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return chosen


def summarise(samples: Sequence[Sample]) -> dict[str, object]:
    """Counts per source and class, for manifests and logs."""
    per_source: dict[str, Counter[str]] = defaultdict(Counter)
    for sample in samples:
        per_source[sample.source][sample.label] += 1
    return {
        "images": len(samples),
        "groups": len({s.group for s in samples}),
        "by_source": {src: dict(sorted(c.items())) for src, c in sorted(per_source.items())},
    }
