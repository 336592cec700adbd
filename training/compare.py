"""Compare two bundles on the same images: accuracies and McNemar's paired test.

Each bundle maps the dataset classes with its own recorded label map; correctness is judged on
label ids, so bundles with different label sets can be compared on the images both can label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.bundle import Bundle
from training.data import DataError, LabelMap, Sample
from training.evaluation import bundle_label_map, evaluate_samples, mappable
from training.metrics import bootstrap_ci, mcnemar

logger = logging.getLogger(__name__)

SIGNIFICANCE = 0.05


def compare_bundles(
    a: Bundle,
    b: Bundle,
    samples: Sequence[Sample],
    *,
    precision: str = "auto",
    map_b: LabelMap | None = None,
) -> dict[str, Any]:
    """Evaluate ``a`` and ``b`` on ``samples`` and test the paired difference.

    ``map_b`` is B's dataset class -> label table when B does not record it yet (the
    provisional bundle a training run compares before writing its manifest).

    ``b_not_worse`` is True when B's accuracy is at least A's on the paired images (the rule
    ``train --base`` uses to decide ``recommended``); ``significant`` says whether McNemar's
    test rejects equal error rates at the 5% level.
    """
    map_a = bundle_label_map(a)
    map_b = map_b or bundle_label_map(b)
    usable = [s for s in samples if mappable(s, map_a) and mappable(s, map_b)]
    skipped = len(samples) - len(usable)
    if not usable:
        raise DataError("no image has a class that both bundles know; nothing to compare")
    if skipped:
        logger.warning("%d images have a class one of the bundles does not know; skipped", skipped)
    result_a = evaluate_samples(a, usable, map_a, precision=precision)
    result_b = evaluate_samples(b, usable, map_b, precision=precision)
    correct_a = result_a.correct
    correct_b = result_b.correct
    test = mcnemar(correct_a, correct_b)
    diff = correct_b.astype(np.float64) - correct_a.astype(np.float64)
    low, high = bootstrap_ci(lambda idx: float(diff[idx].mean()), len(diff))
    acc_a, acc_b = float(correct_a.mean()), float(correct_b.mean())
    return {
        "images": len(usable),
        "skipped_images": skipped,
        "a": {
            "version": a.version,
            "accuracy": round(acc_a, 4),
            "balanced_accuracy": result_a.report["balanced_accuracy"],
        },
        "b": {
            "version": b.version,
            "accuracy": round(acc_b, 4),
            "balanced_accuracy": result_b.report["balanced_accuracy"],
        },
        "difference": round(acc_b - acc_a, 4),
        "difference_ci95": [round(low, 4), round(high, 4)],
        "mcnemar": {
            "a_right_b_wrong": test.b,
            "b_right_a_wrong": test.c,
            "statistic": round(test.statistic, 4),
            "p_value": round(test.p_value, 6),
            "method": test.method,
        },
        "significant": test.p_value < SIGNIFICANCE,
        "b_not_worse": acc_b >= acc_a,
    }


def judge_against_base(
    base: Bundle,
    candidate: Bundle,
    samples: Sequence[Sample],
    candidate_map: LabelMap | None = None,
) -> tuple[bool, dict[str, Any]]:
    """Compare a new bundle with its base; it is recommended only when it is not worse.

    Returns ``(recommended, comparison)``; logs a warning when the candidate is worse.
    """
    comparison = compare_bundles(base, candidate, samples, map_b=candidate_map)
    recommended = bool(comparison["b_not_worse"])
    if not recommended:
        logger.warning(
            "the new bundle is worse than its base %s on %d images (accuracy %.4f vs %.4f, "
            "McNemar p = %.3g): not marked recommended",
            base.version,
            comparison["images"],
            comparison["b"]["accuracy"],
            comparison["a"]["accuracy"],
            comparison["mcnemar"]["p_value"],
        )
    return recommended, comparison
