"""Issue 14's corrections to the taxonomy rows, each pinned to its source.

Sources: ../shared/reference/cites-product-taxa.md (corrections 8 and 9; Cedrela in the
candidate additions) and ../shared/reference/taxonomy-check-2026-12.md ([fedustria],
[EU2023/966], [cop18-p57])."""

from __future__ import annotations

import pytest

from model.bundle import load_bundle
from model.taxonomy import Appendix, Taxonomy, default_taxonomy
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return default_taxonomy()


def test_african_padauk_is_appendix_ii_with_annotation_17(taxonomy: Taxonomy) -> None:
    padauk = taxonomy.get("pterocarpus-soyauxii")
    assert padauk.kind == "taxon" and padauk.parent_id == "pterocarpus"
    assert "[fedustria]" in padauk.source and "23 Feb 2023" in padauk.annotation
    for origin in ("CM", "GA", "CD", None):
        resolution = taxonomy.appendix_for("pterocarpus-soyauxii", origin)
        assert resolution.appendix is Appendix.II, origin
    assert "#17" in taxonomy.appendix_for("pterocarpus-soyauxii", "CM").explanation
    listing = next(p for p in padauk.populations if p.appendix is Appendix.II)
    assert len(listing.countries) == 54 and "[fedustria]" in listing.source
    assert "african-padauk" not in taxonomy  # no longer a look-alike


def test_the_pterocarpus_row_no_longer_says_padauk_is_unlisted(taxonomy: Taxonomy) -> None:
    genus = taxonomy.get("pterocarpus")
    assert "P. soyauxii (African padauk) is not" not in genus.annotation
    assert "African populations of all Pterocarpus species are Appendix II" in genus.annotation
    assert "#17" in genus.annotation and "[fedustria]" in genus.source
    resolution = taxonomy.appendix_for("pterocarpus", "IN")  # red sanders country
    assert resolution.appendix is Appendix.II and resolution.confirm_species


def test_the_padauk_group_carries_its_caveat(taxonomy: Taxonomy) -> None:
    group = taxonomy.get("padauk-pterocarpus")
    assert group.kind == "group" and "pterocarpus-soyauxii" in group.members
    resolution = taxonomy.appendix_for("padauk-pterocarpus", None)
    assert resolution.appendix is Appendix.II and resolution.basis == "group"
    assert "must be confirmed" in resolution.rule
    assert taxonomy.appendix_for("padauk-pterocarpus", "MM").appendix is Appendix.II


def test_cedrela_is_cop18_in_force_2020_and_includes_chile_and_uruguay(
    taxonomy: Taxonomy,
) -> None:
    cedrela = taxonomy.get("cedrela")
    assert "CoP18" in cedrela.annotation and "28 Aug 2020" in cedrela.annotation
    assert "CoP19" not in cedrela.annotation and "[cop18-p57]" in cedrela.source
    for origin in ("CL", "UY", "KY", "BR"):
        assert taxonomy.appendix_for("cedrela", origin).appendix is Appendix.II, origin
    assert taxonomy.appendix_for("swietenia-macrophylla", "UY").appendix is Appendix.II


def test_palawan_saltwater_crocodiles_are_appendix_ii(taxonomy: Taxonomy) -> None:
    philippines = taxonomy.appendix_for("crocodylus-porosus", "PH")
    assert philippines.appendix is Appendix.II and philippines.basis == "population"
    assert "Palawan" in philippines.rule and "Appendix I" in philippines.rule
    row = next(p for p in taxonomy.get("crocodylus-porosus").populations if "PH" in p.countries)
    assert "[EU2023/966]" in row.source
    assert taxonomy.appendix_for("crocodylus-porosus", "VN").appendix is Appendix.I


@pytest.mark.parametrize("path", ["training/label_maps/default.tsv", "weights/default/labels.tsv"])
def test_the_default_label_map_answers_padauk_as_cites(path: str) -> None:
    rows = (REPO_ROOT / path).read_text(encoding="utf-8").splitlines()
    padauk = next(r.split("\t") for r in rows if "\tpadauk\t" in r or r.startswith("padauk\t"))
    assert padauk[-2:] == ["padauk-pterocarpus", "cites"]


def test_the_default_bundle_loads_with_the_new_label(taxonomy: Taxonomy) -> None:
    bundle = load_bundle(REPO_ROOT / "weights" / "default", taxonomy=taxonomy)
    padauk = next(label for label in bundle.labels if label.id == "padauk")
    assert (padauk.taxon_id, padauk.kind) == ("padauk-pterocarpus", "cites")
