"""Calibration on the validation split: the softmax temperature and the decision thresholds.

Both are fitted on validation data only (never on the test split) and stored in the bundle
manifest: ``temperature`` divides the logits before the softmax; ``thresholds`` hold the
probability a taxon (``taxon``) or a look-alike (``lookalike``) must reach before the roll-up
reports it instead of ``uncertain``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.predictor import softmax

logger = logging.getLogger(__name__)

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
DEFAULT_THRESHOLD = 0.5


def negative_log_likelihood(
    logits: NDArray[np.float64], y_true: NDArray[np.int64], temperature: float
) -> float:
    """Mean negative log-likelihood of the true classes at ``temperature``."""
    probs = softmax(logits, temperature, dtype=np.float64)
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))


def fit_temperature(
    logits: NDArray[np.float64], y_true: NDArray[np.int64], *, iterations: int = 60
) -> float:
    """The temperature that minimises validation NLL (golden-section search over log T).

    The NLL of temperature scaling is unimodal in log T for practical purposes; the search is
    bounded to [0.05, 20]. Returns 1.0 when there are no images.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    if y_true.size == 0:
        return 1.0
    logits = np.asarray(logits, dtype=np.float64)
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa = negative_log_likelihood(logits, y_true, math.exp(a))
    fb = negative_log_likelihood(logits, y_true, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = negative_log_likelihood(logits, y_true, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = negative_log_likelihood(logits, y_true, math.exp(b))
    temperature = math.exp((low + high) / 2.0)
    logger.info(
        "temperature %.3f (validation NLL %.4f -> %.4f)",
        temperature,
        negative_log_likelihood(logits, y_true, 1.0),
        negative_log_likelihood(logits, y_true, temperature),
    )
    return temperature


@dataclass(frozen=True)
class ThresholdChoice:
    """One decision threshold with what it achieved on validation."""

    threshold: float
    precision: float
    coverage: float
    images: int


def choose_threshold(
    confidence: NDArray[np.float64],
    correct: NDArray[np.bool_],
    *,
    target_precision: float = 0.95,
    grid: Sequence[float] | None = None,
) -> ThresholdChoice:
    """Smallest threshold whose accepted predictions reach ``target_precision``.

    ``confidence`` is the calibrated probability of the predicted class and ``correct`` whether
    that prediction was right, for the validation images predicted as one kind (taxon or
    look-alike). Predictions at or above the threshold are accepted; the rest become
    ``uncertain``. When no threshold on the grid reaches the target, the one with the highest
    precision is returned (ties: the lower threshold); with no images, 0.5.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = int(confidence.size)
    if n == 0:
        return ThresholdChoice(DEFAULT_THRESHOLD, 0.0, 0.0, 0)
    values = list(grid) if grid is not None else [round(x, 2) for x in np.arange(0.5, 1.0, 0.01)]
    best: ThresholdChoice | None = None
    for threshold in values:
        accepted = confidence >= threshold
        count = int(accepted.sum())
        if count == 0:
            continue
        choice = ThresholdChoice(float(threshold), float(correct[accepted].mean()), count / n, n)
        if choice.precision >= target_precision:
            return choice
        if best is None or choice.precision > best.precision:
            best = choice
    return best if best is not None else ThresholdChoice(DEFAULT_THRESHOLD, 0.0, 0.0, n)


def choose_thresholds(
    probs: NDArray[np.floating[Any]],
    y_true: NDArray[np.int64],
    kinds: Sequence[str],
    *,
    target_precision: float = 0.95,
) -> dict[str, ThresholdChoice]:
    """Thresholds for the roll-up: ``taxon`` (CITES labels) and ``lookalike`` labels.

    ``kinds[i]`` is the kind of label ``i`` (``cites``, ``lookalike``, ``not_wildlife``);
    ``not_wildlife`` predictions share the look-alike threshold.
    """
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    correct = predicted == np.asarray(y_true)
    is_cites = np.array([kinds[int(p)] == "cites" for p in predicted], dtype=bool)
    return {
        "taxon": choose_threshold(
            confidence[is_cites], correct[is_cites], target_precision=target_precision
        ),
        "lookalike": choose_threshold(
            confidence[~is_cites], correct[~is_cites], target_precision=target_precision
        ),
    }


def choose_ood_threshold(validation_scores: NDArray[np.float64], flag_rate: float = 0.05) -> float:
    """The OOD score above which an image is flagged, so that at most ``flag_rate`` of the
    validation product images are flagged (their ``1 - flag_rate`` quantile, ``higher`` method).
    """
    scores = np.asarray(validation_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no validation scores to choose an OOD threshold from")
    return float(np.quantile(scores, 1.0 - flag_rate, method="higher"))


@dataclass(frozen=True)
class AllClearChoice:
    """A look-alike label's own threshold and the validation trade-off it was chosen from.

    ``guarded``: the CITES labels whose images this look-alike is most often mistaken for
    (each CITES label's images give it their highest mean look-alike probability);
    ``curve``: ``(threshold, share of guarded images answered this look-alike, share of the
    look-alike's own images no longer answered)`` on the validation grid.
    """

    label_id: str
    threshold: float
    guarded: tuple[str, ...]
    guarded_images: int
    own_images: int
    all_clear: float
    own_unanswered: float
    curve: tuple[tuple[float, float, float], ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the manifest."""
        return {
            "label_id": self.label_id,
            "threshold": self.threshold,
            "guarded": list(self.guarded),
            "guarded_images": self.guarded_images,
            "own_images": self.own_images,
            "all_clear": round(self.all_clear, 4),
            "own_unanswered": round(self.own_unanswered, 4),
            "curve": [[round(v, 4) for v in point] for point in self.curve],
        }


def all_clear_curve(
    probs: NDArray[np.floating[Any]],
    y_true: NDArray[np.int64],
    lookalike: int,
    guarded: Sequence[int],
    grid: Sequence[float],
) -> list[tuple[float, float, float]]:
    """``(t, all-clear share of guarded images, unanswered share of own images)`` for each t.

    An image is answered look-alike ``lookalike`` at threshold t when that label is its most
    probable one and its probability reaches t.
    """
    predicted = probs.argmax(axis=1)
    p = probs[:, lookalike]
    mask = np.isin(y_true, np.asarray(list(guarded), dtype=np.int64))
    own = y_true == lookalike
    points = []
    for t in grid:
        answered = (predicted == lookalike) & (p >= t)
        all_clear = float(answered[mask].mean()) if mask.any() else 0.0
        unanswered = float((~answered[own]).mean()) if own.any() else 0.0
        points.append((float(t), all_clear, unanswered))
    return points


def choose_all_clear_thresholds(
    probs: NDArray[np.floating[Any]],
    y_true: NDArray[np.int64],
    kinds: Sequence[str],
    label_ids: Sequence[str],
    base: float,
    *,
    max_all_clear: float = 0.05,
) -> dict[str, AllClearChoice]:
    """Each look-alike label's threshold: the smallest ``t >= base`` at which at most
    ``max_all_clear`` of the validation images of its guarded CITES labels are answered
    "not CITES" with it (1.0 when no threshold on the grid does). The asymmetry of the decision
    policy: a false all-clear on a listed timber costs more than "uncertain" on a common one.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    cites = [i for i, kind in enumerate(kinds) if kind == "cites"]
    lookalikes = [i for i, kind in enumerate(kinds) if kind != "cites"]
    partner: dict[int, list[int]] = {i: [] for i in lookalikes}
    for c in cites:
        rows = y_true == c
        if not rows.any() or not lookalikes:
            continue
        means = probs[rows][:, lookalikes].mean(axis=0)
        partner[lookalikes[int(np.argmax(means))]].append(c)
    grid = sorted({round(x, 3) for x in np.arange(base, 1.0, 0.005)} | {1.0})
    choices: dict[str, AllClearChoice] = {}
    for label in lookalikes:
        guarded = partner[label]
        curve = all_clear_curve(probs, y_true, label, guarded, grid)
        chosen = next((pt for pt in curve if pt[1] <= max_all_clear), curve[-1])
        choices[label_ids[label]] = AllClearChoice(
            label_id=label_ids[label],
            threshold=chosen[0],
            guarded=tuple(label_ids[c] for c in guarded),
            guarded_images=int(np.isin(y_true, guarded).sum()),
            own_images=int((y_true == label).sum()),
            all_clear=chosen[1],
            own_unanswered=chosen[2],
            curve=tuple(curve),
        )
        logger.info(
            "look-alike %s: threshold %.3f (guards %s: all-clear %.3f, own unanswered %.3f)",
            label_ids[label],
            chosen[0],
            ",".join(label_ids[c] for c in guarded) or "-",
            chosen[1],
            chosen[2],
        )
    return choices
