"""Multi-view fusion (model.fusion): several photos of one object, one answer; never an
all-clear when any used photo is outside the training domain."""

from __future__ import annotations

import numpy as np
import pytest

from model.decision import Decision, decide, scanner_image, unusable_image
from model.fusion import MAX_VIEWS, FusionError, ViewResult, fuse_views, fused_ood_score
from model.taxonomy import default_taxonomy
from tests.model.test_decision import LABELS, THRESHOLDS, probs

OOD_THRESHOLD = 10.0


def view(vector: np.ndarray, score: float | None = 1.0) -> ViewResult:
    """A view the checks let through, decided on its own."""
    decision = decide(
        vector,
        LABELS,
        default_taxonomy(),
        THRESHOLDS,
        ood_score=score,
        ood_threshold=OOD_THRESHOLD,
    )
    return ViewResult(vector, score, decision, refused=False)


def refused(decision: Decision) -> ViewResult:
    """A view the image checks refused."""
    return ViewResult(probs(ceramic=0.9), None, decision, refused=True)


def fuse(*views: ViewResult, how: str = "max"):  # type: ignore[no-untyped-def]
    return fuse_views(
        views,
        LABELS,
        default_taxonomy(),
        THRESHOLDS,
        ood_threshold=OOD_THRESHOLD,
        origin_country="KE",
        ood_fusion=how,
    )


def test_probabilities_are_averaged_and_agreeing_views_decide_the_taxon() -> None:
    fused = fuse(view(probs(elephant_ivory=0.9)), view(probs(elephant_ivory=0.7)))
    assert fused.probabilities[0] == pytest.approx(0.8)
    assert fused.decision.kind == "taxon" and fused.decision.label_id == "elephant-ivory"
    assert fused.decision.appendix == "I"
    assert fused.used == (0, 1) and fused.excluded == {}


def test_views_that_contradict_each_other_end_uncertain_not_confident() -> None:
    """Ivory on one side, ceramic on the other: neither answer, nor an all-clear."""
    ivory, ceramic = view(probs(elephant_ivory=0.95)), view(probs(ceramic=0.95))
    assert ivory.decision.kind == "taxon" and ceramic.decision.kind == "lookalike"
    fused = fuse(ivory, ceramic)
    assert fused.decision.kind == "uncertain"
    assert fused.decision.refer_to_expert


def test_one_view_outside_the_domain_takes_the_all_clear_away() -> None:
    """max: a look-alike on two photos is not an all-clear when a third looks unlike anything
    the model was taught."""
    lookalike = probs(ceramic=0.95)
    assert fuse(view(lookalike), view(lookalike)).decision.kind == "lookalike"
    fused = fuse(view(lookalike), view(lookalike), view(lookalike, score=25.0))
    assert fused.decision.kind == "outside_training_domain"
    assert fused.ood_score == 25.0
    mean = fuse(view(lookalike), view(lookalike), view(lookalike, score=25.0), how="mean")
    assert mean.ood_score == pytest.approx(9.0) and mean.decision.kind == "lookalike"


def test_refused_views_take_no_part_and_are_named() -> None:
    fused = fuse(
        refused(unusable_image(["too_dark"])),
        view(probs(elephant_ivory=0.9)),
        refused(scanner_image("dual-energy colour", ["camera"])),
    )
    assert fused.used == (1,)
    assert fused.excluded == {0: "unusable_image", 2: "outside_training_domain"}
    assert fused.decision.kind == "taxon"
    assert fused.to_dict()["views_excluded"] == {
        "0": "unusable_image",
        "2": "outside_training_domain",
    }


def test_when_every_view_is_refused_the_refusal_is_the_answer() -> None:
    blurred = refused(unusable_image(["blurred"]))
    assert fuse(blurred, blurred).decision.kind == "unusable_image"
    scanner = refused(scanner_image("dual-energy colour", ["camera"]))
    both = fuse(blurred, scanner)
    assert both.decision.kind == "outside_training_domain" and both.used == ()


def test_ood_fusion_without_scores_and_bad_inputs() -> None:
    assert fused_ood_score([1.0, None], "max") is None
    assert fused_ood_score([1.0, 3.0], "mean") == 2.0
    with pytest.raises(FusionError, match="OOD fusion"):
        fused_ood_score([1.0], "median")
    with pytest.raises(FusionError, match="at least one"):
        fuse()
    one = view(probs(elephant_ivory=0.9))
    with pytest.raises(FusionError, match=f"at most {MAX_VIEWS}"):
        fuse(*([one] * (MAX_VIEWS + 1)))
    with pytest.raises(FusionError, match="probabilities"):
        fuse(ViewResult(np.ones(2) / 2, 1.0, one.decision, refused=False))
