"""Per-group figures for the CITES timbers by grouped cross-validation (issue 13, item 6).

``python -m training.timber_cv --data ../shared/data/met-ivory --data
../shared/data/wood-trade-groups --label-map training/label_maps/default.tsv --out runs/timber-cv``

A split leaves 1 to 4 photos of each listed timber group in test, too few to measure a recall.
Here every photo of the timber set is held out once: its cases (``Sample.group``, so a board's
variants or a shelf's burst stay together) are dealt into ``--folds`` folds; for each fold a
linear head is fitted (L-BFGS, the default build's class weights and weight decay) on the frozen
ImageNet backbone's pooled features of every other image, the ivory set included, and predicts
the held-out photos. From these out-of-fold probabilities it reports:

- each label's recall (top-1) with its 95% Wilson interval;
- each listed group's share answered "other timber, not CITES" (an all-clear) at the policy's
  other-timber threshold, and the whole trade-off curve: for each threshold, the share of listed
  timber given an all-clear against the share of common timber no longer answered.

This measures the **head-only recipe** (the backbone frozen), not the served bundle, which is
fine-tuned end to end and cannot be cross-validated in reasonable time on 2 cores. The
probabilities are not temperature-scaled, and no out-of-domain check applies (every photo is
timber). Writes ``timber-cv.json`` and ``timber-cv.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.predictor import softmax
from training import data as d
from training.open_set import share

logger = logging.getLogger(__name__)

WOOD_SOURCE = "wood-trade-groups"
OTHER_TIMBER = "other-timber"
HEAD_WEIGHT_DECAY = 1e-2
"""The weight decay the default build chose on validation (docs/model-card.md)."""
CLASS_WEIGHT_POWER = 0.5
CURVE_GRID: tuple[float, ...] = (
    *(round(0.5 + 0.05 * i, 3) for i in range(9)),
    *(round(0.95 + 0.005 * i, 3) for i in range(11)),
)
"""0.50 to 0.90 by 0.05, then 0.950 to 1.000 by 0.005."""


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold probabilities of the held-out (timber) images."""

    samples: list[d.Sample]
    targets: NDArray[np.int64]
    probs: NDArray[np.float64]
    label_ids: list[str]
    kinds: list[str]


def assign_folds(samples: Sequence[d.Sample], folds: int, seed: int = 0) -> NDArray[np.int64]:
    """A fold per image, the same for every image of one case; the cases of each label are
    dealt round-robin in a seeded order so that every fold gets its share of a small label."""
    rng = np.random.default_rng(seed)
    fold_of_group: dict[str, int] = {}
    by_label: dict[str, list[str]] = {}
    for sample in samples:
        groups = by_label.setdefault(sample.label, [])
        if sample.group not in groups:
            groups.append(sample.group)
    for label in sorted(by_label):
        groups = sorted(g for g in by_label[label] if g not in fold_of_group)
        start = int(rng.integers(folds))
        for i, group in enumerate(rng.permutation(groups)):
            fold_of_group[str(group)] = (start + i) % folds
    return np.array([fold_of_group[s.group] for s in samples], dtype=np.int64)


def out_of_fold(
    features: NDArray[np.float32],
    targets: NDArray[np.int64],
    held_out: NDArray[np.bool_],
    folds: NDArray[np.int64],
    num_classes: int,
) -> NDArray[np.float64]:
    """Probabilities of each ``held_out`` image from a head fitted without its fold (images not
    held out, e.g. the ivory set, are always in training)."""
    from training.train import fit_linear_head

    probs = np.zeros((int(held_out.sum()), num_classes))
    rows = np.flatnonzero(held_out)
    for fold in sorted(set(folds[held_out].tolist())):
        test = held_out & (folds == fold)
        train = ~test
        weights = d.class_weights(targets[train], num_classes, CLASS_WEIGHT_POWER)
        weight, bias = fit_linear_head(
            features[train],
            targets[train],
            num_classes,
            weight_decay=HEAD_WEIGHT_DECAY,
            class_weights=weights,
        )
        logits = features[test] @ weight.numpy().T + bias.numpy()
        probs[np.searchsorted(rows, np.flatnonzero(test))] = softmax(
            logits.astype(np.float64), 1.0, dtype=np.float64
        )
        logger.info("fold %d: %d held-out images", fold, int(test.sum()))
    return probs


