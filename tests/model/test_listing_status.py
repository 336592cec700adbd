"""Which taxonomy row an appendix answer rests on, and whether it is verified
(model/listing_status.py), as the CLI shows it."""

from __future__ import annotations

import contextlib
import io

import pytest

from model.cli import main
from model.listing_status import listing_status
from model.taxonomy import Taxonomy, default_taxonomy


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return default_taxonomy()


@pytest.mark.parametrize(
    ("taxon_id", "country", "row", "verified"),
    [
        (
            "loxodonta-africana",
            "ZA",
            "populations.tsv loxodonta-africana II (BW, NA, ZA, ZW)",
            True,
        ),
        ("loxodonta-africana", "KE", "taxa.tsv loxodonta-africana", True),
        ("dalbergia-nigra", None, "taxa.tsv dalbergia-nigra", None),
        ("dalbergia-latifolia", None, "taxa.tsv dalbergia-latifolia", False),  # inherits: R
    ],
)
def test_the_deciding_row_is_named(
    taxonomy: Taxonomy, taxon_id: str, country: str | None, row: str, verified: bool | None
) -> None:
    status = listing_status(taxonomy, taxonomy.appendix_for(taxon_id, country))
    assert status.row == row
    expected = taxonomy.get(taxon_id).verification != "R" if verified is None else verified
    assert status.verified is expected
    assert status.to_dict()["verification"] == status.verification


def test_a_group_is_as_verified_as_its_least_verified_member(taxonomy: Taxonomy) -> None:
    group = taxonomy.get("ivory-any")
    members = [listing_status(taxonomy, taxonomy.appendix_for(m)).verified for m in group.members]
    status = listing_status(taxonomy, taxonomy.appendix_for("ivory-any"))
    assert status.verified is all(members)


def test_the_cli_flags_an_unverified_appendix() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["taxa", "appendix", "dalbergia-latifolia"]) == 0
    assert "listing NOT VERIFIED (taxa.tsv dalbergia-latifolia is recalled" in out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["taxa", "appendix", "loxodonta-africana", "--country", "ZA"]) == 0
    assert "listing: verified (V, populations.tsv loxodonta-africana" in out.getvalue()
