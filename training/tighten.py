"""Tighten a bundle's all-clear thresholds on what its served model answers today, as a new
bundle version, with every decision figure measured again. No training, no new model files.

``python -m training.tighten --bundle weights/default --data ../shared/data/met-ivory --data
../shared/data/wood-trade-groups --ood-data ../shared/data/imagenet-sample --out DIR
--version VERSION``

Each look-alike label's threshold ("not ivory: looks like ceramic", "other timber, not CITES":
the nearest thing to an all-clear the model gives) is chosen again by the build's rule
(:func:`training.calibrate.choose_all_clear_thresholds`: at most ``--max-all-clear`` of the
guarded CITES validation images answered with it, and at least ``--all-clear-floor`` when fewer
than ``--all-clear-min-images`` such images exist), on the validation split the bundle recorded,
predicted by the served model through the core's predictor. A threshold is only ever raised:
the taxon, shared look-alike and out-of-domain thresholds, the temperature and the model files
stay as they are. The validation and test reports and the open-set figures of the manifest are
measured again with the new thresholds (``metrics.calibration.all_clear.tightened`` records the
change).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from model.bundle import Bundle, load_bundle, rewrite_bundle
from model.decision import Thresholds
from model.manifest import BundleError
from training import data as d
from training.calibrate import (
    MIN_GUARDED_IMAGES,
    WEAK_EVIDENCE_FLOOR,
    AllClearChoice,
    choose_all_clear_thresholds,
)
from training.evaluation import EvalResult, bundle_label_map, evaluate_samples
from training.open_set import evaluate_open_set
from training.seen_images import bundle_split

logger = logging.getLogger(__name__)

REPORT_SPLITS = (("validation", "val"), ("test", "test"))


def tightened_thresholds(
    current: Thresholds, choices: dict[str, AllClearChoice]
) -> tuple[Thresholds, dict[str, dict[str, float]]]:
    """``current`` with each look-alike label's threshold raised to its new choice where that is
    higher; returns the thresholds and ``{label: {"from": old, "to": new}}`` for those raised."""
    by_label = dict(current.lookalike_by_label)
    raised: dict[str, dict[str, float]] = {}
    for label_id, choice in choices.items():
        old = current.lookalike_for(label_id)
        if choice.threshold > old:
            by_label[label_id] = choice.threshold
            raised[label_id] = {"from": old, "to": choice.threshold}
    return Thresholds(current.taxon, current.lookalike, by_label), raised


def tighten_bundle(
    bundle: Bundle,
    samples: Sequence[d.Sample],
    *,
    imagenet_dir: Path | None,
    out: Path,
    version: str,
    max_all_clear: float = 0.05,
    min_guarded_images: int = MIN_GUARDED_IMAGES,
    floor: float = WEAK_EVIDENCE_FLOOR,
    command: str = "",
    overwrite: bool = False,
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Write ``out/version``: ``bundle`` with tightened all-clear thresholds and its decision
    figures measured again (see the module docstring). Returns its path and what was raised."""
    label_map = bundle_label_map(bundle)
    known = [s for s in samples if s.label in label_map.classes]
    splits = bundle_split(bundle, known, d.SplitFractions(), 0)
    if not splits["val"]:
        raise d.DataError("none of the given images is in the bundle's validation split")
    validation = evaluate_samples(bundle, splits["val"], label_map)
    choices = choose_all_clear_thresholds(
        validation.probs,
        validation.y_true,
        [label.kind for label in bundle.labels],
        [label.id for label in bundle.labels],
        bundle.manifest.thresholds.lookalike,
        max_all_clear=max_all_clear,
        min_guarded_images=min_guarded_images,
        weak_evidence_floor=floor,
    )
    thresholds, raised = tightened_thresholds(bundle.manifest.thresholds, choices)
    for label_id, change in raised.items():
        logger.info("%s: %.3f -> %.3f", label_id, change["from"], change["to"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        candidate = load_bundle(
            rewrite_bundle(bundle, work / "bundles", version, thresholds=thresholds, overwrite=True)
        )
        metrics = dict(bundle.manifest.metrics)
        evaluated: dict[str, tuple[list[d.Sample], EvalResult]] = {}
        reports: dict[str, Path] = {}
        for name, split in REPORT_SPLITS:
            if not splits[split]:
                continue
            result = evaluate_samples(candidate, splits[split], label_map)
            metrics[name] = result.report
            evaluated[name] = (splits[split], result)
            reports.update({p.name: p for p in result.write(work / "reports", name)})
        metrics["open_set"] = evaluate_open_set(candidate, evaluated, imagenet_dir, work, label_map)
        calibration = dict(metrics.get("calibration", {}))
        all_clear = dict(calibration.get("all_clear", {}))
        all_clear["tightened"] = {
            "raised": raised,
            "max_all_clear": max_all_clear,
            "min_guarded_images": min_guarded_images,
            "floor": floor,
            "labels": {k: v.to_dict() for k, v in choices.items()},
            "from_version": bundle.version,
        }
        calibration["all_clear"] = all_clear
        metrics["calibration"] = calibration
        provenance = {
            **bundle.manifest.provenance,
            "tightened_by": command,
            "parent_version": bundle.version,
        }
        path = rewrite_bundle(
            bundle,
            out,
            version,
            thresholds=thresholds,
            metrics=metrics,
            provenance=provenance,
            extra_files=reports,
            overwrite=overwrite,
        )
    return path, raised


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m training.tighten", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument(
        "--ood-data",
        type=Path,
        required=True,
        help="the imagenet-sample folder the bundle's open-set figures were measured on",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of bundles")
    parser.add_argument("--version", required=True)
    parser.add_argument("--max-all-clear", type=float, default=0.05)
    parser.add_argument("--all-clear-min-images", type=int, default=MIN_GUARDED_IMAGES)
    parser.add_argument("--all-clear-floor", type=float, default=WEAK_EVIDENCE_FLOOR)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.out / args.version).exists() and not args.overwrite:
        sys.stderr.write(
            f"error: {args.out / args.version} exists; choose another --version or pass "
            "--overwrite\n"
        )
        return 2
    try:
        bundle = load_bundle(args.bundle)
        path, raised = tighten_bundle(
            bundle,
            d.load_datasets(args.data, modality=bundle.manifest.modalities[0]),
            imagenet_dir=args.ood_data,
            out=args.out,
            version=args.version,
            max_all_clear=args.max_all_clear,
            min_guarded_images=args.all_clear_min_images,
            floor=args.all_clear_floor,
            command=shlex.join(["python", "-m", "training.tighten", *given]),
            overwrite=args.overwrite,
        )
    except (d.DataError, BundleError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    logger.info("wrote %s (raised: %s)", path, raised or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
