"""The decision: from calibrated label probabilities to one answer, with the rule that decided it.

Rules, in order (the first that applies wins):

0. Before the model: ``image_quality:<problems>`` -> ``unusable_image`` (the photo cannot be
   judged: retake it) and ``modality:<signature>`` -> ``outside_training_domain`` (a scanner
   image given to a camera-only model); see :mod:`model.checks`, :func:`unusable_image` and
   :func:`scanner_image`.
1. ``ood_mahalanobis`` (whatever the OOD method): the image's out-of-domain score exceeds the
   bundle's threshold -> ``outside_training_domain`` (the model has not seen anything like it;
   refer to an expert).
2. ``label_threshold``: the most probable label is a CITES label and its probability reaches the
   taxon threshold -> ``taxon`` (the label's taxon).
3. ``lookalike_threshold``: the image passed the out-of-domain check (the bundle has an OOD
   model and the score is within its threshold), the most probable label is a look-alike or
   "not wildlife" label and its probability reaches that label's look-alike threshold
   (``thresholds.lookalike_by_label`` when it names the label, e.g. a stricter one for "other
   timber", else ``thresholds.lookalike``) -> ``lookalike``. The reason names what the object
   is *not* (the most probable CITES label) and keeps the advice to check the documents
   ("not Ivory: looks like Ceramic or porcelain (0.97); check the documents"): never an
   unconditional all-clear. Without an OOD check (a bundle without ``ood.npz``) no look-alike
   answer is given; the image falls through to the rules below.
4. ``rollup:<rank>``: probabilities of CITES labels are summed up each label's lineage (species
   -> genus -> family -> order -> class); the most specific taxon whose sum reaches the taxon
   threshold -> ``taxon`` at that rank.
5. ``below_thresholds``: nothing reaches a threshold -> ``uncertain`` (refer to an expert).

The appendix of a ``taxon`` decision is the one that applies to the taxon for the origin country
(``Taxonomy.appendix_for``; without a country, the strictest of a split listing), or ``None``
when the taxon is not listed; the taxonomy's explanation ends the decision's ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from model.labels import Label
from model.taxonomy import Appendix, Taxonomy
from model.vocabulary import DecisionKind

ROLLUP_RANKS: tuple[str, ...] = ("subspecies", "species", "genus", "family", "order")
"""Ranks the roll-up may answer with, most specific first; it stops at ``class``."""
ROLLUP_LIMIT = "class"
"""The rank where the roll-up stops summing (never answered)."""
_ROLLUP_LIMIT = ROLLUP_LIMIT
_RANK_ORDER: dict[str, int] = {
    rank: position for position, rank in enumerate((*ROLLUP_RANKS, _ROLLUP_LIMIT))
}

REFER = "refer to an expert"
CHECK_DOCUMENTS = "check the documents"

DECISION_RULES: tuple[str, ...] = (
    "ood_mahalanobis",
    "label_threshold",
    "lookalike_threshold",
    "rollup",
    "below_thresholds",
)
"""The rules of :func:`decide`, in the order they are tried (see the module docstring). The
offline package names them so that a page that does not know a rule refuses to decide."""


class DecisionError(ValueError):
    """Inputs to :func:`decide` are inconsistent (e.g. probabilities and labels differ)."""


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"threshold {name!r} must be a number in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds on calibrated probabilities, each in (0, 1].

    ``lookalike_by_label`` overrides ``lookalike`` for named look-alike labels: "other timber,
    not CITES" needs stronger evidence than the shared look-alike threshold (a CITES timber
    answered "other timber" is a false all-clear).
    """

    taxon: float
    lookalike: float
    lookalike_by_label: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("taxon", "lookalike"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        if not isinstance(self.lookalike_by_label, dict):
            raise ValueError("lookalike_by_label must be an object of label id -> threshold")
        checked = {
            str(label_id): _probability(f"lookalike_by_label.{label_id}", value)
            for label_id, value in self.lookalike_by_label.items()
        }
        object.__setattr__(self, "lookalike_by_label", checked)

    def lookalike_for(self, label_id: str) -> float:
        """The look-alike threshold that applies to ``label_id``."""
        return self.lookalike_by_label.get(label_id, self.lookalike)

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as the manifest stores them."""
        result: dict[str, Any] = {"taxon": self.taxon, "lookalike": self.lookalike}
        if self.lookalike_by_label:
            result["lookalike_by_label"] = dict(sorted(self.lookalike_by_label.items()))
        return result

    @classmethod
    def from_dict(cls, data: Any) -> Thresholds:
        """Read ``{"taxon": p, "lookalike": p[, "lookalike_by_label": {id: p}]}``; raises
        ``ValueError`` naming the bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"thresholds must be an object, got {type(data).__name__}")
        unknown = set(data) - {"taxon", "lookalike", "lookalike_by_label"}
        if unknown:
            raise ValueError(f"unknown threshold keys {sorted(unknown)}")
        missing = {"taxon", "lookalike"} - set(data)
        if missing:
            raise ValueError(f"missing threshold keys {sorted(missing)}")
        return cls(
            taxon=data["taxon"],
            lookalike=data["lookalike"],
            lookalike_by_label=data.get("lookalike_by_label", {}),
        )


