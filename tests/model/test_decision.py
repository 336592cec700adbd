"""Decision rules, each exercised with a hand-made probability vector over the real taxonomy."""

from __future__ import annotations

import numpy as np
import pytest

from model.decision import DecisionError, Thresholds, decide, rollup
from model.labels import Label
from model.taxonomy import InvalidCountryError, default_taxonomy

LABELS = (
    Label(0, "elephant-ivory", "African elephant ivory", "loxodonta-africana", "cites"),
    Label(1, "asian-ivory", "Asian elephant ivory", "elephas-maximus", "cites"),
    Label(2, "indian-rosewood", "Indian rosewood", "dalbergia-latifolia", "cites"),
    Label(3, "brazilian-rosewood", "Brazilian rosewood", "dalbergia-nigra", "cites"),
    Label(4, "ceramic", "Ceramic or porcelain", "ceramic-porcelain", "lookalike"),
    Label(5, "background", "Not a wildlife product", "", "not_wildlife"),
)
THRESHOLDS = Thresholds(taxon=0.7, lookalike=0.6)


def probs(**by_id: float) -> np.ndarray:
    """A probability vector over LABELS; the rest of the mass is spread over unnamed labels."""
    vector = np.zeros(len(LABELS))
    for label in LABELS:
        vector[label.index] = by_id.get(label.id.replace("-", "_"), 0.0)
    rest = [label.index for label in LABELS if label.id.replace("-", "_") not in by_id]
    vector[rest] = (1.0 - vector.sum()) / len(rest)
    return vector


def run(vector: np.ndarray, country: str | None = None, **kwargs: float):  # type: ignore[no-untyped-def]
    return decide(vector, LABELS, default_taxonomy(), THRESHOLDS, country, **kwargs)


def test_label_threshold_names_the_species_and_its_appendix_by_origin() -> None:
    vector = probs(elephant_ivory=0.9)
    from_kenya = run(vector, "KE")
    assert (from_kenya.kind, from_kenya.rule, from_kenya.rank) == (
        "taxon",
        "label_threshold",
        "species",
    )
    assert from_kenya.taxon_id == "loxodonta-africana"
    assert from_kenya.label_id == "elephant-ivory"
    assert from_kenya.appendix == "I"
    assert from_kenya.probability == pytest.approx(0.9)
    assert run(vector, "ZA").appendix == "II"  # split listing: South Africa's population
    unknown_origin = run(vector)
    assert unknown_origin.appendix == "I"  # strictest when the origin is not given
    assert "origin" in unknown_origin.reason


IN_DOMAIN = {"ood_score": 1.0, "ood_threshold": 3.0}


def test_lookalike_names_what_the_object_is_not_and_keeps_the_documents_check() -> None:
    decision = run(probs(ceramic=0.65, asian_ivory=0.2), **IN_DOMAIN)
    assert (decision.kind, decision.rule) == ("lookalike", "lookalike_threshold")
    assert decision.reason == (
        "not Asian elephant ivory: looks like Ceramic or porcelain (0.65); check the documents"
    )
    assert decision.appendix is None
    assert not decision.refer_to_expert


def test_not_wildlife_label_counts_as_lookalike() -> None:
    decision = run(probs(background=0.95), **IN_DOMAIN)
    assert decision.kind == "lookalike"
    assert decision.taxon_id is None


def test_no_lookalike_answer_without_an_ood_check() -> None:
    # A bundle without an OOD model cannot tell that the image is in its domain: no all-clear.
    decision = run(probs(ceramic=0.99))
    assert (decision.kind, decision.rule) == ("uncertain", "below_thresholds")
    assert decision.refer_to_expert


def test_lookalike_threshold_by_label_demands_stronger_evidence() -> None:
    strict = Thresholds(taxon=0.7, lookalike=0.6, lookalike_by_label={"ceramic": 0.9})
    vector = probs(ceramic=0.8)
    weak = decide(vector, LABELS, default_taxonomy(), strict, **IN_DOMAIN)
    assert weak.kind == "uncertain"
    strong = decide(probs(ceramic=0.95), LABELS, default_taxonomy(), strict, **IN_DOMAIN)
    assert strong.kind == "lookalike"
    # other look-alike labels keep the shared threshold
    other = decide(probs(background=0.65), LABELS, default_taxonomy(), strict, **IN_DOMAIN)
    assert other.kind == "lookalike"
    assert strict.lookalike_for("ceramic") == 0.9 and strict.lookalike_for("background") == 0.6
    assert Thresholds.from_dict(strict.to_dict()) == strict


