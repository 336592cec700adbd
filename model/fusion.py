"""Multi-view identification: several photos of one object fused into one answer.

An officer photographs one object from several sides (front, back, a close-up of the grain or
of the Schreger lines). Each photo is predicted on its own (:meth:`Predictor.predict_arrays`);
:func:`fuse_views` then makes one answer for the object:

1. Views the image checks refused (an unusable photo, a scanner image given to a camera model)
   take no part; the answer lists them with the reason. When every view was refused, the answer
   is the refusal itself (a scanner image before an unusable photo: outside the domain is the
   stronger statement).
2. The label probabilities of the remaining views are averaged: the mean of calibrated
   probabilities. Views that disagree lower the top probability, so a contradiction between
   photos ends as "uncertain" rather than as a confident answer.
3. The out-of-domain score of the object is the **largest** score among its views (``max``):
   if any photo of the object is unlike everything the model was taught, the object may be a
   product it was never taught, and the answer says so. ``mean`` is the alternative the
   benchmark compares (``bench/multiview.py``); why ``max`` is the default, with the figures of
   both: docs/model-card.md, "Multi-view identification".
4. :func:`model.decision.decide` decides from the fused probabilities and score with the
   bundle's thresholds, exactly as for one photo: no separate rule can give an all-clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from model.decision import Decision, Thresholds, decide
from model.labels import Label
from model.taxonomy import Taxonomy

MAX_VIEWS = 6
"""The most photos one identification may fuse."""

OodFusion = Literal["max", "mean"]
"""How the views' out-of-domain scores become the object's score."""

OOD_FUSIONS: tuple[str, ...] = get_args(OodFusion)

DEFAULT_OOD_FUSION: OodFusion = "max"


class FusionError(ValueError):
    """The views cannot be fused (none given, or views of different label sets)."""


@dataclass(frozen=True)
class ViewResult:
    """What fusion needs of one view's prediction (:class:`model.predictor.Prediction`)."""

    probabilities: np.ndarray[Any, np.dtype[np.floating[Any]]]
    ood_score: float | None
    decision: Decision
    refused: bool


@dataclass(frozen=True)
class FusedDecision:
    """The answer for the object.

    Attributes:
        probabilities: the mean calibrated probabilities of the used views, shape (C,); the
            first view's when every view was refused.
        ood_score: the fused out-of-domain score (None without an OOD model or used views).
        decision: the decision for the object.
        used: positions of the views that took part, in order.
        excluded: position -> the decision kind that left the view out (``unusable_image``,
            ``outside_training_domain`` for a scanner image in a camera model).
        ood_fusion: ``max`` or ``mean``.
    """

    probabilities: np.ndarray[Any, np.dtype[np.floating[Any]]]
    ood_score: float | None
    decision: Decision
    used: tuple[int, ...]
    excluded: dict[int, str]
    ood_fusion: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of how the answer was made (without the probability vector)."""
        return {
            "method": "mean of calibrated probabilities",
            "ood": self.ood_fusion,
            "views_used": list(self.used),
            "views_excluded": {str(k): v for k, v in sorted(self.excluded.items())},
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
        }


def fused_ood_score(scores: Sequence[float | None], how: str) -> float | None:
    """The object's out-of-domain score from its views' scores (None when any is None)."""
    if how not in OOD_FUSIONS:
        raise FusionError(f"OOD fusion must be one of {', '.join(OOD_FUSIONS)}, got {how!r}")
    if not scores or any(score is None for score in scores):
        return None
    values = [float(score) for score in scores if score is not None]
    return max(values) if how == "max" else float(np.mean(values))


def fuse_views(
    views: Sequence[ViewResult],
    labels: Sequence[Label],
    taxonomy: Taxonomy,
    thresholds: Thresholds,
    *,
    ood_threshold: float | None,
    origin_country: str | None = None,
    ood_fusion: str = DEFAULT_OOD_FUSION,
) -> FusedDecision:
    """One decision for one object photographed ``len(views)`` times (rules: module
    docstring). Raises :class:`FusionError` for no views, more than :data:`MAX_VIEWS`, or
    probability vectors that do not match ``labels``."""
    if not views:
        raise FusionError("fusion needs at least one view")
    if len(views) > MAX_VIEWS:
        raise FusionError(f"at most {MAX_VIEWS} views can be fused, got {len(views)}")
    for position, view in enumerate(views):
        if np.shape(view.probabilities) != (len(labels),):
            raise FusionError(
                f"view {position} has {np.shape(view.probabilities)} probabilities for "
                f"{len(labels)} labels"
            )
    if ood_fusion not in OOD_FUSIONS:
        raise FusionError(f"OOD fusion must be one of {', '.join(OOD_FUSIONS)}, got {ood_fusion!r}")
    used = tuple(i for i, view in enumerate(views) if not view.refused)
    excluded: dict[int, str] = {
        i: views[i].decision.kind for i in range(len(views)) if i not in used
    }
    if not used:
        refusals = [view.decision for view in views]
        chosen = next((d for d in refusals if d.kind == "outside_training_domain"), refusals[0])
        return FusedDecision(
            probabilities=np.asarray(views[0].probabilities, dtype=np.float64),
            ood_score=None,
            decision=chosen,
            used=(),
            excluded=excluded,
            ood_fusion=ood_fusion,
        )
    stacked = np.stack([np.asarray(views[i].probabilities, dtype=np.float64) for i in used])
    probabilities = stacked.mean(axis=0)
    score = fused_ood_score([views[i].ood_score for i in used], ood_fusion)
    decision = decide(
        probabilities,
        labels,
        taxonomy,
        thresholds,
        origin_country,
        ood_score=score,
        ood_threshold=ood_threshold,
    )
    return FusedDecision(
        probabilities=probabilities,
        ood_score=score,
        decision=decision,
        used=used,
        excluded=excluded,
        ood_fusion=ood_fusion,
    )
