"""Classification metrics computed from labels and probabilities (numpy only).

Every function takes integer class indices (``y_true``, ``y_pred``) or a probability matrix
``probs`` of shape ``[N, C]``; none of them imports torch, so the service side could reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def _as_int(values: NDArray[np.generic] | list[int]) -> IntArray:
    return np.asarray(values, dtype=np.int64)


def confusion_matrix(y_true: IntArray, y_pred: IntArray, num_classes: int) -> IntArray:
    """Counts ``[true, predicted]``: row ``i`` holds the images whose true class is ``i``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (_as_int(y_true), _as_int(y_pred)), 1)
    return matrix


def accuracy(y_true: IntArray, y_pred: IntArray) -> float:
    """Share of images whose predicted class is the true class (0.0 for no images)."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return 0.0
    return float(np.mean(y_true == y_pred))


def per_class_recall(matrix: IntArray) -> FloatArray:
    """Recall per class from a confusion matrix; NaN for classes with no true images."""
    support = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def balanced_accuracy(y_true: IntArray, y_pred: IntArray, num_classes: int) -> float:
    """Mean recall over the classes that occur in ``y_true``."""
    recall = per_class_recall(confusion_matrix(y_true, y_pred, num_classes))
    present = recall[~np.isnan(recall)]
    return float(present.mean()) if present.size else 0.0


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, with its support (true images)."""

    precision: float
    recall: float
    f1: float
    support: int


def per_class_scores(matrix: IntArray) -> list[ClassScores]:
    """Precision, recall and F1 per class; 0.0 where a ratio has no denominator."""
    scores = []
    for k in range(matrix.shape[0]):
        tp = float(matrix[k, k])
        predicted = float(matrix[:, k].sum())
        support = int(matrix[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScores(precision, recall, f1, support))
    return scores


def top_k_accuracy(y_true: IntArray, probs: FloatArray, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable ones."""
    y_true = _as_int(y_true)
    if y_true.size == 0:
        return 0.0
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins: mean confidence, accuracy and count per bin."""

    edges: FloatArray
    confidence: FloatArray
    accuracy: FloatArray
    counts: IntArray


def reliability(y_true: IntArray, probs: FloatArray, bins: int = 15) -> Reliability:
    """Bin the top-1 confidence into ``bins`` equal-width bins over (0, 1]."""
    y_true = _as_int(y_true)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; 0.0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        mean_acc = np.bincount(index, weights=correct, minlength=bins) / counts
    return Reliability(edges, mean_conf, mean_acc, counts)


def expected_calibration_error(y_true: IntArray, probs: FloatArray, bins: int = 15) -> float:
    """ECE: the count-weighted mean of |accuracy - confidence| over equal-width bins."""
    table = reliability(y_true, probs, bins)
    total = int(table.counts.sum())
    if total == 0:
        return 0.0
    used = table.counts > 0
    gaps = np.abs(table.accuracy[used] - table.confidence[used])
    return float(np.sum(gaps * table.counts[used]) / total)


def bootstrap_ci(
    statistic: Callable[[IntArray], float],
    n: int,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` items.

    ``statistic`` receives an array of resampled indices into the evaluation set and returns a
    number; the interval is the ``(1-level)/2`` and ``(1+level)/2`` percentiles.
    """
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    values = np.array(
        [statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=np.float64
    )
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return (float(low), float(high))


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired correctness of two classifiers over the same images.

    ``b``: images A got right and B wrong; ``c``: B right and A wrong. ``p_value`` is two-sided:
    exact binomial when ``b + c < 25``, else chi-squared with continuity correction.
    """

    b: int
    c: int
    statistic: float
    p_value: float
    method: str


def mcnemar(correct_a: NDArray[np.bool_], correct_b: NDArray[np.bool_]) -> McNemar:
    """Compare two classifiers' per-image correctness with McNemar's test."""
    a = np.asarray(correct_a, dtype=bool)
    b_arr = np.asarray(correct_b, dtype=bool)
    if a.shape != b_arr.shape:
        raise ValueError(f"paired results differ in length: {a.shape} vs {b_arr.shape}")
    b = int(np.sum(a & ~b_arr))
    c = int(np.sum(~a & b_arr))
    n = b + c
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "exact")
    if n < 25:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
        return McNemar(b, c, float(k), min(1.0, 2.0 * tail), "exact")
    statistic = (abs(b - c) - 1.0) ** 2 / n
    # Survival function of chi-squared with one degree of freedom.
    p_value = math.erfc(math.sqrt(statistic / 2.0))
    return McNemar(b, c, statistic, p_value, "chi2_cc")


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / total`` (95% for z = 1.96); (0, 1)
    when ``total`` is 0. Unlike the normal approximation it stays inside [0, 1] and is sound
    for rates near 0, such as refusal rates."""
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