def summarise(result: OutOfFold, policy_threshold: float) -> dict[str, Any]:
    """Recall per label, all-clears per listed group at ``policy_threshold``, and the curve."""
    predicted = result.probs.argmax(axis=1)
    other = result.label_ids.index(OTHER_TIMBER)
    listed = [i for i, kind in enumerate(result.kinds) if kind == "cites" and i in result.targets]
    by_label: dict[str, Any] = {}
    for index, label_id in enumerate(result.label_ids):
        rows = result.targets == index
        if not rows.any():
            continue
        entry = {"recall": share(predicted[rows] == index)}
        if index in listed:
            cleared = (predicted[rows] == other) & (result.probs[rows, other] >= policy_threshold)
            entry["all_clear"] = share(cleared)
        by_label[label_id] = entry
    listed_rows = np.isin(result.targets, listed)
    common_rows = result.targets == other
    curve = []
    for t in CURVE_GRID:
        answered = (predicted == other) & (result.probs[:, other] >= t)
        curve.append(
            {
                "threshold": t,
                "listed_all_clear": round(float(answered[listed_rows].mean()), 4),
                "common_unanswered": round(float((~answered[common_rows]).mean()), 4),
            }
        )
    recalls = [v["recall"]["rate"] for v in by_label.values()]
    at_policy = (predicted == other) & (result.probs[:, other] >= policy_threshold)
    return {
        "images": len(result.samples),
        "accuracy": share(predicted == result.targets),
        "balanced_accuracy": round(float(np.mean(recalls)), 4),
        "policy_threshold": policy_threshold,
        "listed_all_clear": share(at_policy[listed_rows]),
        "common_unanswered": share(~at_policy[common_rows]),
        "by_label": by_label,
        "curve": curve,
    }


def render(summary: dict[str, Any], folds: int) -> str:
    """The markdown report."""

    def fmt(rate: dict[str, Any]) -> str:
        low, high = rate["ci95"]
        return f"{rate['count']}/{rate['images']} = {rate['rate']:.3f} ({low:.3f}-{high:.3f})"

    lines = [
        f"# Timber by {folds}-fold grouped cross-validation (head-only recipe)",
        "",
        f"{summary['images']} timber photos, each held out once. Accuracy "
        f"{fmt(summary['accuracy'])}, balanced accuracy {summary['balanced_accuracy']:.3f}.",
        f"At the other-timber threshold {summary['policy_threshold']}: listed timber given an "
        f"all-clear {fmt(summary['listed_all_clear'])}; common timber not answered "
        f"{fmt(summary['common_unanswered'])}.",
        "",
        "| label | recall (top-1) | all-clear at the threshold |",
        "|---|---|---|",
    ]
    for label_id, entry in summary["by_label"].items():
        cleared = fmt(entry["all_clear"]) if "all_clear" in entry else "-"
        lines.append(f"| {label_id} | {fmt(entry['recall'])} | {cleared} |")
    lines += ["", "| threshold | listed timber all-clear | common timber unanswered |"]
    lines.append("|---|---|---|")
    for point in summary["curve"]:
        lines.append(
            f"| {point['threshold']} | {point['listed_all_clear']:.3f} | "
            f"{point['common_unanswered']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(
    data: Sequence[Path],
    label_map_path: Path,
    out: Path,
    *,
    folds: int,
    policy_threshold: float,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Load, extract the frozen features, cross-validate and write the reports."""
    from training.backbone import BACKBONE_PREPROCESS, create_model
    from training.features import DEFAULT_CACHE_DIR, extract_features

    label_map = d.read_label_map(label_map_path)
    samples = [s for s in d.load_datasets(data) if s.label in label_map.classes]
    targets = d.encode_labels(samples, label_map)
    held_out = np.array([s.source == WOOD_SOURCE for s in samples])
    if not held_out.any():
        raise d.DataError(f"no {WOOD_SOURCE} images among the --data folders")
    label_ids = [label.id for label in label_map.labels]
    if OTHER_TIMBER not in label_ids:
        raise d.DataError(f"the label map has no {OTHER_TIMBER!r} label")
    model = create_model(None, pretrained=True)
    features = extract_features(
        model,
        [s.path for s in samples],
        BACKBONE_PREPROCESS,
        cache_dir=cache_dir or DEFAULT_CACHE_DIR,
    )
    fold_of = np.zeros(len(samples), dtype=np.int64)
    timber = [s for s, h in zip(samples, held_out, strict=True) if h]
    fold_of[held_out] = assign_folds(timber, folds, seed)
    probs = out_of_fold(features, targets, held_out, fold_of, len(label_ids))
    result = OutOfFold(
        timber,
        targets[held_out],
        probs,
        label_ids,
        [label.kind for label in label_map.labels],
    )
    summary = summarise(result, policy_threshold)
    summary["folds"] = folds
    out.mkdir(parents=True, exist_ok=True)
    (out / "timber-cv.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "timber-cv.md").write_text(render(summary, folds), encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m training.timber_cv", description=__doc__)
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--label-map", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the other-timber threshold to report at (default: weights/default's)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache (default: the training one)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.folds < 2:
        sys.stderr.write("error: --folds must be at least 2\n")
        return 2
    from model.bundle import load_bundle
    from model.manifest import BundleError

    threshold = args.threshold
    try:
        if threshold is None:
            manifest = load_bundle(Path("weights/default")).manifest
            threshold = manifest.thresholds.lookalike_for(OTHER_TIMBER)
        summary = run(
            args.data,
            args.label_map,
            args.out,
            folds=args.folds,
            policy_threshold=float(threshold),
            cache_dir=args.cache_dir,
        )
    except (d.DataError, BundleError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    logger.info(
        "accuracy %s, listed all-clear %s", summary["accuracy"], summary["listed_all_clear"]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
