"""The retraining gate: is the candidate at least as good as the bundle it would replace?

Two paired comparisons (:func:`training.compare.compare_bundles`: both bundles on the same
images, the accuracy difference with a 95% bootstrap interval and McNemar's test):

(a) the base's fixed evaluation set: its own test split, re-derived from its recorded data and
    split rule, never trained on by either bundle;
(b) the held-out part of the new data: the new images' own grouped test share, set aside by
    ``retrain`` before training (images of a label the base lacks count for the candidate
    only: the base cannot name them).

The candidate is **not recommended** when it is worse on (a) beyond the interval (the upper end
of the 95% interval of ``candidate - base`` is below zero), or when it is worse on (b) beyond the
interval (it did not learn what officers taught it). ``--force --why`` records an override
(who, why, when); ``recommended`` then stays what the gate found, and activation proceeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.bundle import Bundle
from training.data import DataError, LabelMap, Sample

logger = logging.getLogger(__name__)


@dataclass
class GateOutcome:
    """What the gate decided and why; ``table`` is the Markdown comparison table."""

    recommended: bool
    reasons: list[str]
    comparisons: dict[str, Any]
    override: dict[str, Any] | None = None
    table: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def activate(self) -> bool:
        """True when the bundle may be activated: recommended, or overridden with a reason."""
        return self.recommended or self.override is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``metrics.gate``)."""
        return {
            "recommended": self.recommended,
            "reasons": list(self.reasons),
            "comparisons": self.comparisons,
            "override": self.override,
            "rule": (
                "not recommended when worse than the base beyond the 95% interval of the paired "
                "accuracy difference on (a) the base's test set or (b) the held-out new images"
            ),
        }


Gate = Callable[[Bundle, dict[str, list[Sample]]], GateOutcome]


def _compare(
    base: Bundle, candidate: Bundle, samples: Sequence[Sample], label_map: LabelMap | None
) -> dict[str, Any] | None:
    from training.compare import compare_bundles

    if not samples:
        return None
    try:
        return compare_bundles(base, candidate, samples, map_b=label_map)
    except DataError as exc:
        logger.warning("gate: %s", exc)
        return None


def _candidate_only(
    candidate: Bundle, samples: Sequence[Sample], label_map: LabelMap | None
) -> dict[str, Any] | None:
    from training.evaluation import bundle_label_map, evaluate_samples, mappable

    label_map = label_map or bundle_label_map(candidate)
    usable = [s for s in samples if mappable(s, label_map)]
    if not usable:
        return None
    report = evaluate_samples(candidate, usable, label_map).report
    return {
        "images": report["images"],
        "accuracy": report["accuracy"],
        "accuracy_ci95": report["accuracy_ci95"],
    }


def judge(
    base: Bundle,
    candidate: Bundle,
    base_eval: Sequence[Sample],
    new_holdout: Sequence[Sample],
    *,
    override: dict[str, Any] | None = None,
    name: str | None = None,
    label_map: LabelMap | None = None,
) -> GateOutcome:
    """Run both comparisons and decide (see the module docstring); ``name`` is the version the
    candidate will have and ``label_map`` its dataset class -> label table (the gate runs on
    the provisional bundle, whose manifest does not record them yet)."""
    comparisons: dict[str, Any] = {
        "a_base_test_set": _compare(base, candidate, base_eval, label_map),
        "b_new_holdout": _compare(base, candidate, new_holdout, label_map),
        "b_new_holdout_candidate": _candidate_only(candidate, new_holdout, label_map),
    }
    reasons: list[str] = []
    for key, what in (
        ("a_base_test_set", "the base's test set"),
        ("b_new_holdout", "the held-out new images"),
    ):
        result = comparisons[key]
        if result is None:
            continue
        low, high = result["difference_ci95"]
        if high < 0:
            reasons.append(
                f"worse than {base.version} on {what} beyond the 95% interval: accuracy "
                f"{result['b']['accuracy']:.4f} vs {result['a']['accuracy']:.4f} on "
                f"{result['images']} images (difference {result['difference']:+.4f}, 95% "
                f"{low:+.4f} to {high:+.4f}, McNemar p = {result['mcnemar']['p_value']:.3g})"
            )
    if comparisons["a_base_test_set"] is None:
        reasons.append("the base's test set could not be compared (no image both bundles know)")
    recommended = not reasons
    outcome = GateOutcome(recommended, reasons, comparisons, override)
    outcome.table = gate_table(base, name or candidate.version, outcome)
    if not recommended:
        logger.warning("gate: not recommended: %s", "; ".join(reasons))
        if override:
            logger.warning("gate overridden by %s: %s", override["by"], override["why"])
    else:
        logger.info("gate: recommended")
    return outcome


def gate_table(base: Bundle, candidate: str, outcome: GateOutcome) -> str:
    """The comparison as a Markdown page (``gate.md`` in the bundle); ``candidate`` is its
    version."""
    lines = [
        f"# Gate: {candidate} against {base.version}",
        "",
        "| set | images | base | candidate | difference (95% interval) | McNemar p |",
        "|---|---:|---:|---:|---|---:|",
    ]
    names = {"a_base_test_set": "(a) base's test set", "b_new_holdout": "(b) held-out new images"}
    for key, name in names.items():
        result = outcome.comparisons.get(key)
        if result is None:
            lines.append(f"| {name} | 0 | - | - | - | - |")
            continue
        low, high = result["difference_ci95"]
        lines.append(
            f"| {name} | {result['images']} | {result['a']['accuracy']:.4f} | "
            f"{result['b']['accuracy']:.4f} | {result['difference']:+.4f} ({low:+.4f} to "
            f"{high:+.4f}) | {result['mcnemar']['p_value']:.3g} |"
        )
    only = outcome.comparisons.get("b_new_holdout_candidate")
    if only:
        low, high = only["accuracy_ci95"]
        lines.append(
            f"| (b) all held-out new images, candidate only | {only['images']} | - | "
            f"{only['accuracy']:.4f} ({low:.4f} to {high:.4f}) | - | - |"
        )
    lines += ["", f"**Recommended: {'yes' if outcome.recommended else 'no'}**", ""]
    lines += [f"- {reason}" for reason in outcome.reasons]
    if outcome.override:
        o = outcome.override
        lines += ["", f"Gate overridden by {o['by']} at {o['at']}: {o['why']}"]
    return "\n".join(lines) + "\n"


def make_gate(
    base: Bundle,
    base_eval: Sequence[Sample],
    new_holdout: Sequence[Sample],
    version: str,
    label_map: LabelMap,
    *,
    override: dict[str, Any] | None = None,
) -> Gate:
    """The gate :func:`training.pipeline.run` calls on the provisional candidate (which will be
    ``version``, with ``label_map``): (a) on ``base_eval``, (b) on ``new_holdout``."""

    def gate(candidate: Bundle, _splits: dict[str, list[Sample]]) -> GateOutcome:
        return judge(
            base,
            candidate,
            base_eval,
            new_holdout,
            override=override,
            name=version,
            label_map=label_map,
        )

    return gate
