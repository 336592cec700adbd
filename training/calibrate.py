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
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from model.predictor import softmax
from training.metrics import wilson_interval

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


ThresholdRule = Literal["calibrated", "empirical"]
"""How a decision threshold's precision on validation is estimated.

``calibrated`` (the default since 2026-12-03): the mean temperature-scaled confidence of the
accepted predictions (the precision a calibrated model expects), provided the 95% Wilson interval
of their observed precision still reaches the target. ``empirical``: the observed precision
alone, a step function of a few validation errors, which moved the chosen threshold far between
models of the same accuracy (docs/model-card.md, "Decision thresholds").
"""

THRESHOLD_GRID: tuple[float, ...] = tuple(round(float(x), 2) for x in np.arange(0.5, 1.0, 0.01))
SPREAD_RESAMPLES = 1000
MIN_GUARDED_IMAGES = 20
"""Fewer guarded validation images than this make a look-alike's all-clear share unmeasurable."""
WEAK_EVIDENCE_FLOOR = 0.98
"""The least threshold of a look-alike whose all-clears could not be measured: above where the
cross-validated timber curve stopped giving listed timber an all-clear, and above the highest
"other timber" probability a listed-timber validation photo reached with the shipped model,
with a margin for how far such probabilities moved between machines (docs/model-card.md,
"Tightened all-clear thresholds")."""


@dataclass(frozen=True)
class ThresholdChoice:
    """One decision threshold with what it achieved on validation.

    ``precision`` is the observed share of the accepted predictions that were right, with its
    95% Wilson interval ``precision_ci95``; ``expected_precision`` is their mean calibrated
    confidence; ``coverage`` is the share of this kind's predictions accepted. ``spread`` is how
    far the same rule's threshold and coverage move on bootstrap resamples of these validation
    images (:func:`threshold_spread`): what a second validation set of the same size could
    give. ``empirical_threshold`` and ``empirical_spread`` are the same for the ``empirical``
    rule, recorded beside the chosen rule for comparison.
    """

    threshold: float
    precision: float
    coverage: float
    images: int
    rule: str = "empirical"
    expected_precision: float = 0.0
    precision_ci95: tuple[float, float] = (0.0, 1.0)
    spread: Spread | None = None
    empirical_threshold: float = DEFAULT_THRESHOLD
    empirical_spread: Spread | None = None


def _meets_target(
    confidence: NDArray[np.float64],
    correct: NDArray[np.bool_],
    threshold: float,
    target_precision: float,
    rule: ThresholdRule,
) -> bool | None:
    """Whether the predictions accepted at ``threshold`` reach the target under ``rule``;
    ``None`` when the threshold accepts none."""
    accepted = confidence >= threshold
    count = int(accepted.sum())
    if count == 0:
        return None
    hits = int(correct[accepted].sum())
    if rule == "empirical":
        return hits / count >= target_precision
    if float(confidence[accepted].mean()) < target_precision:
        return False
    return wilson_interval(hits, count)[1] >= target_precision


def _rule_threshold(
    confidence: NDArray[np.float64],
    correct: NDArray[np.bool_],
    target_precision: float,
    rule: ThresholdRule,
    grid: Sequence[float],
) -> float:
    """The smallest grid threshold meeting the target under ``rule``; when none does, the one
    with the highest observed precision (ties: the lower threshold); 0.5 when none accepts any."""
    observed: list[tuple[float, float]] = []
    for threshold in grid:
        meets = _meets_target(confidence, correct, threshold, target_precision, rule)
        if meets:
            return float(threshold)
        if meets is not None:
            observed.append((float(correct[confidence >= threshold].mean()), -float(threshold)))
    return -max(observed)[1] if observed else DEFAULT_THRESHOLD


@dataclass(frozen=True)
class Spread:
    """5th and 95th percentiles over bootstrap resamples of the validation images: the threshold
    a rule chooses, and the share of predictions it accepts (what officers feel: the rest are
    referred as ``uncertain``)."""

    threshold: tuple[float, float]
    coverage: tuple[float, float]


