"""The permit cross-check without HTTP: field validation, the three permit-only checks, the
image comparison and the words in en/fr/es (model/permits.py, model/permit_texts.py)."""

from __future__ import annotations

from datetime import date

import pytest

from model.permit_texts import TEXTS, render
from model.permits import (
    DeclaredPermit,
    ImageEvidence,
    PermitDataError,
    assess_permit,
    combine,
    compare_image,
    find_declared_taxon,
    parse_permit,
)
from model.taxonomy import Taxonomy, default_taxonomy

TODAY = date(2026, 12, 2)


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return default_taxonomy()


def fields(**overrides: str | None) -> dict[str, str | None]:
    """A valid export permit for bigleaf mahogany from Peru, then ``overrides``."""
    base: dict[str, str | None] = {
        "permit_number": "26PE000123",
        "permit_type": "export",
        "issuing_country": "PE",
        "country_of_export": "pe",
        "country_of_import": "ES",
        "scientific_name": "Swietenia macrophylla",
        "appendix": "II",
        "source_code": "w",
        "purpose_code": "T",
        "description": "sawn wood",
        "quantity": "12.5",
        "unit": "MTQ",
        "valid_from": "2026-11-01",
        "valid_until": "2027-04-30",
    }
    base.update(overrides)
    return base


def permit(taxonomy: Taxonomy, **overrides: str | None) -> DeclaredPermit:
    return parse_permit(fields(**overrides), taxonomy)


def check(taxonomy: Taxonomy, name: str, **overrides: str | None) -> tuple[str, str]:
    """(outcome, code) of one permit-only check."""
    assessment = assess_permit(permit(taxonomy, **overrides), taxonomy, TODAY)
    finding = next(f for f in assessment.checks if f.check == name)
    return finding.outcome, finding.code


def test_valid_fields_are_normalised(taxonomy: Taxonomy) -> None:
    declared = permit(taxonomy)
    assert declared.country_of_export == "PE"
    assert declared.source_code == "W"
    assert declared.quantity == 12.5
    assert declared.origin == "PE"  # export permit: origin is the exporting country


def test_reexport_without_origin_leaves_origin_unknown(taxonomy: Taxonomy) -> None:
    assert permit(taxonomy, permit_type="re-export").origin is None
    assert permit(taxonomy, permit_type="re-export", country_of_origin="BR").origin == "BR"


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("purpose_code", "K", "unknown_code"),
        ("source_code", "Y", "unknown_code"),
        ("appendix", "IV", "unknown_code"),
        ("permit_type", "transit", "unknown_code"),
        ("country_of_import", "XX", "unknown_country"),
        ("valid_until", "30/04/2027", "bad_date"),
        ("quantity", "-3", "bad_quantity"),
        ("permit_number", "", "field_required"),
    ],
)
def test_bad_fields_are_refused_with_the_field_named(
    taxonomy: Taxonomy, name: str, value: str, code: str
) -> None:
    with pytest.raises(PermitDataError) as caught:
        permit(taxonomy, **{name: value})
    assert [(i.field, i.code) for i in caught.value.issues] == [(name, code)]


def test_every_issue_is_reported_at_once_in_each_language(taxonomy: Taxonomy) -> None:
    with pytest.raises(PermitDataError) as caught:
        permit(taxonomy, purpose_code="K", valid_from="2027-05-01")
    error = caught.value
    assert {i.field for i in error.issues} == {"purpose_code", "valid_from"}
    assert "unknown code 'K'" in error.message("en")
    assert "code inconnu 'K'" in error.message("fr")
    assert "código desconocido 'K'" in error.message("es")


def test_declared_names_are_found_with_spp_and_synonyms(taxonomy: Taxonomy) -> None:
    found = find_declared_taxon(taxonomy, "Manis spp.")
    assert found is not None and found.id == "manis"
    malayo = find_declared_taxon(taxonomy, "Malayopython reticulatus")
    assert malayo is not None and malayo.id == "python-reticulatus"
    assert find_declared_taxon(taxonomy, "Quercus robur") is None
    assert find_declared_taxon(taxonomy, "elephant") is None  # a common name is not declared


