"""The :class:`Taxonomy`: an immutable, validated set of taxa with look-ups.

Find a taxon by name or synonym (:meth:`Taxonomy.find`), walk the hierarchy
(:meth:`Taxonomy.ancestors`, :meth:`Taxonomy.lineage`, :meth:`Taxonomy.children`) and say which
appendix applies to a taxon from a given origin country (:meth:`Taxonomy.appendix_for`, by the
rules in :mod:`model.taxonomy.appendix`).
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from model.taxonomy.appendix import AppendixRules
from model.taxonomy.loading import load_taxa
from model.taxonomy.types import (
    AppendixResolution,
    InvalidCountryError,
    Taxon,
    TaxonNotFoundError,
    normalize_name,
)

logger = logging.getLogger(__name__)


class Taxonomy:
    """An immutable, validated taxonomy with look-ups; build it with :meth:`load`."""

    def __init__(
        self,
        taxa: Iterable[Taxon],
        countries: Mapping[str, str],
        *,
        path: Path | None = None,
    ) -> None:
        self._taxa: dict[str, Taxon] = {t.id: t for t in taxa}
        self._countries = MappingProxyType(dict(countries))
        self.path = path
        children: dict[str, list[str]] = {}
        for taxon in self._taxa.values():
            if taxon.parent_id is not None:
                children.setdefault(taxon.parent_id, []).append(taxon.id)
        self._children = {k: tuple(v) for k, v in children.items()}
        self._index: list[tuple[str, str]] = [
            (normalize_name(name), t.id) for t in self._taxa.values() for name in t.names() if name
        ]
        self._appendix_rules = AppendixRules(self)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        populations_path: Path | str | None = None,
        countries_path: Path | str | None = None,
    ) -> Taxonomy:
        """Read and validate the taxonomy; raise :class:`TaxonomyError` naming file and line.

        ``path`` defaults to the packaged ``model/data/taxa.tsv``; ``populations_path`` to
        ``populations.tsv`` beside it (optional when absent); ``countries_path`` to the packaged
        ISO 3166-1 list.
        """
        built, countries, taxa_path = load_taxa(path, populations_path, countries_path)
        logger.debug("loaded %d taxa from %s", len(built), taxa_path)
        return cls(built, countries, path=taxa_path)

    # ---- basic access -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._taxa)

    def __iter__(self) -> Iterator[Taxon]:
        return iter(self._taxa.values())

    def __contains__(self, taxon_id: object) -> bool:
        return taxon_id in self._taxa

    @property
    def countries(self) -> Mapping[str, str]:
        """Officially assigned ISO 3166-1 alpha-2 codes mapped to English short names."""
        return self._countries

    def get(self, taxon_id: str) -> Taxon:
        """Return the taxon with ``taxon_id``; raise :class:`TaxonNotFoundError` otherwise."""
        try:
            return self._taxa[taxon_id]
        except KeyError:
            close = difflib.get_close_matches(taxon_id, list(self._taxa), n=3, cutoff=0.75)
            found = [t.id for t in self.find(taxon_id.replace("-", " "))[:3]]
            suggestions = list(dict.fromkeys([*close, *found]))[:3]
            raise TaxonNotFoundError(taxon_id, suggestions) from None

    def find(self, query: str) -> list[Taxon]:
        """Find taxa by scientific name, synonym or common name (en/fr/es).

        Matching ignores case and accents. Exact matches come first, then names starting with
        the query, then names containing it; each taxon appears once, at its best rank.
        """
        needle = normalize_name(query)
        if not needle:
            return []
        best: dict[str, int] = {}
        for name, taxon_id in self._index:
            if name == needle:
                score = 0
            elif name.startswith(needle):
                score = 1
            elif needle in name:
                score = 2
            else:
                continue
            if score < best.get(taxon_id, 3):
                best[taxon_id] = score
        order = {taxon_id: i for i, taxon_id in enumerate(self._taxa)}
        ranked = sorted(best, key=lambda t: (best[t], order[t]))
        return [self._taxa[t] for t in ranked]

    def ancestors(self, taxon_id: str) -> list[Taxon]:
        """The parent, grandparent ... up to the root (parent first)."""
        return self.lineage(taxon_id)[1:]

    def lineage(self, taxon_id: str) -> list[Taxon]:
        """The taxon itself followed by its ancestors."""
        chain = [self.get(taxon_id)]
        while chain[-1].parent_id is not None:
            chain.append(self._taxa[chain[-1].parent_id])
        return chain

    def children(self, taxon_id: str) -> list[Taxon]:
        """Direct children of a taxon, in file order."""
        self.get(taxon_id)
        return [self._taxa[c] for c in self._children.get(taxon_id, ())]

    def descendants(self, taxon_id: str) -> list[Taxon]:
        """All taxa below ``taxon_id`` (depth first, file order)."""
        found: list[Taxon] = []
        for child in self.children(taxon_id):
            found.append(child)
            found.extend(self.descendants(child.id))
        return found

    # ---- appendix ------------------------------------------------------------------------
    def normalize_country(self, country: str | None) -> str | None:
        """Upper-case and check an ISO 3166-1 alpha-2 code; ``None`` or blank stays ``None``."""
        if country is None or not country.strip():
            return None
        code = country.strip().upper()
        if code not in self._countries:
            raise InvalidCountryError(country)
        return code

    def appendix_for(self, taxon_id: str, country: str | None = None) -> AppendixResolution:
        """Which appendix applies to specimens of ``taxon_id`` originating in ``country``.

        A population row naming the country wins; else the taxon's own appendix; else the
        nearest listed ancestor's. With ``country=None`` on a split listing the strictest
        appendix is reported and ``origin_dependent`` is set. Look-alike materials are not
        listed; a product group reports the strictest appendix among its members; a higher taxon
        that is not listed itself reports the strictest appendix found below it.
        """
        return self._appendix_rules.resolve(taxon_id, self.normalize_country(country))


@functools.cache
def default_taxonomy() -> Taxonomy:
    """The packaged taxonomy, loaded once per process."""
    return Taxonomy.load()