def threshold_spread(
    confidence: NDArray[np.float64],
    correct: NDArray[np.bool_],
    *,
    target_precision: float,
    rule: ThresholdRule,
    grid: Sequence[float] = THRESHOLD_GRID,
    resamples: int = SPREAD_RESAMPLES,
    seed: int = 0,
) -> Spread:
    """How far the threshold ``rule`` chooses, and its coverage, move over ``resamples``
    bootstrap resamples of the images, each chosen as :func:`choose_threshold` would (the
    temperature held fixed)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.size == 0:
        return Spread((DEFAULT_THRESHOLD, DEFAULT_THRESHOLD), (0.0, 0.0))
    rng = np.random.default_rng(seed)
    thresholds = np.empty(resamples)
    coverage = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, confidence.size, confidence.size)
        thresholds[i] = _rule_threshold(confidence[idx], correct[idx], target_precision, rule, grid)
        coverage[i] = float(np.mean(confidence[idx] >= thresholds[i]))

    def percentiles(values: NDArray[np.float64]) -> tuple[float, float]:
        low, high = np.quantile(values, [0.05, 0.95])
        return (round(float(low), 4), round(float(high), 4))

    return Spread(percentiles(thresholds), percentiles(coverage))


def choose_threshold(
    confidence: NDArray[np.float64],
    correct: NDArray[np.bool_],
    *,
    target_precision: float = 0.95,
    rule: ThresholdRule = "calibrated",
    grid: Sequence[float] | None = None,
    spread: bool = False,
) -> ThresholdChoice:
    """Smallest threshold whose accepted predictions reach ``target_precision`` under ``rule``.

    ``confidence`` is the calibrated probability of the predicted class and ``correct`` whether
    that prediction was right, for the validation images predicted as one kind (taxon or
    look-alike). Predictions at or above the threshold are accepted; the rest become
    ``uncertain``. When no threshold on the grid reaches the target, the one with the highest
    observed precision is returned (ties: the lower threshold); with no images, 0.5. With
    ``spread`` the bootstrap spread of both rules is recorded (:func:`threshold_spread`).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = int(confidence.size)
    if n == 0:
        return ThresholdChoice(DEFAULT_THRESHOLD, 0.0, 0.0, 0, rule=rule)
    values = list(grid) if grid is not None else list(THRESHOLD_GRID)
    found = _rule_threshold(confidence, correct, target_precision, rule, values)
    accepted = confidence >= found
    count = int(accepted.sum())
    hits = int(correct[accepted].sum())
    spreads: dict[str, Spread] = {}
    if spread:
        for name in dict.fromkeys((rule, "empirical")):  # once each, once if they are the same
            spreads[name] = threshold_spread(
                confidence,
                correct,
                target_precision=target_precision,
                rule=name,
                grid=values,
            )
    return ThresholdChoice(
        threshold=float(found),
        precision=hits / count if count else 0.0,
        coverage=count / n,
        images=n,
        rule=rule,
        expected_precision=float(confidence[accepted].mean()) if count else 0.0,
        precision_ci95=wilson_interval(hits, count) if count else (0.0, 1.0),
        spread=spreads.get(rule),
        empirical_threshold=(
            float(found)
            if rule == "empirical"
            else _rule_threshold(confidence, correct, target_precision, "empirical", values)
        ),
        empirical_spread=spreads.get("empirical"),
    )


def choose_thresholds(
    probs: NDArray[np.floating[Any]],
    y_true: NDArray[np.int64],
    kinds: Sequence[str],
    *,
    target_precision: float = 0.95,
    rule: ThresholdRule = "calibrated",
    spread: bool = False,
) -> dict[str, ThresholdChoice]:
    """Thresholds for the roll-up: ``taxon`` (CITES labels) and ``lookalike`` labels.

    ``kinds[i]`` is the kind of label ``i`` (``cites``, ``lookalike``, ``not_wildlife``);
    ``not_wildlife`` predictions share the look-alike threshold. ``rule`` and ``spread``: see
    :func:`choose_threshold`.
    """
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    correct = predicted == np.asarray(y_true)
    is_cites = np.array([kinds[int(p)] == "cites" for p in predicted], dtype=bool)
    return {
        name: choose_threshold(
            confidence[rows],
            correct[rows],
            target_precision=target_precision,
            rule=rule,
            spread=spread,
        )
        for name, rows in (("taxon", is_cites), ("lookalike", ~is_cites))
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
    ``rule_threshold`` and ``floor``: set when too few guarded images made the rule's choice
    weak evidence and the threshold was raised to the floor;
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
    rule_threshold: float | None = None
    floor: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the manifest."""
        result: dict[str, object] = {
            "label_id": self.label_id,
            "threshold": self.threshold,
            "guarded": list(self.guarded),
            "guarded_images": self.guarded_images,
            "own_images": self.own_images,
            "all_clear": round(self.all_clear, 4),
            "own_unanswered": round(self.own_unanswered, 4),
            "curve": [[round(v, 4) for v in point] for point in self.curve],
        }
        if self.floor is not None:
            result["weak_evidence"] = {
                "floor": self.floor,
                "rule_threshold": self.rule_threshold,
            }
        return result


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
    min_guarded_images: int = MIN_GUARDED_IMAGES,
    weak_evidence_floor: float = WEAK_EVIDENCE_FLOOR,
) -> dict[str, AllClearChoice]:
    """Each look-alike label's threshold: the smallest ``t >= base`` at which at most
    ``max_all_clear`` of the validation images of its guarded CITES labels are answered
    "not CITES" with it (1.0 when no threshold on the grid does). The asymmetry of the decision
    policy: a false all-clear on a listed timber costs more than "uncertain" on a common one.

    With fewer than ``min_guarded_images`` guarded validation images that share cannot be
    measured (one image is already more than 5% of 19), so the threshold is at least
    ``weak_evidence_floor``: "not CITES" only with strong evidence.
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
        guarded_images = int(np.isin(y_true, guarded).sum())
        rule_threshold: float | None = None
        floor: float | None = None
        if guarded and guarded_images < min_guarded_images and chosen[0] < weak_evidence_floor:
            rule_threshold, floor = chosen[0], weak_evidence_floor
            chosen = next(pt for pt in curve if pt[0] >= weak_evidence_floor)
        choices[label_ids[label]] = AllClearChoice(
            label_id=label_ids[label],
            threshold=chosen[0],
            guarded=tuple(label_ids[c] for c in guarded),
            guarded_images=guarded_images,
            own_images=int((y_true == label).sum()),
            all_clear=chosen[1],
            own_unanswered=chosen[2],
            curve=tuple(curve),
            rule_threshold=rule_threshold,
            floor=floor,
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
