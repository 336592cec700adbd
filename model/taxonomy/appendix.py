"""The appendix rules: which CITES appendix applies to a taxon from an origin country, and why.

A population row naming the country wins; else the taxon's own appendix; else the nearest
listed ancestor's. Look-alike materials are not listed; a product group reports the strictest
appendix among its members; a higher taxon that is not listed itself reports the strictest
appendix found below it. :class:`AppendixRules` answers for one :class:`TaxonTree` and remembers
each (taxon, country) answer, since the taxonomy never changes after loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from model.taxonomy.types import (
    Appendix,
    AppendixResolution,
    Basis,
    Taxon,
    strictest,
)


class TaxonTree(Protocol):
    """The look-ups the appendix rules need (implemented by :class:`~model.taxonomy.Taxonomy`)."""

    @property
    def countries(self) -> Mapping[str, str]: ...

    def get(self, taxon_id: str) -> Taxon: ...

    def lineage(self, taxon_id: str) -> list[Taxon]: ...

    def descendants(self, taxon_id: str) -> list[Taxon]: ...


class AppendixRules:
    """Resolve appendices over one taxon tree; answers are cached per (taxon id, country)."""

    def __init__(self, tree: TaxonTree) -> None:
        self._tree = tree
        # (taxon id, country code) -> resolution; the service resolves the same few labels for
        # every answer.
        self._cache: dict[tuple[str, str | None], AppendixResolution] = {}

    def resolve(self, taxon_id: str, code: str | None) -> AppendixResolution:
        """The appendix for ``taxon_id`` from the (already normalised) country ``code``."""
        cached = self._cache.get((taxon_id, code))
        if cached is None:
            cached = self._resolve(self._tree.get(taxon_id), code)
            self._cache[(taxon_id, code)] = cached
        return cached

    def _resolve(self, taxon: Taxon, code: str | None) -> AppendixResolution:
        if taxon.kind == "lookalike":
            return AppendixResolution(
                taxon.id,
                Appendix.NOT_LISTED,
                taxon.id,
                "lookalike",
                taxon.annotation,
                f"{taxon.name} is a look-alike material, not CITES-listed",
                code,
            )
        if taxon.kind == "group":
            return self._resolve_group(taxon, code)
        for node in self._tree.lineage(taxon.id):
            resolution = self._resolve_listed(taxon, node, code)
            if resolution is not None:
                return resolution
        return self._resolve_from_descendants(taxon, code)

    def _resolve_listed(
        self, asked: Taxon, node: Taxon, code: str | None
    ) -> AppendixResolution | None:
        """Resolve from ``node``'s own listing (and its populations), or None if unlisted."""
        inherited = node.id != asked.id
        via = f" (inherited from {node.scientific_name})" if inherited else ""
        if code is not None:
            for pop in node.populations:
                if code in pop.countries:
                    return AppendixResolution(
                        asked.id,
                        pop.appendix,
                        node.id,
                        "population",
                        pop.annotation,
                        f"{asked.scientific_name} from {self._country_name(code)}: "
                        f"{pop.appendix.label}{via}; {pop.annotation}",
                        code,
                    )
        if node.appendix is None:
            return None
        basis: Basis = "inherited" if inherited else "own"
        if code is None and node.populations:
            worst = strictest([node.appendix, *(p.appendix for p in node.populations)])
            splits = "; ".join(
                f"{p.appendix.label} from {_countries_text(p.countries)}" for p in node.populations
            )
            return AppendixResolution(
                asked.id,
                worst,
                node.id,
                basis,
                node.annotation,
                f"{asked.scientific_name}: depends on the country of origin{via} - "
                f"{splits}; {node.appendix.label} from elsewhere. "
                f"Reporting the strictest ({worst.label}); give the origin country.",
                None,
                origin_dependent=True,
            )
        where = f" from {self._country_name(code)}" if code and node.populations else ""
        note = f"; {node.annotation}" if node.annotation else ""
        return AppendixResolution(
            asked.id,
            node.appendix,
            node.id,
            basis,
            node.annotation,
            f"{asked.scientific_name}{where}: {node.appendix.label}{via}{note}",
            code,
        )

    def _resolve_group(self, group: Taxon, code: str | None) -> AppendixResolution:
        parts = [self.resolve(member, code) for member in group.members]
        worst = strictest(p.appendix for p in parts)
        detail = "; ".join(
            f"{self._tree.get(p.taxon_id).scientific_name}: {p.appendix.label}" for p in parts
        )
        note = group.annotation or "the species must be confirmed"
        return AppendixResolution(
            group.id,
            worst,
            group.id,
            "group",
            group.annotation,
            f"{group.name}: up to {worst.label} ({detail}); {note}",
            code,
            origin_dependent=any(p.origin_dependent for p in parts),
            confirm_species=len({p.appendix for p in parts}) > 1,
        )

    def _resolve_from_descendants(self, taxon: Taxon, code: str | None) -> AppendixResolution:
        below = [t for t in self._tree.descendants(taxon.id) if t.appendix is not None]
        if not below:
            return AppendixResolution(
                taxon.id,
                Appendix.NOT_LISTED,
                taxon.id,
                "unlisted",
                "",
                f"{taxon.scientific_name} is not listed and has no listed taxa in this taxonomy",
                code,
            )
        parts = [self.resolve(t.id, code) for t in below]
        worst_part = max(parts, key=lambda p: p.appendix.strictness)
        listed = sorted({self._tree.get(p.source_id).scientific_name for p in parts})
        return AppendixResolution(
            taxon.id,
            worst_part.appendix,
            worst_part.source_id,
            "descendants",
            "",
            f"{taxon.scientific_name} is not listed as a whole; it contains taxa up to "
            f"{worst_part.appendix.label} ({', '.join(listed[:6])}"
            f"{', ...' if len(listed) > 6 else ''}); the species must be confirmed",
            code,
            origin_dependent=any(p.origin_dependent for p in parts),
            confirm_species=True,
        )

    def _country_name(self, code: str) -> str:
        return f"{self._tree.countries.get(code, code)} ({code})"


def _countries_text(codes: frozenset[str], limit: int = 8) -> str:
    ordered = sorted(codes)
    if len(ordered) <= limit:
        return ", ".join(ordered)
    return f"{len(ordered)} countries ({', '.join(ordered[:limit])}, ...)"