def test_appendix_matching_the_taxonomy_passes(taxonomy: Taxonomy) -> None:
    assert check(taxonomy, "appendix") == ("consistent", "appendix_matches")


def test_appendix_contradicting_the_origin_is_inconsistent(taxonomy: Taxonomy) -> None:
    # African elephant from Kenya is Appendix I; from South Africa Appendix II (population row)
    elephant = {"scientific_name": "Loxodonta africana", "appendix": "II", "purpose_code": "P"}
    assert check(taxonomy, "appendix", **elephant, country_of_export="KE") == (
        "inconsistent",
        "appendix_contradicts",
    )
    assert check(taxonomy, "appendix", **elephant, country_of_export="ZA")[0] == "consistent"


def test_split_listing_without_origin_is_inconclusive(taxonomy: Taxonomy) -> None:
    outcome = check(
        taxonomy,
        "appendix",
        permit_type="re-export",
        scientific_name="Loxodonta africana",
        appendix="II",
        purpose_code="P",
    )
    assert outcome == ("inconclusive", "appendix_needs_origin")


def test_unknown_declared_taxon_is_inconclusive(taxonomy: Taxonomy) -> None:
    assert check(taxonomy, "appendix", scientific_name="Quercus robur") == (
        "inconclusive",
        "taxon_unknown",
    )


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "expected"),
    [
        ("2026-01-01", "2026-06-30", ("inconsistent", "expired")),
        ("2027-01-01", "2027-06-30", ("inconsistent", "not_yet_valid")),
        ("2026-12-02", "2026-12-02", ("consistent", "valid")),
    ],
)
def test_validity_dates(
    taxonomy: Taxonomy, valid_from: str, valid_until: str, expected: tuple[str, str]
) -> None:
    assert check(taxonomy, "validity", valid_from=valid_from, valid_until=valid_until) == expected


def test_commercial_purpose_for_appendix_i(taxonomy: Taxonomy) -> None:
    tiger = {"scientific_name": "Panthera tigris", "appendix": "I", "country_of_export": "IN"}
    assert check(taxonomy, "purpose", **tiger, purpose_code="T", source_code="W") == (
        "inconsistent",
        "purpose_commercial_appendix_i",
    )
    assert check(taxonomy, "purpose", **tiger, purpose_code="T", source_code="D")[0] == (
        "consistent"
    )
    assert check(taxonomy, "purpose", **tiger, purpose_code="S", source_code="W")[0] == (
        "consistent"
    )
    assert check(taxonomy, "purpose", **tiger, purpose_code="T", source_code="O") == (
        "inconclusive",
        "purpose_pre_convention",
    )


def test_commercial_purpose_checks_the_taxonomy_appendix_not_only_the_declared_one(
    taxonomy: Taxonomy,
) -> None:
    # declared II, but elephant ivory from Kenya is Appendix I: T is refused as well
    outcome = check(
        taxonomy,
        "purpose",
        scientific_name="Loxodonta africana",
        appendix="II",
        country_of_export="KE",
    )
    assert outcome == ("inconsistent", "purpose_commercial_appendix_i")


def test_unverified_listing_is_flagged(taxonomy: Taxonomy) -> None:
    assessment = assess_permit(
        permit(taxonomy, scientific_name="Panthera tigris", appendix="I", purpose_code="S"),
        taxonomy,
        TODAY,
    )
    assert assessment.listing is not None and assessment.listing["verified"] is False
    assert any(f.code == "listing_unverified" for f in assessment.checks)


def evidence(taxon_id: str | None, p: float = 0.91, kind: str = "taxon") -> ImageEvidence:
    return ImageEvidence(kind=kind, taxon_id=taxon_id, name=taxon_id, probability=p)