@dataclass(frozen=True)
class Decision:
    """One answer for one image.

    Attributes:
        kind: ``taxon``, ``lookalike``, ``uncertain``, ``outside_training_domain`` or
            ``unusable_image``.
        label_id: the deciding label (``label_threshold``/``lookalike_threshold``), else None.
        taxon_id: the taxon answered (for look-alikes the look-alike material), else None.
        probability: the probability that cleared the threshold (for ``uncertain`` and
            ``outside_training_domain``: the top label's probability; 0 when the image never
            reached the model's judgement: ``unusable_image`` and scanner images).
        rule: the rule that decided (see the module docstring).
        reason: one human-readable sentence.
        appendix: the CITES appendix for the origin country (``"I"``, ``"II"``, ``"III"``) or None.
        rank: the taxon's rank (``species``, ``genus``...) or None.
    """

    kind: DecisionKind
    label_id: str | None
    taxon_id: str | None
    probability: float
    rule: str
    reason: str
    appendix: str | None
    rank: str | None

    @property
    def refer_to_expert(self) -> bool:
        """True when the answer is to ask an expert rather than act on a suggestion."""
        return self.kind in ("uncertain", "outside_training_domain")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "kind": self.kind,
            "label_id": self.label_id,
            "taxon_id": self.taxon_id,
            "probability": self.probability,
            "rule": self.rule,
            "reason": self.reason,
            "appendix": self.appendix,
            "rank": self.rank,
            "refer_to_expert": self.refer_to_expert,
        }


def _appendix(
    taxonomy: Taxonomy, taxon_id: str, origin_country: str | None
) -> tuple[str | None, str]:
    """The appendix value (None when not listed) and the taxonomy's explanation."""
    resolution = taxonomy.appendix_for(taxon_id, origin_country)
    if resolution.appendix is Appendix.NOT_LISTED:
        return None, resolution.explanation
    return resolution.appendix.value, resolution.explanation


def _rank(taxonomy: Taxonomy, taxon_id: str) -> str:
    return str(taxonomy.get(taxon_id).rank)


def _taxon_decision(
    taxonomy: Taxonomy,
    taxon_id: str,
    probability: float,
    rule: str,
    origin_country: str | None,
    label_id: str | None,
) -> Decision:
    taxon = taxonomy.get(taxon_id)
    appendix, explanation = _appendix(taxonomy, taxon_id, origin_country)
    return Decision(
        kind="taxon",
        label_id=label_id,
        taxon_id=taxon_id,
        probability=probability,
        rule=rule,
        reason=(
            f"{taxon.scientific_name} ({taxon.rank}) with probability {probability:.2f}; "
            f"{explanation}"
        ),
        appendix=appendix,
        rank=str(taxon.rank),
    )


def rollup(
    probabilities: npt.NDArray[np.floating[Any]], labels: Sequence[Label], taxonomy: Taxonomy
) -> dict[str, float]:
    """Summed probability of every taxon on the lineage of a CITES label, up to ``class``."""
    sums: dict[str, float] = {}
    for label in labels:
        if label.kind != "cites":
            continue
        probability = float(probabilities[label.index])
        for taxon in taxonomy.lineage(label.taxon_id):
            sums[taxon.id] = sums.get(taxon.id, 0.0) + probability
            if str(taxon.rank) == _ROLLUP_LIMIT:
                break
    return sums


