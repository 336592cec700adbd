"""``cites-vision retrain``: continue a served bundle on officers' feedback, gated against it.

The plan (see docs/retraining.md):

1. read the new data: feedback archives (``.tar.gz`` from ``cites-vision feedback export``),
   their extracted folders, CSV manifests or ``<class>/<image>`` folders;
2. labels: the base bundle's labels are kept (in their order, so its output positions stay);
   a correction naming a taxon the base has no label for becomes a new label when it has at
   least ``min_new_label_images`` images, else it is left out and listed in the report;
3. replay: a class-balanced sample of the base's own *training* split (re-derived from the data
   and split rule recorded in its ``config.json``) joins the new images, so old classes are not
   forgotten; the base's validation and test images are never trained on;
4. training starts from the base's torch weights (``model.pt``) with its recipe (its
   ``config.json``; options given here override it);
5. the gate (:mod:`training.gate`) compares base and candidate on (a) the base's fixed test set
   and (b) the new images' own grouped test share, held out before training, and decides
   ``recommended``.
"""

from __future__ import annotations

import csv
import getpass
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.bundle import Bundle
from model.labels import Label, LabelKind
from training import data as d
from training.config import TrainConfig
from training.seen_images import bundle_split

logger = logging.getLogger(__name__)

TORCH_WEIGHTS_FILE = "model.pt"
"""The bundle file holding the trained torch weights (what ``retrain`` warm-starts from)."""

DEFAULT_MIN_NEW_LABEL_IMAGES = 20
DEFAULT_REPLAY_IMAGES = 400
FEEDBACK_MANIFEST = "manifest.csv"
CONFLICTS_FILE = "conflicts.csv"
RECIPE_KEYS = (
    "mode",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "class_weight_power",
    "val_fraction",
    "test_fraction",
    "augment",
    "views",
    "trained_stages",
    "modality",
    "backbone",
    "input_size",
    "crop",
    "int8",
    "int8_max_drop",
    "calibration_images",
    "ood_flag_rate",
    "ood_method",
    "ood_k",
    "ood_bank_phone",
    "target_precision",
    "threshold_rule",
    "all_clear_min_images",
    "all_clear_floor",
)
"""Options of the base's ``config.json`` that a retrain inherits (its recipe)."""


@dataclass(frozen=True)
class NewData:
    """The new images and what was set aside while reading them."""

    samples: list[d.Sample]
    conflicts: int = 0
    specs: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelPlan:
    """Labels of the retrained bundle and what happened to each new name."""

    label_map: d.LabelMap
    samples: list[d.Sample]
    added: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for the manifest (``training.retrain.labels``)."""
        return {
            "kept": [label.id for label in self.label_map.labels if label.id not in self.added],
            "added": dict(self.added),
            "left_out": dict(self.left_out),
        }


@dataclass(frozen=True)
class RetrainOptions:
    """What ``cites-vision retrain`` adds to the base's recipe."""

    out: str = "weights"
    version: str = ""
    min_new_label_images: int = DEFAULT_MIN_NEW_LABEL_IMAGES
    replay_images: int | None = None  # None: see replay_size
    replay_data: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    force_why: str | None = None


def read_new_data(specs: Sequence[Path], work: Path) -> NewData:
    """Samples of every ``--data``: a feedback ``.tar.gz`` (extracted under ``work``), a folder
    holding a feedback ``manifest.csv``, a CSV manifest or a ``<class>/<image>`` folder.

    Rows listed in a feedback ``conflicts.csv`` are never in its ``manifest.csv`` (the export
    keeps them out until a trainer resolves them); their count is reported.
    """
    samples: list[d.Sample] = []
    conflicts = 0
    for index, spec in enumerate(specs):
        spec = Path(spec)
        if spec.is_file() and spec.name.endswith((".tar.gz", ".tgz")):
            spec = _extract(spec, work / f"new-data-{index}")
        if spec.is_dir() and (spec / FEEDBACK_MANIFEST).is_file():
            conflicts += _count_rows(spec / CONFLICTS_FILE)
            spec = spec / FEEDBACK_MANIFEST
        samples.extend(d.load_dataset(spec))
    if conflicts:
        logger.warning(
            "%d images with disagreeing officers are left out until a trainer resolves them "
            "(cites-vision feedback conflicts)",
            conflicts,
        )
    return NewData(d.drop_duplicates(samples), conflicts, tuple(str(s) for s in specs))


