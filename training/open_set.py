"""Open-set evaluation: near-domain unknown products, software re-shoots and the open-set figures.

Three things an officer's safety depends on, measured on images the model was never taught:

- **Near-domain unknown products** (:data:`NEAR_DOMAIN_CLASSES`): ImageNet classes whose objects
  resemble wildlife products (leather and skin goods, fur and feathers, beads and jewellery,
  wooden and bone-like carvings, shells and coral). One photo per class in
  ``../shared/data/imagenet-sample``; split deterministically into ``val`` (used to choose the
  OOD method and thresholds) and ``test`` (reported only) by the sha256 of the class name.
- **Re-shoots** (:func:`reshoot`): held-out product photos re-taken in software as an officer
  would take them (a thin border of another scene, a slight tilt, other light and colour, slight
  blur, phone-like JPEG). They are *known* products: flagging them as unknown is a failure.
- **Open-set figures** (:func:`open_set_figures`): share of unknown products flagged, share of
  known products flagged, and the all-clear rate (share of unknown products answered
  ``lookalike``, i.e. "not CITES material"), each with a 95% Wilson interval.
- **By capture** (:func:`by_capture`): the same known-product figures for photos a phone's
  camera named (``20170923_163057.jpg``: the timber set's store photos) and for the others
  (catalogue, museum and stock photos), so that a model good on catalogue shots only shows it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from model.bundle import Bundle
from model.labels import Label
from model.taxonomy import Taxonomy
from training.data import DataError, LabelMap, Sample, camera_time
from training.evaluation import EvalResult
from training.metrics import wilson_interval
from training.photo_ops import lay_on

logger = logging.getLogger(__name__)

NEAR_DOMAIN_CLASSES: dict[str, tuple[str, ...]] = {
    "leather and skin goods": (
        "purse",
        "wallet",
        "mailbag",
        "backpack",
        "holster",
        "cowboy_boot",
        "Loafer",
        "clog",
        "sandal",
        "running_shoe",
        "buckle",
        "bolo_tie",
        "apron",
        "punching_bag",
        "rugby_ball",
        "baseball",
        "cowboy_hat",
        "mitten",
    ),
    "fur, feathers and hair": ("fur_coat", "feather_boa", "stole", "wig"),
    "beads, jewellery and small objects": (
        "necklace",
        "abacus",
        "hair_slide",
        "maraca",
        "letter_opener",
        "slide_rule",
        "candle",
    ),
    "wooden and carved objects": (
        "totem_pole",
        "mask",
        "chest",
        "medicine_chest",
        "pencil_box",
        "wooden_spoon",
        "ladle",
        "paddle",
        "drumstick",
        "spindle",
        "throne",
        "rocking_chair",
        "cradle",
        "chiffonier",
        "china_cabinet",
        "wardrobe",
        "desk",
        "dining_table",
        "bookcase",
        "altar",
        "barrel",
        "crate",
        "tray",
        "plate_rack",
        "bannister",
        "rule",
    ),
    "musical instruments of wood, skin or bamboo": (
        "acoustic_guitar",
        "violin",
        "cello",
        "banjo",
        "marimba",
        "drum",
        "panpipe",
        "chime",
    ),
    "shells and coral": ("conch", "brain_coral"),
}
"""ImageNet class names (as in ``imagenet-sample/labels.tsv``) resembling wildlife products,
by kind. Ceramics and porcelain are left out on purpose: they are a taught look-alike."""

NEAR_DOMAIN_SOURCE = "imagenet-near-domain"
OPEN_SET_SPLITS = ("val", "test")


def near_domain_names() -> list[str]:
    """Every class name of :data:`NEAR_DOMAIN_CLASSES`, in a fixed order."""
    return [name for names in NEAR_DOMAIN_CLASSES.values() for name in names]


def open_set_split(name: str) -> str:
    """``val`` or ``test`` for a class name: the parity of the first byte of its sha256."""
    return OPEN_SET_SPLITS[hashlib.sha256(name.encode("utf-8")).digest()[0] % 2]


def _imagenet_rows(imagenet_dir: Path) -> list[tuple[str, Path]]:
    table = Path(imagenet_dir) / "labels.tsv"
    if not table.is_file():
        raise DataError(f"{table}: not found (an imagenet-sample folder has labels.tsv)")
    rows: list[tuple[str, Path]] = []
    for line_number, line in enumerate(table.read_text(encoding="utf-8").splitlines()[1:], 2):
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{table}:{line_number}: expected 4 tab-separated columns")
        rows.append((parts[2], Path(imagenet_dir) / parts[3]))
    return rows


def near_domain_samples(imagenet_dir: Path) -> dict[str, list[Sample]]:
    """The near-domain unknown products of ``imagenet_dir``, split into ``val`` and ``test``.

    Raises :class:`DataError` when the folder lacks ``labels.tsv`` or a listed class.
    """
    wanted = set(near_domain_names())
    found = {name: path for name, path in _imagenet_rows(imagenet_dir) if name in wanted}
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{imagenet_dir}: near-domain classes missing: {', '.join(missing)}")
    split: dict[str, list[Sample]] = {name: [] for name in OPEN_SET_SPLITS}
    for name in near_domain_names():
        split[open_set_split(name)].append(
            Sample(found[name], name, source=NEAR_DOMAIN_SOURCE, case_id=name)
        )
    return split


def unrelated_samples(imagenet_dir: Path) -> list[Sample]:
    """The imagenet-sample photos that are not near-domain products (unrelated photos)."""
    wanted = set(near_domain_names())
    return [
        Sample(path, name, source="imagenet-unrelated", case_id=name)
        for name, path in _imagenet_rows(imagenet_dir)
        if name not in wanted
    ]


def _seed_for(path: Path, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{path.name}".encode()).digest()[:8], "big")


def reshoot(image: Image.Image, background: Image.Image, rng: random.Random) -> Image.Image:
    """One software re-shoot of a product photo, as an officer's phone might take it.

    The photo is tilted by up to 8 degrees, shrunk by 6-14% and laid on ``background`` (another
    scene shows as a thin border), then given other light (brightness 0.7-1.25, contrast
    0.75-1.2), a colour cast (per-channel gains 0.88-1.12), a slight blur (radius 0.4-1.2 px)
    and a phone-like JPEG (quality 35-70).
    """
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = 1.0 - rng.uniform(0.06, 0.14)
    canvas = ImageOps.fit(background.convert("RGB"), image.size)
    angle = rng.uniform(-8.0, 8.0)
    canvas = lay_on(
        image,
        canvas,
        scale=scale,
        angle=angle,
        place=lambda free_x, free_y: (rng.randint(0, free_x), rng.randint(0, free_y)),
    )
    shot = ImageEnhance.Brightness(canvas).enhance(rng.uniform(0.7, 1.25))
    shot = ImageEnhance.Contrast(shot).enhance(rng.uniform(0.75, 1.2))
    gains = [rng.uniform(0.88, 1.12) for _ in range(3)]
    channels = [
        band.point(lambda value, g=gain: min(255, round(value * g)))
        for band, gain in zip(shot.split(), gains, strict=True)
    ]
    shot = Image.merge("RGB", channels).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    buffer = io.BytesIO()
    shot.save(buffer, format="JPEG", quality=rng.randint(35, 70))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def write_reshoots(
    samples: Sequence[Sample], backgrounds: Sequence[Path], out_dir: Path, *, seed: int = 0
) -> list[Sample]:
    """Re-shoot every sample once onto one of ``backgrounds`` (chosen by the file's hash) and
    write the results as JPEG files under ``out_dir``; returns samples with the same labels.

    Deterministic: the same inputs and seed give the same files. Existing files are reused.
    """
    if not backgrounds:
        raise DataError("re-shoots need at least one background image")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: list[Sample] = []
    for sample in samples:
        key = _seed_for(sample.path, seed)
        target = out_dir / f"{key:016x}.jpg"
        if not target.is_file():
            rng = random.Random(key)
            with (
                Image.open(backgrounds[key % len(backgrounds)]) as background,
                Image.open(sample.path) as image,
            ):
                shot = reshoot(image, background, rng)
            shot.save(target, format="JPEG", quality=95)
        result.append(
            Sample(
                target, sample.label, sample.modality, f"{sample.source}-reshoot", sample.case_id
            )
        )
    return result


def share(flags: Iterable[bool]) -> dict[str, Any]:
    values = list(flags)
    n = len(values)
    hits = sum(1 for v in values if v)
    low, high = wilson_interval(hits, n)
    return {
        "rate": round(hits / n, 4) if n else None,
        "ci95": [round(low, 4), round(high, 4)],
        "count": hits,
        "images": n,
    }


FLAGGED_KINDS = frozenset({"outside_training_domain", "uncertain"})
"""Decision kinds that send the officer to an expert (what counts as "flagged")."""


def open_set_figures(known_kinds: Sequence[str], unknown_kinds: Sequence[str]) -> dict[str, Any]:
    """The three open-set figures from decision kinds of known and unknown product images.

    ``unknown_flagged``: unknown products answered ``outside_training_domain`` or ``uncertain``;
    ``known_flagged``: the same for known products; ``unknown_all_clear``: unknown products
    answered ``lookalike`` (a "not CITES" answer); ``unknown_called_cites``: answered ``taxon``.
    Each with its 95% Wilson interval.
    """
    return {
        "unknown_flagged": share(kind in FLAGGED_KINDS for kind in unknown_kinds),
        "unknown_all_clear": share(kind == "lookalike" for kind in unknown_kinds),
        "unknown_called_cites": share(kind == "taxon" for kind in unknown_kinds),
        "known_flagged": share(kind in FLAGGED_KINDS for kind in known_kinds),
    }


def decision_breakdown(
    y_true: Sequence[int],
    predicted: Sequence[int],
    kinds: Sequence[str],
    decision_labels: Sequence[str | None],
    labels: Sequence[Label],
    taxonomy: Taxonomy,
) -> dict[str, Any]:
    """Per CITES label: top-1 recall, and the shares answered with that label, answered a
    look-alike (a false all-clear) and sent to an expert; plus the same pooled over the listed
    timbers (CITES labels of kingdom Plantae). Each share with its 95% Wilson interval."""
    rows: dict[str, Any] = {}
    plants: list[int] = []
    for label in labels:
        if label.kind != "cites":
            continue
        idx = [i for i, y in enumerate(y_true) if y == label.index]
        if any(t.scientific_name == "Plantae" for t in taxonomy.lineage(label.taxon_id)):
            plants.extend(idx)
        rows[label.id] = _breakdown(idx, label.id, y_true, predicted, kinds, decision_labels)
    result: dict[str, Any] = {"by_label": rows}
    if plants:
        result["listed_timber"] = _breakdown(
            plants, None, y_true, predicted, kinds, decision_labels
        )
    return result


def _breakdown(
    idx: Sequence[int],
    label_id: str | None,
    y_true: Sequence[int],
    predicted: Sequence[int],
    kinds: Sequence[str],
    decision_labels: Sequence[str | None],
) -> dict[str, Any]:
    def named(i: int) -> bool:
        if label_id is None:
            return kinds[i] == "taxon" and predicted[i] == y_true[i]
        return kinds[i] == "taxon" and decision_labels[i] == label_id

    return {
        "images": len(idx),
        "recall": share(predicted[i] == y_true[i] for i in idx),
        "answered_right": share(named(i) for i in idx),
        "all_clear": share(kinds[i] == "lookalike" for i in idx),
        "referred": share(kinds[i] in FLAGGED_KINDS for i in idx),
    }


CAPTURES = ("phone", "catalogue")


def capture_of(path: Path) -> str:
    """``phone`` for a photo named as a phone camera names it (:func:`training.data.camera_time`:
    the timber set's photos of lumber in stores), else ``catalogue`` (wood-database and stock
    shots, the museum's studio photos)."""
    return "phone" if camera_time(path.name) else "catalogue"


def by_capture(
    samples: Sequence[Sample], result: EvalResult, mask: Sequence[bool] | None = None
) -> dict[str, Any]:
    """Per capture kind (:func:`capture_of`) of the known product photos ``samples`` (those
    where ``mask`` is true): accuracy, the share sent to an expert (``flagged``) and the share
    of CITES photos given an all-clear, each with its 95% Wilson interval; kinds without photos
    are left out."""
    keep = [True] * len(samples) if mask is None else list(mask)
    correct = result.correct
    out: dict[str, Any] = {}
    for capture in CAPTURES:
        idx = [
            i for i, sample in enumerate(samples) if keep[i] and capture_of(sample.path) == capture
        ]
        if not idx:
            continue
        cites = [i for i in idx if result.labels[int(result.y_true[i])].kind == "cites"]
        out[capture] = {
            "images": len(idx),
            "accuracy": share(bool(correct[i]) for i in idx),
            "flagged": share(result.decisions[i] in FLAGGED_KINDS for i in idx),
            "cites_images": len(cites),
            "all_clear_on_cites": share(result.decisions[i] == "lookalike" for i in cites)
            if cites
            else None,
        }
    return out


def evaluate_open_set(
    bundle: Bundle,
    known: dict[str, tuple[list[Sample], EvalResult]],
    imagenet_dir: Path | None,
    work: Path,
    label_map: LabelMap,
) -> dict[str, Any]:
    """Every open-set figure of a bundle, as its manifest records them.

    ``known`` maps ``validation``/``test`` to the product photos of that split and their
    evaluation. With an ``imagenet_dir`` (an imagenet-sample folder): the near-domain unknown
    products of the matching split (``val`` for validation, ``test`` for test), the unrelated
    photos, and software re-shoots of the split's product photos (backgrounds: the unrelated
    photos). Per CITES label, the decision breakdown (:func:`decision_breakdown`).
    """
    from model.taxonomy import default_taxonomy
    from training.evaluation import evaluate_samples, predict_paths

    taxonomy = default_taxonomy()
    report: dict[str, Any] = {"flagged_means": sorted(FLAGGED_KINDS)}
    near: dict[str, list[Sample]] = {}
    unrelated: list[Sample] = []
    if imagenet_dir is not None:
        try:
            near = near_domain_samples(imagenet_dir)
            unrelated = unrelated_samples(imagenet_dir)
        except DataError as exc:
            logger.warning("no near-domain unknown products: %s", exc)
    if near:
        report["near_domain_classes"] = {k: list(v) for k, v in NEAR_DOMAIN_CLASSES.items()}
    if unrelated:
        predicted = predict_paths(bundle, [s.path for s in unrelated], desc="unrelated photos")
        report["unrelated"] = {
            "flagged": share(k in FLAGGED_KINDS for k in predicted.decisions),
            "all_clear": share(k == "lookalike" for k in predicted.decisions),
        }
    for split, (samples, result) in known.items():
        entry: dict[str, Any] = {}
        predicted_idx = [int(i) for i in result.probs.argmax(axis=1)]
        entry["classes"] = decision_breakdown(
            [int(y) for y in result.y_true],
            predicted_idx,
            result.decisions,
            result.decision_labels,
            result.labels,
            taxonomy,
        )
        entry["by_capture"] = by_capture(samples, result)
        part = near.get("val" if split == "validation" else "test", [])
        if part:
            unknown = predict_paths(bundle, [s.path for s in part], desc=f"near-domain {split}")
            entry["open_set"] = open_set_figures(result.decisions, unknown.decisions)
            entry["open_set"]["unknown_classes"] = [s.label for s in part]
        if unrelated:
            shots = write_reshoots(
                samples, [s.path for s in unrelated], work / "reshoots" / split, seed=0
            )
            again = evaluate_samples(bundle, shots, label_map)
            clean_accuracy = float(result.report["accuracy"])
            shot_accuracy = float(again.report["accuracy"])
            entry["reshoots"] = {
                "images": len(shots),
                "accuracy": round(shot_accuracy, 4),
                "accuracy_ci95": again.report.get("accuracy_ci95"),
                "clean_accuracy": round(clean_accuracy, 4),
                "accuracy_drop_points": round(100 * (clean_accuracy - shot_accuracy), 2),
                "flagged": share(k in FLAGGED_KINDS for k in again.decisions),
                "clean_flagged": share(k in FLAGGED_KINDS for k in result.decisions),
                "all_clear_on_cites": share(
                    k == "lookalike"
                    for k, y in zip(again.decisions, again.y_true, strict=True)
                    if result.labels[int(y)].kind == "cites"
                ),
            }
        report[split] = entry
    return report
