"""How well sourced is the listing behind an appendix answer?

:meth:`model.taxonomy.Taxonomy.appendix_for` says which appendix applies and which row decided
(``source_id``, ``basis``). This module looks up that row's ``verification`` level so that every
place that shows an appendix can also say whether it rests on a cited source or only on recall
(``R``: recalled, not verified against a source). An appendix that is wrong is a legal error for
the officer, so an unverified one is flagged to the user (API field ``listing``, page badge).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from model.taxonomy import AppendixResolution, PopulationListing, Taxonomy

UNVERIFIED = "R"
"""The verification level of a row recalled but not checked against a source."""


@dataclass(frozen=True)
class ListingStatus:
    """The verification of the taxonomy row(s) an appendix answer rests on."""

    verification: str
    source: str
    status_checked: date | None
    row: str

    @property
    def verified(self) -> bool:
        """False when the deciding row is only recalled (``R``)."""
        return self.verification != UNVERIFIED

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the API's ``listing`` object)."""
        return {
            "verified": self.verified,
            "verification": self.verification,
            "source": self.source,
            "status_checked": self.status_checked.isoformat() if self.status_checked else None,
            "row": self.row,
        }


def listing_status(taxonomy: Taxonomy, resolution: AppendixResolution) -> ListingStatus:
    """The verification of the row that decided ``resolution``.

    For a product group the least verified member decides (one recalled member makes the
    group's worst-case appendix unverified).
    """
    if resolution.basis == "group":
        group = taxonomy.get(resolution.taxon_id)
        parts = [
            listing_status(taxonomy, taxonomy.appendix_for(m, resolution.country))
            for m in group.members
        ]
        unverified = [p for p in parts if not p.verified]
        return unverified[0] if unverified else parts[0]
    asked = taxonomy.get(resolution.taxon_id)
    if asked.id != resolution.source_id and asked.verification == UNVERIFIED:
        # "inherits its ancestor's listing" is itself only recalled for this taxon
        return ListingStatus(
            asked.verification, asked.source, asked.status_checked, f"taxa.tsv {asked.id}"
        )
    taxon = taxonomy.get(resolution.source_id)
    if resolution.basis == "population" and resolution.country is not None:
        row = _population_row(taxonomy, resolution)
        if row is not None:
            return ListingStatus(
                row.verification,
                row.source,
                row.status_checked,
                f"populations.tsv {taxon.id} {row.appendix.value} ({_countries(row.countries)})",
            )
    if resolution.origin_dependent:  # the strictest over origins: any recalled row counts
        for row in taxon.populations:
            if row.verification == UNVERIFIED:
                return ListingStatus(
                    row.verification,
                    row.source,
                    row.status_checked,
                    f"populations.tsv {taxon.id} {row.appendix.value} "
                    f"({_countries(row.countries)})",
                )
    return ListingStatus(
        taxon.verification, taxon.source, taxon.status_checked, f"taxa.tsv {taxon.id}"
    )


def _population_row(taxonomy: Taxonomy, resolution: AppendixResolution) -> PopulationListing | None:
    for node in taxonomy.lineage(resolution.source_id):
        for row in node.populations:
            if resolution.country in row.countries:
                return row
    return None


def _countries(codes: frozenset[str], limit: int = 6) -> str:
    ordered = sorted(codes)
    if len(ordered) <= limit:
        return ", ".join(ordered)
    return f"{', '.join(ordered[:limit])} and {len(ordered) - limit} more"