@pytest.mark.parametrize(
    "bad",
    [
        {"taxon": 0.7, "lookalike": 0.6, "lookalike_by_label": {"ceramic": 1.5}},
        {"taxon": 0.7, "lookalike": 0.6, "lookalike_by_label": [0.9]},
        {"taxon": 0.7, "lookalike": 0.6, "extra": 0.9},
    ],
)
def test_bad_thresholds_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Thresholds.from_dict(bad)


def test_never_an_all_clear_outside_the_domain() -> None:
    """Whatever the probabilities: flagged by OOD, or not checked, never ``lookalike``."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        vector = rng.dirichlet(np.full(len(LABELS), 0.3))
        assert run(vector, ood_score=3.5, ood_threshold=3.0).kind == "outside_training_domain"
        assert run(vector).kind != "lookalike"
        checked = run(vector, **IN_DOMAIN)
        if checked.kind == "lookalike":
            assert checked.reason.endswith("check the documents")
            assert vector.max() >= THRESHOLDS.lookalike


def test_rollup_to_genus_when_two_species_share_it() -> None:
    decision = run(probs(indian_rosewood=0.45, brazilian_rosewood=0.35))
    assert (decision.kind, decision.rule) == ("taxon", "rollup:genus")
    assert decision.taxon_id == "dalbergia"
    assert decision.label_id is None
    assert decision.probability == pytest.approx(0.8)
    assert decision.appendix == "II"


def test_rollup_to_family_across_genera() -> None:
    decision = run(probs(elephant_ivory=0.4, asian_ivory=0.4))
    assert (decision.rule, decision.taxon_id) == ("rollup:family", "elephantidae")
    assert decision.appendix == "I"


def test_rollup_stops_below_class() -> None:
    # Elephant and rosewood only meet at the kingdom level: no useful taxon clears 0.7.
    decision = run(probs(elephant_ivory=0.4, indian_rosewood=0.4))
    assert (decision.kind, decision.rule) == ("uncertain", "below_thresholds")
    assert decision.refer_to_expert
    assert "refer to an expert" in decision.reason


def test_rollup_sums_include_every_lineage_level() -> None:
    sums = rollup(probs(indian_rosewood=0.45, brazilian_rosewood=0.35), LABELS, default_taxonomy())
    assert sums["dalbergia-latifolia"] == pytest.approx(0.45)
    assert sums["dalbergia"] == pytest.approx(0.8)
    assert "ceramic-porcelain" not in sums


def test_lookalike_below_its_threshold_does_not_decide() -> None:
    decision = run(probs(ceramic=0.5), **IN_DOMAIN)
    assert decision.kind == "uncertain"


def test_ood_beats_a_confident_label() -> None:
    vector = probs(elephant_ivory=0.99)
    decision = run(vector, "KE", ood_score=7.5, ood_threshold=3.0)
    assert (decision.kind, decision.rule) == ("outside_training_domain", "ood_mahalanobis")
    assert decision.taxon_id is None
    assert "7.50 > 3.00" in decision.reason
    assert run(vector, "KE", ood_score=2.0, ood_threshold=3.0).kind == "taxon"


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(DecisionError, match=r"shape \(6,\)"):
        decide(np.ones(3) / 3, LABELS, default_taxonomy(), THRESHOLDS)
    with pytest.raises(DecisionError, match="NaN"):
        decide(np.full(6, np.nan), LABELS, default_taxonomy(), THRESHOLDS)
    with pytest.raises(InvalidCountryError):
        run(probs(elephant_ivory=0.9), "XX")


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1, True, "0.5"])
def test_thresholds_validate(bad: object) -> None:
    with pytest.raises(ValueError, match="taxon"):
        Thresholds(taxon=bad, lookalike=0.5)  # type: ignore[arg-type]


def test_thresholds_round_trip_and_reject_unknown_keys() -> None:
    assert Thresholds.from_dict(THRESHOLDS.to_dict()) == THRESHOLDS
    with pytest.raises(ValueError, match="unknown"):
        Thresholds.from_dict({"taxon": 0.5, "lookalike": 0.5, "genus": 0.3})
    with pytest.raises(ValueError, match="missing"):
        Thresholds.from_dict({"taxon": 0.5})