def test_image_of_another_genus_names_the_stricter_species(taxonomy: Taxonomy) -> None:
    assessment = assess_permit(permit(taxonomy), taxonomy, TODAY)
    finding = compare_image(assessment, evidence("dalbergia"), taxonomy)
    assert finding.outcome == "inconsistent"
    assert finding.reason("en") == (
        "declared Swietenia macrophylla, Appendix II; the image suggests Dalbergia (0.91), "
        "Appendix II, which includes Appendix I D. nigra"
    )
    assert "Annexe I" in finding.reason("fr") and "Apéndice I" in finding.reason("es")


def test_image_of_the_declared_taxon_or_below_is_consistent(taxonomy: Taxonomy) -> None:
    assessment = assess_permit(
        permit(taxonomy, scientific_name="Manis spp.", appendix="I", purpose_code="L"),
        taxonomy,
        TODAY,
    )
    assert compare_image(assessment, evidence("manis-javanica"), taxonomy).outcome == ("consistent")
    assert compare_image(assessment, evidence("pangolin-scales"), taxonomy).outcome == (
        "consistent"
    )


def test_image_of_a_higher_taxon_is_consistent_but_says_the_species_is_unconfirmed(
    taxonomy: Taxonomy,
) -> None:
    assessment = assess_permit(
        permit(taxonomy, scientific_name="Dalbergia latifolia", country_of_export="IN"),
        taxonomy,
        TODAY,
    )
    finding = compare_image(assessment, evidence("dalbergia"), taxonomy)
    assert (finding.outcome, finding.code) == ("consistent", "image_matches_higher")
    assert "it also includes Appendix I D. nigra" in finding.reason("en")


def test_lookalike_and_uncertain_images(taxonomy: Taxonomy) -> None:
    assessment = assess_permit(permit(taxonomy), taxonomy, TODAY)
    lookalike = compare_image(assessment, evidence("sapele", kind="lookalike"), taxonomy)
    assert lookalike.outcome == "inconsistent"
    unsure = compare_image(assessment, evidence(None, 0.4, kind="uncertain"), taxonomy)
    assert (unsure.outcome, unsure.code) == ("inconclusive", "image_uncertain")


def test_combine() -> None:
    assert combine(["consistent", "inconclusive"]) == "inconclusive"
    assert combine(["consistent", "inconsistent", "inconclusive"]) == "inconsistent"
    assert combine(["consistent"]) == "consistent"
    assert combine([]) == "inconclusive"


def test_every_text_exists_in_three_languages_with_the_same_fields() -> None:
    import string

    for code, texts in TEXTS.items():
        assert set(texts) == {"en", "fr", "es"}, code
        names = [{f[1] for f in string.Formatter().parse(t) if f[1]} for t in texts.values()]
        assert names[0] == names[1] == names[2], code


def test_render_falls_back_to_english() -> None:
    assert render("field_required", {"field": "unit"}, "de") == "unit: this field is required"


def test_a_product_group_is_named_in_the_readers_language(taxonomy: Taxonomy) -> None:
    assessment = assess_permit(
        permit(
            taxonomy,
            scientific_name="Loxodonta africana",
            appendix="II",
            purpose_code="S",
            country_of_export="ZA",
        ),
        taxonomy,
        TODAY,
    )
    finding = compare_image(assessment, evidence("ivory-elephant-walrus", 0.95), taxonomy)
    assert finding.outcome == "consistent"
    group = taxonomy.get("ivory-elephant-walrus")
    assert group.common_names["fr"] in finding.reason("fr")
    assert group.common_names["es"] in finding.reason("es")
    assert finding.reason("en").endswith(
        "a higher taxon or product group that includes it: the image cannot confirm the "
        "species; it also includes Appendix I E. maximus"
    )


def test_an_uncertain_image_is_explained_in_the_readers_language(taxonomy: Taxonomy) -> None:
    assessment = assess_permit(permit(taxonomy), taxonomy, TODAY)
    unsure = ImageEvidence("outside_training_domain", None, None, 0.4, "score 1.33 > 1.26")
    finding = compare_image(assessment, unsure, taxonomy)
    assert "(score 1.33 > 1.26)" in finding.reason("en")
    assert "l'image ne ressemble pas aux images apprises par le modèle" in finding.reason("fr")
    assert "score" not in finding.reason("es")