def _most_specific(sums: dict[str, float], taxonomy: Taxonomy, threshold: float) -> str | None:
    best: tuple[int, float, str] | None = None
    for taxon_id, total in sums.items():
        if total < threshold:
            continue
        rank = _rank(taxonomy, taxon_id)
        order = _RANK_ORDER.get(rank)
        if order is None or rank == _ROLLUP_LIMIT:
            continue
        key = (order, -total, taxon_id)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def lookalike_reason(
    probabilities: npt.NDArray[np.floating[Any]], labels: Sequence[Label], top: Label
) -> str:
    """What a look-alike answer says: what the object is not, what it looks like, and that the
    documents must still be checked ("not Ivory: looks like Ceramic or porcelain (0.97); ...").
    """
    cites = [label for label in labels if label.kind == "cites"]
    looks_like = f"looks like {top.name} ({float(probabilities[top.index]):.2f})"
    if not cites:
        return f"{looks_like}; not a CITES product this model knows: {CHECK_DOCUMENTS}"
    closest = max(cites, key=lambda label: float(probabilities[label.index]))
    return f"not {closest.name}: {looks_like}; {CHECK_DOCUMENTS}"


def decide(
    probabilities: npt.ArrayLike,
    labels: Sequence[Label],
    taxonomy: Taxonomy,
    thresholds: Thresholds,
    origin_country: str | None = None,
    ood_score: float | None = None,
    ood_threshold: float | None = None,
) -> Decision:
    """Decide one image from its calibrated label probabilities (C,) (rules: module docstring)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 1 or probs.shape[0] != len(labels):
        raise DecisionError(
            f"probabilities must have shape ({len(labels)},), got {tuple(probs.shape)}"
        )
    if not np.all(np.isfinite(probs)):
        raise DecisionError("probabilities contain NaN or infinite values")
    top = labels[int(np.argmax(probs))]
    top_p = float(probs[top.index])

    if ood_score is not None and ood_threshold is not None and ood_score > ood_threshold:
        shown = f"{ood_score:.2f}" if math.isfinite(ood_score) else str(ood_score)
        return Decision(
            kind="outside_training_domain",
            label_id=None,
            taxon_id=None,
            probability=top_p,
            rule="ood_mahalanobis",
            reason=(
                f"the image is unlike the images this model was trained on (score {shown} > "
                f"{ood_threshold:.2f}); its suggestion is not reliable: {REFER}"
            ),
            appendix=None,
            rank=None,
        )
    if top.kind == "cites" and top_p >= thresholds.taxon:
        return _taxon_decision(
            taxonomy, top.taxon_id, top_p, "label_threshold", origin_country, top.id
        )
    in_domain = ood_score is not None and ood_threshold is not None
    if in_domain and top.kind != "cites" and top_p >= thresholds.lookalike_for(top.id):
        return Decision(
            kind="lookalike",
            label_id=top.id,
            taxon_id=top.taxon_id or None,
            probability=top_p,
            rule="lookalike_threshold",
            reason=lookalike_reason(probs, labels, top),
            appendix=None,
            rank=None,
        )
    sums = rollup(probs, labels, taxonomy)
    chosen = _most_specific(sums, taxonomy, thresholds.taxon)
    if chosen is not None:
        rank = _rank(taxonomy, chosen)
        return _taxon_decision(
            taxonomy, chosen, sums[chosen], f"rollup:{rank}", origin_country, None
        )
    return Decision(
        kind="uncertain",
        label_id=None,
        taxon_id=None,
        probability=top_p,
        rule="below_thresholds",
        reason=(
            f"no label or taxon reaches the thresholds (most likely: {top.name}, "
            f"{top_p:.2f}); {REFER}"
        ),
        appendix=None,
        rank=None,
    )


def unusable_image(problems: Sequence[str]) -> Decision:
    """The decision for an image the quality gate refused (``problems``: see
    :mod:`model.quality`): no taxon, no look-alike; the officer retakes the photo."""
    listed = ", ".join(problems)
    return Decision(
        kind="unusable_image",
        label_id=None,
        taxon_id=None,
        probability=0.0,
        rule=f"image_quality:{'+'.join(problems)}",
        reason=(
            f"the photo cannot be judged ({listed}); retake the photo: closer, in focus, more light"
        ),
        appendix=None,
        rank=None,
    )


def scanner_image(signature: str, modalities: Sequence[str]) -> Decision:
    """The decision for a scanner image given to a model trained on ``modalities`` without
    x-ray: outside the training domain, no taxon, no look-alike."""
    return Decision(
        kind="outside_training_domain",
        label_id=None,
        taxon_id=None,
        probability=0.0,
        rule=f"modality:{signature}",
        reason=(
            f"the image looks like a scanner image ({signature}) but this model was trained on "
            f"{', '.join(modalities)} images only; {REFER}"
        ),
        appendix=None,
        rank=None,
    )