def _count_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def _extract(archive: Path, target: Path) -> Path:
    """Extract a feedback archive safely (no absolute paths, links or devices)."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise d.DataError(f"{archive}: not a readable feedback archive ({exc})") from exc
    if not (target / FEEDBACK_MANIFEST).is_file():
        raise d.DataError(f"{archive}: no {FEEDBACK_MANIFEST} inside (not a feedback export?)")
    return target


def base_label_map(bundle: Bundle) -> d.LabelMap:
    """The base's dataset class -> label table; its label ids and their taxon ids map to
    themselves too (a feedback row names a label id, or a taxon id for a correction)."""
    from training.evaluation import bundle_label_map

    label_map = bundle_label_map(bundle)
    classes = dict(label_map.classes)
    taxon_owners = Counter(label.taxon_id for label in bundle.labels)
    for label in bundle.labels:
        if taxon_owners[label.taxon_id] == 1:
            classes.setdefault(label.taxon_id, label.id)
    return d.LabelMap(label_map.labels, classes, f"{bundle.version} (base)")


def plan_labels(base: d.LabelMap, new: Sequence[d.Sample], *, min_images: int) -> LabelPlan:
    """Keep the base's labels; add a label for each taxon of the taxonomy that the new data
    names with at least ``min_images`` images; leave out the rest (with the reason)."""
    from model.taxonomy import default_taxonomy

    taxonomy = default_taxonomy()
    unknown = Counter(s.label for s in new if s.label not in base.classes)
    labels = list(base.labels)
    classes = dict(base.classes)
    added: dict[str, int] = {}
    left_out: dict[str, dict[str, Any]] = {}
    for name, count in sorted(unknown.items()):
        if name not in taxonomy:
            left_out[name] = {
                "images": count,
                "reason": "not a label of the base nor a taxon of the taxonomy",
            }
        elif count < min_images:
            left_out[name] = {
                "images": count,
                "reason": f"fewer than {min_images} images for a new label",
            }
        else:
            taxon = taxonomy.get(name)
            kind: LabelKind = "cites" if taxon.cites else "lookalike"
            labels.append(Label(len(labels), name, taxon.name, name, kind))
            classes[name] = name
            added[name] = count
    for name, info in left_out.items():
        logger.warning("left out %d images labelled %r: %s", info["images"], name, info["reason"])
    for name, count in added.items():
        logger.info("new label %r from %d images", name, count)
    kept = [s for s in new if s.label in classes]
    return LabelPlan(d.LabelMap(tuple(labels), classes, "retrain"), kept, added, left_out)


def base_config(bundle: Bundle) -> TrainConfig:
    """The base's recorded recipe (its ``config.json``); an error names what is missing."""
    path = bundle.path / "config.json"
    if not path.is_file():
        raise d.DataError(
            f"{bundle.path} has no config.json: retrain needs the recipe the base was trained with"
        )
    try:
        return TrainConfig.load(path)
    except (OSError, ValueError, TypeError) as exc:
        raise d.DataError(f"{path}: cannot read the base's recipe ({exc})") from exc


def require_torch_weights(bundle: Bundle) -> Path:
    """The base's ``model.pt``; bundles written before retraining existed lack it."""
    path = bundle.path / TORCH_WEIGHTS_FILE
    if not path.is_file():
        raise d.DataError(
            f"{bundle.path} has no {TORCH_WEIGHTS_FILE} (torch weights): it was written before "
            "bundles carried them, so it cannot be continued. Rebuild it once with "
            f"`cites-vision train --config {bundle.path / 'config.json'} --overwrite` "
            "(the same recipe), then retrain from the rebuilt bundle."
        )
    return path


def resolve_base_data(bundle: Bundle, config: TrainConfig, given: Sequence[str]) -> list[Path]:
    """Where the base's training data is now: ``given`` (``--replay-data``), else the paths in
    its config, relative to the working folder or to the repository the bundle sits in."""
    if given:
        paths = [Path(p) for p in given]
    else:
        repo = bundle.path.resolve().parent.parent
        paths = []
        for item in config.data:
            candidate = Path(item)
            if not candidate.exists() and not candidate.is_absolute():
                candidate = repo / item
            paths.append(candidate)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise d.DataError(
            f"the base's training data is not here ({', '.join(missing)}); pass "
            "--replay-data DIR_OR_CSV with the same images (its test set is the gate's set a)"
        )
    return paths


def base_splits(
    bundle: Bundle, config: TrainConfig, given: Sequence[str]
) -> dict[str, list[d.Sample]]:
    """The base's train/val/test split: as recorded in its digest file, else re-derived from
    its data and split rule (:func:`training.seen_images.bundle_split`)."""
    samples = d.load_datasets(resolve_base_data(bundle, config, given), modality=config.modality)
    return bundle_split(
        bundle,
        samples,
        d.SplitFractions(config.val_fraction, config.test_fraction),
        config.seed,
    )


def write_label_map(label_map: d.LabelMap, path: Path) -> Path:
    """A label-map TSV that :func:`training.data.read_label_map` reads back (same order)."""
    by_id = {label.id: label for label in label_map.labels}
    rows = ["\t".join(d.LABEL_MAP_HEADER)]
    ordered = sorted(
        label_map.classes.items(), key=lambda item: (by_id[item[1]].index, item[0] != item[1])
    )
    seen: set[str] = set()
    for dataset_class, label_id in ordered:
        label = by_id[label_id]
        rows.append("\t".join((dataset_class, label.id, label.name, label.taxon_id, label.kind)))
        seen.add(label_id)
    for label in label_map.labels:  # a label no class maps to still keeps its position
        if label.id not in seen:
            rows.append("\t".join((label.id, label.id, label.name, label.taxon_id, label.kind)))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def replay_size(requested: int | None, mode: str, base_train_images: int) -> int:
    """Images replayed from the base's training split: ``requested``, else all of them in
    ``head`` mode (their features are cached, so replaying everything costs almost nothing and
    the refitted head keeps what the base knew) and :data:`DEFAULT_REPLAY_IMAGES` in the
    fine-tuning modes (every replayed image is trained on each epoch)."""
    if requested is not None:
        return requested
    return base_train_images if mode == "head" else DEFAULT_REPLAY_IMAGES


