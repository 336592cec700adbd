"""The taxonomy's types: appendices, taxa, split listings, appendix resolutions and errors.

Pure data with no I/O; :mod:`model.taxonomy.loading` builds them from the data files and
:mod:`model.taxonomy.appendix` resolves which appendix applies.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Literal

LANGUAGES: tuple[str, ...] = ("en", "fr", "es")
"""The CITES working languages, in which common names are kept."""

RANKS: tuple[str, ...] = (
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "species",
    "subspecies",
)
"""Biological ranks from the top down; ``material`` and ``group`` stand outside the tree."""

KINDS: tuple[str, ...] = ("taxon", "group", "lookalike")
VERIFICATION_LEVELS: tuple[str, ...] = ("V", "V-old", "V-ind", "R", "std")


class Appendix(StrEnum):
    """A CITES appendix, or ``not_listed``."""

    I = "I"  # noqa: E741 - the appendix is called I
    II = "II"
    III = "III"
    NOT_LISTED = "not_listed"

    @property
    def strictness(self) -> int:
        """Higher is stricter: I > II > III > not listed."""
        return _STRICTNESS[self]

    @property
    def label(self) -> str:
        """Human wording, e.g. ``Appendix II`` or ``not listed``."""
        return "not listed" if self is Appendix.NOT_LISTED else f"Appendix {self.value}"


_STRICTNESS: dict[Appendix, int] = {
    Appendix.I: 3,
    Appendix.II: 2,
    Appendix.III: 1,
    Appendix.NOT_LISTED: 0,
}


def strictest(appendices: Iterable[Appendix]) -> Appendix:
    """Return the strictest appendix of ``appendices`` (``not_listed`` when empty)."""
    return max(appendices, key=lambda a: a.strictness, default=Appendix.NOT_LISTED)


class TaxonomyError(ValueError):
    """A taxonomy data file is invalid; the message starts with ``file:line:``."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = Path(path)
        self.line = line
        self.reason = message


class TaxonNotFoundError(KeyError):
    """No taxon has the requested id."""

    def __init__(self, taxon_id: str, suggestions: Sequence[str] = ()) -> None:
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        message = (
            f"unknown taxon id {taxon_id!r}{hint} "
            "(search by name with `cites-vision taxa search WORD`)"
        )
        super().__init__(message)
        self.taxon_id = taxon_id
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidCountryError(ValueError):
    """An origin country is not an officially assigned ISO 3166-1 alpha-2 code."""

    def __init__(self, country: str) -> None:
        super().__init__(
            f"{country!r} is not an ISO 3166-1 alpha-2 country code "
            "(two letters, e.g. KE for Kenya, ZA for South Africa)"
        )
        self.country = country


@dataclass(frozen=True)
class PopulationListing:
    """A split listing: specimens originating in ``countries`` fall under ``appendix``."""

    appendix: Appendix
    countries: frozenset[str]
    annotation: str = ""
    verification: str = "R"
    source: str = ""
    status_checked: date | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "appendix": self.appendix.value,
            "countries": sorted(self.countries),
            "annotation": self.annotation,
            "verification": self.verification,
            "source": self.source,
            "status_checked": self.status_checked.isoformat() if self.status_checked else None,
        }


TaxonKind = Literal["taxon", "group", "lookalike"]


@dataclass(frozen=True)
class Taxon:
    """One entry of the taxonomy: a CITES taxon, a product group or a look-alike material.

    ``appendix`` is the taxon's own listing; ``None`` means it inherits from the nearest
    listed ancestor. ``populations`` override it for specimens from the named countries.
    """

    id: str
    scientific_name: str
    rank: str
    parent_id: str | None
    common_names: Mapping[str, str] = field(hash=False)
    synonyms: tuple[str, ...] = ()
    product_types: tuple[str, ...] = ()
    appendix: Appendix | None = None
    populations: tuple[PopulationListing, ...] = ()
    annotation: str = ""
    status_checked: date | None = None
    verification: str = "R"
    source: str = ""
    kind: TaxonKind = "taxon"
    members: tuple[str, ...] = ()
    resembles: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)

    @property
    def cites(self) -> bool:
        """False for look-alike materials; a CITES taxon may still be unlisted for some origins."""
        return self.kind != "lookalike"

    @property
    def name(self) -> str:
        """The English common name (always present)."""
        return self.common_names["en"]

    def names(self) -> tuple[str, ...]:
        """Every name this entry answers to: scientific, synonyms and common names."""
        return (self.scientific_name, *self.synonyms, *self.common_names.values())

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stable keys; used by the CLI and the service)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "scientific_name": self.scientific_name,
            "rank": self.rank,
            "parent_id": self.parent_id,
            "common_names": dict(self.common_names),
            "synonyms": list(self.synonyms),
            "product_types": list(self.product_types),
            "appendix": self.appendix.value if self.appendix else None,
            "populations": [p.to_dict() for p in self.populations],
            "annotation": self.annotation,
            "members": list(self.members),
            "resembles": list(self.resembles),
            "cites": self.cites,
            "status_checked": self.status_checked.isoformat() if self.status_checked else None,
            "verification": self.verification,
            "source": self.source,
        }


Basis = Literal["population", "own", "inherited", "descendants", "group", "lookalike", "unlisted"]


@dataclass(frozen=True)
class AppendixResolution:
    """Which appendix applies to a taxon (from an origin country), and why.

    ``source_id`` is the taxon whose listing decided; ``rule`` the population or listing text
    that applied; ``origin_dependent`` is true when the answer would differ by origin country
    (the strictest appendix is reported then); ``confirm_species`` is true when the answer is a
    worst case over several species (product groups, unlisted higher taxa).
    """

    taxon_id: str
    appendix: Appendix
    source_id: str
    basis: Basis
    rule: str
    explanation: str
    country: str | None = None
    origin_dependent: bool = False
    confirm_species: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "taxon_id": self.taxon_id,
            "appendix": self.appendix.value,
            "source_id": self.source_id,
            "basis": self.basis,
            "rule": self.rule,
            "explanation": self.explanation,
            "country": self.country,
            "origin_dependent": self.origin_dependent,
            "confirm_species": self.confirm_species,
        }


def normalize_name(text: str) -> str:
    """Fold case and accents and collapse spaces, for name matching (``Vicuña`` ~ ``vicuna``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().replace("’", "'").split())