def retrain(base_path: Path, data: Sequence[Path], options: RetrainOptions) -> Path:
    """Warm-start from ``base_path`` on ``data`` plus replayed base images; gate; write a bundle.

    Returns the new bundle's folder. Raises :class:`training.data.DataError` (or
    :class:`model.bundle.BundleError`) with a message for the trainer.
    """
    from model.bundle import load_bundle
    from training.gate import make_gate
    from training.pipeline import run

    base = load_bundle(base_path)
    require_torch_weights(base)
    recipe = base_config(base)
    version = options.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work = Path(options.out).parent / "runs" / f"retrain-{version}"
    work.mkdir(parents=True, exist_ok=True)

    new = read_new_data(data, work)
    plan = plan_labels(base_label_map(base), new.samples, min_images=options.min_new_label_images)
    if not plan.samples:
        raise d.DataError("no new image has a usable label; nothing to retrain on")
    splits = base_splits(base, recipe, options.replay_data)
    mode = options.overrides.get("mode") or recipe.mode
    replay_limit = replay_size(options.replay_images, mode, len(splits["train"]))
    replay = d.subsample(splits["train"], replay_limit, seed=recipe.seed)
    new_paths = {s.path.resolve() for s in plan.samples}
    replay = [s for s in replay if s.path.resolve() not in new_paths]
    # The gate's set (b): the new images' own grouped test share, held out before training.
    new_parts = d.split_samples(
        plan.samples, d.SplitFractions(recipe.val_fraction, recipe.test_fraction), seed=recipe.seed
    )
    holdout = new_parts["test"]
    logger.info(
        "retrain %s: %d new images (%d held out for the gate), %d replayed from the base's "
        "training split, gate set a: %d",
        base.version,
        len(plan.samples),
        len(holdout),
        len(replay),
        len(splits["test"]),
    )
    manifest = d.write_manifest(
        [*new_parts["train"], *new_parts["val"], *replay], work / "data.csv"
    )
    label_map_file = write_label_map(plan.label_map, work / "labels.tsv")

    values: dict[str, Any] = {key: getattr(recipe, key) for key in RECIPE_KEYS}
    values.update(
        data=(str(manifest),),
        label_map=str(label_map_file),
        out=options.out,
        version=version,
        base=str(base_path),
        init_from=str(base_path),
        limitations=recipe.limitations,
        ood_data=recipe.ood_data if recipe.ood_data and Path(recipe.ood_data).exists() else None,
        cache_dir=recipe.cache_dir,
        work_dir=str(work / "train"),
    )
    values.update({k: v for k, v in options.overrides.items() if v is not None})
    config = replace(recipe, **values)

    override = None
    if options.force_why:
        override = {
            "by": getpass.getuser(),
            "why": options.force_why,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    candidate_map = d.read_label_map(label_map_file)  # the table the pipeline trains with
    gate = make_gate(base, splits["test"], holdout, version, candidate_map, override=override)
    retrain_info = {
        "base": base.version,
        "new_data": list(new.specs),
        "new_images": len(plan.samples),
        "new_images_held_out": len(holdout),
        "conflicts_left_out": new.conflicts,
        "replayed_images": len(replay),
        "replay_rule": (
            f"class-balanced sample of at most {replay_limit} images of the base's "
            "training split (as recorded in its seen-images.tsv, else re-derived from its "
            "config.json)"
        ),
        "labels": plan.to_dict(),
    }
    path = run(config, command=_command(base_path, data, options), gate=gate, extra=retrain_info)
    _cleanup(work)
    return path


def _command(base: Path, data: Sequence[Path], options: RetrainOptions) -> str:
    import shlex

    words = ["cites-vision", "retrain", "--base", str(base)]
    for item in data:
        words += ["--data", str(item)]
    if options.version:
        words += ["--version", options.version]
    for key, value in sorted(options.overrides.items()):
        if value is not None:
            words += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(words)


def _cleanup(work: Path) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)


def read_report(bundle: Bundle) -> dict[str, Any]:
    """The retrain summary and gate of a bundle (``{}`` for a bundle that was not retrained)."""
    training = bundle.manifest.training
    return {
        "retrain": training.get("retrain", {}),
        "gate": bundle.manifest.metrics.get("gate", {}),
        "recommended": bundle.manifest.recommended,
    }


def report_json(bundle: Bundle) -> str:
    """:func:`read_report` as indented JSON."""
    return json.dumps(read_report(bundle), indent=2, sort_keys=True)
