"""The CITES taxonomy: taxa, product groups and look-alike materials, read from data files.

The data lives in ``model/data/taxa.tsv`` (one taxon per line), ``model/data/populations.tsv``
(split listings: appendix per group of origin countries) and ``model/data/countries.tsv`` (the
officially assigned ISO 3166-1 alpha-2 codes). One loader, :meth:`Taxonomy.load`, reads and
validates them; every error names the file and line (``TaxonomyError``). The format is described
in ``docs/taxonomy.md``.

The questions it answers: find a taxon by name or synonym (:meth:`Taxonomy.find`), walk the
hierarchy (:meth:`Taxonomy.ancestors`, :meth:`Taxonomy.lineage`, :meth:`Taxonomy.children`) and
say which appendix applies to a taxon from a given origin country (:meth:`Taxonomy.appendix_for`).
"""

from __future__ import annotations

import csv
import difflib
import functools
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Literal, cast

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_TAXA_PATH = DATA_DIR / "taxa.tsv"
DEFAULT_POPULATIONS_NAME = "populations.tsv"
COUNTRIES_PATH = DATA_DIR / "countries.tsv"

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

TAXA_COLUMNS: tuple[str, ...] = (
    "id",
    "kind",
    "rank",
    "scientific_name",
    "parent_id",
    "name_en",
    "name_fr",
    "name_es",
    "synonyms",
    "product_types",
    "appendix",
    "annotation",
    "members",
    "resembles",
    "status_checked",
    "verification",
    "source",
)
POPULATION_COLUMNS: tuple[str, ...] = (
    "taxon_id",
    "appendix",
    "countries",
    "annotation",
    "status_checked",
    "verification",
    "source",
)

_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_LIST_SEP = ";"


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
        # (taxon id, country code) -> resolution; the taxonomy never changes after loading, and
        # the service resolves the same few labels for every answer.
        self._appendix_cache: dict[tuple[str, str | None], AppendixResolution] = {}

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
        taxa_path = Path(path) if path is not None else DEFAULT_TAXA_PATH
        if populations_path is None:
            sibling = taxa_path.with_name(DEFAULT_POPULATIONS_NAME)
            pop_path: Path | None = sibling if sibling.exists() else None
        else:
            pop_path = Path(populations_path)
        countries = read_countries(Path(countries_path) if countries_path else COUNTRIES_PATH)
        built = _read_taxa(taxa_path)
        if pop_path is not None:
            populations = _read_populations(pop_path, countries)
            built = _attach_populations(built, populations, taxa_path, pop_path)
        _validate(built, taxa_path)
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
        code = self.normalize_country(country)
        cached = self._appendix_cache.get((taxon_id, code))
        if cached is None:
            cached = self._appendix_for(self.get(taxon_id), code)
            self._appendix_cache[(taxon_id, code)] = cached
        return cached

    def _appendix_for(self, taxon: Taxon, code: str | None) -> AppendixResolution:
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
        for node in self.lineage(taxon.id):
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
        parts = [self.appendix_for(member, code) for member in group.members]
        worst = strictest(p.appendix for p in parts)
        detail = "; ".join(
            f"{self._taxa[p.taxon_id].scientific_name}: {p.appendix.label}" for p in parts
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
        below = [t for t in self.descendants(taxon.id) if t.appendix is not None]
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
        parts = [self.appendix_for(t.id, code) for t in below]
        worst_part = max(parts, key=lambda p: p.appendix.strictness)
        listed = sorted({self._taxa[p.source_id].scientific_name for p in parts})
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
        return f"{self._countries.get(code, code)} ({code})"


def _countries_text(codes: frozenset[str], limit: int = 8) -> str:
    ordered = sorted(codes)
    if len(ordered) <= limit:
        return ", ".join(ordered)
    return f"{len(ordered)} countries ({', '.join(ordered[:limit])}, ...)"


@functools.cache
def default_taxonomy() -> Taxonomy:
    """The packaged taxonomy, loaded once per process."""
    return Taxonomy.load()


# ---- reading -------------------------------------------------------------------------------
def read_countries(path: Path) -> dict[str, str]:
    """Read the ISO 3166-1 alpha-2 list (``code<TAB>name``); errors name file and line."""
    countries: dict[str, str] = {}
    for line_no, row in _rows(path, ("code", "name")):
        code = row["code"]
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise TaxonomyError(path, line_no, f"country code {code!r} is not two capitals")
        if code in countries:
            raise TaxonomyError(path, line_no, f"country code {code} appears twice")
        countries[code] = row["name"]
    if not countries:
        raise TaxonomyError(path, 1, "no country codes found")
    return countries


def _rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` of a TSV file with a header; skip blank and # lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaxonomyError(path, 0, "file not found") from None
    except UnicodeDecodeError as exc:
        raise TaxonomyError(path, 0, f"not UTF-8 text ({exc.reason})") from None
    header: list[str] | None = None
    for line_no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cells = next(csv.reader([raw], delimiter="\t", quoting=csv.QUOTE_NONE))
        if header is None:
            header = [c.strip() for c in cells]
            missing = [c for c in columns if c not in header]
            if missing:
                raise TaxonomyError(path, line_no, f"header lacks column(s) {', '.join(missing)}")
            continue
        if len(cells) != len(header):
            raise TaxonomyError(
                path,
                line_no,
                f"expected {len(header)} tab-separated cells, found {len(cells)}",
            )
        yield line_no, {h: c.strip() for h, c in zip(header, cells, strict=True)}
    if header is None:
        raise TaxonomyError(path, 1, "empty file: no header line")


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split(_LIST_SEP) if part.strip())


def _parse_appendix(cell: str, path: Path, line_no: int) -> Appendix | None:
    if cell == "":
        return None
    try:
        return Appendix(cell)
    except ValueError:
        allowed = ", ".join(a.value for a in Appendix)
        raise TaxonomyError(
            path, line_no, f"unknown appendix {cell!r} (use {allowed}, or empty to inherit)"
        ) from None


def _parse_date(cell: str, path: Path, line_no: int) -> date:
    try:
        return date.fromisoformat(cell)
    except ValueError:
        raise TaxonomyError(
            path, line_no, f"status_checked {cell!r} is not a date (YYYY-MM-DD)"
        ) from None


def _parse_verification(cell: str, path: Path, line_no: int) -> str:
    if cell not in VERIFICATION_LEVELS:
        raise TaxonomyError(
            path,
            line_no,
            f"unknown verification {cell!r} (use {', '.join(VERIFICATION_LEVELS)})",
        )
    return cell


def _read_taxa(path: Path) -> list[Taxon]:
    taxa: list[Taxon] = []
    seen: dict[str, int] = {}
    for line_no, row in _rows(path, TAXA_COLUMNS):
        taxon_id = row["id"]
        if not _ID_RE.match(taxon_id):
            raise TaxonomyError(
                path, line_no, f"id {taxon_id!r} must be a lower-case slug like 'manis-javanica'"
            )
        if taxon_id in seen:
            raise TaxonomyError(
                path, line_no, f"duplicate id {taxon_id!r} (first on line {seen[taxon_id]})"
            )
        seen[taxon_id] = line_no
        kind = row["kind"]
        if kind not in KINDS:
            raise TaxonomyError(path, line_no, f"unknown kind {kind!r} (use {', '.join(KINDS)})")
        rank = row["rank"]
        expected_rank = {"group": "group", "lookalike": "material"}.get(kind)
        if expected_rank is not None and rank != expected_rank:
            raise TaxonomyError(path, line_no, f"a {kind} must have rank {expected_rank!r}")
        if expected_rank is None and rank not in RANKS:
            raise TaxonomyError(path, line_no, f"unknown rank {rank!r} (use {', '.join(RANKS)})")
        if not row["scientific_name"]:
            raise TaxonomyError(path, line_no, "scientific_name is empty")
        if not row["name_en"]:
            raise TaxonomyError(path, line_no, f"{taxon_id}: the English common name is missing")
        names = {lang: row[f"name_{lang}"] for lang in LANGUAGES if row[f"name_{lang}"]}
        taxa.append(
            Taxon(
                id=taxon_id,
                scientific_name=row["scientific_name"],
                rank=rank,
                parent_id=row["parent_id"] or None,
                common_names=MappingProxyType(names),
                synonyms=_split(row["synonyms"]),
                product_types=_split(row["product_types"]),
                appendix=_parse_appendix(row["appendix"], path, line_no),
                annotation=row["annotation"],
                status_checked=_parse_date(row["status_checked"], path, line_no),
                verification=_parse_verification(row["verification"], path, line_no),
                source=row["source"],
                kind=cast(TaxonKind, kind),  # checked against KINDS above
                members=_split(row["members"]),
                resembles=_split(row["resembles"]),
                line=line_no,
            )
        )
    return taxa


def _read_populations(
    path: Path, countries: Mapping[str, str]
) -> dict[str, list[tuple[int, PopulationListing]]]:
    rows: dict[str, list[tuple[int, PopulationListing]]] = {}
    for line_no, row in _rows(path, POPULATION_COLUMNS):
        appendix = _parse_appendix(row["appendix"], path, line_no)
        if appendix is None:
            raise TaxonomyError(path, line_no, "a population row needs an appendix")
        codes = _split(row["countries"])
        if not codes:
            raise TaxonomyError(path, line_no, "a population row needs at least one country")
        for code in codes:
            if code not in countries:
                raise TaxonomyError(
                    path, line_no, f"{code!r} is not an ISO 3166-1 alpha-2 country code"
                )
        if len(set(codes)) != len(codes):
            raise TaxonomyError(path, line_no, "a country is named twice in one row")
        listing = PopulationListing(
            appendix=appendix,
            countries=frozenset(codes),
            annotation=row["annotation"],
            verification=_parse_verification(row["verification"], path, line_no),
            source=row["source"],
            status_checked=_parse_date(row["status_checked"], path, line_no),
        )
        rows.setdefault(row["taxon_id"], []).append((line_no, listing))
    return rows


def _attach_populations(
    taxa: list[Taxon],
    populations: Mapping[str, list[tuple[int, PopulationListing]]],
    taxa_path: Path,
    pop_path: Path,
) -> list[Taxon]:
    by_id = {t.id: t for t in taxa}
    for taxon_id, rows in populations.items():
        first_line = rows[0][0]
        taxon = by_id.get(taxon_id)
        if taxon is None:
            raise TaxonomyError(pop_path, first_line, f"unknown taxon id {taxon_id!r}")
        if taxon.kind != "taxon":
            raise TaxonomyError(pop_path, first_line, f"{taxon_id} is a {taxon.kind}, not a taxon")
        if taxon.appendix is None:
            raise TaxonomyError(
                taxa_path,
                taxon.line,
                f"{taxon_id} has population rows, so it needs its own appendix "
                "(the one for all other origins; use not_listed if none)",
            )
        claimed: dict[str, int] = {}
        for line_no, listing in rows:
            for code in listing.countries:
                if code in claimed:
                    raise TaxonomyError(
                        pop_path,
                        line_no,
                        f"{taxon_id}: country {code} already has a row (line {claimed[code]})",
                    )
                claimed[code] = line_no
            if listing.appendix == taxon.appendix:
                raise TaxonomyError(
                    pop_path,
                    line_no,
                    f"{taxon_id}: row repeats the taxon's own appendix {listing.appendix.value}",
                )
        by_id[taxon_id] = replace(taxon, populations=tuple(p for _, p in rows))
    return [by_id[t.id] for t in taxa]


def _validate(taxa: list[Taxon], path: Path) -> None:
    by_id = {t.id: t for t in taxa}
    rank_index = {rank: i for i, rank in enumerate(RANKS)}
    for taxon in taxa:
        if taxon.parent_id is not None and taxon.parent_id not in by_id:
            raise TaxonomyError(path, taxon.line, f"unknown parent {taxon.parent_id!r}")
    _check_cycles(taxa, by_id, path)
    for taxon in taxa:
        if taxon.kind == "taxon":
            _check_parent(taxon, by_id, rank_index, path)
        elif taxon.parent_id is not None:
            raise TaxonomyError(path, taxon.line, f"a {taxon.kind} has no parent; leave it empty")
        if taxon.kind == "group":
            if taxon.appendix is not None:
                raise TaxonomyError(
                    path, taxon.line, "a group's appendix is computed from its members; leave empty"
                )
            if len(taxon.members) < 2:
                raise TaxonomyError(path, taxon.line, "a group needs at least two members")
            for member in taxon.members:
                target = by_id.get(member)
                if target is None or target.kind != "taxon":
                    raise TaxonomyError(path, taxon.line, f"group member {member!r} is not a taxon")
        elif taxon.members:
            raise TaxonomyError(path, taxon.line, "only a group has members")
        if taxon.kind == "lookalike" and taxon.appendix not in (None, Appendix.NOT_LISTED):
            raise TaxonomyError(path, taxon.line, "a look-alike material must be not_listed")
        for other in taxon.resembles:
            if other not in by_id:
                raise TaxonomyError(path, taxon.line, f"resembles unknown id {other!r}")
    _check_duplicate_names(taxa, path)


def _check_parent(
    taxon: Taxon, by_id: Mapping[str, Taxon], rank_index: Mapping[str, int], path: Path
) -> None:
    if taxon.parent_id is None:
        if taxon.rank != "kingdom":
            raise TaxonomyError(path, taxon.line, f"{taxon.id} ({taxon.rank}) needs a parent")
        return
    parent = by_id[taxon.parent_id]
    if parent.kind != "taxon":
        raise TaxonomyError(path, taxon.line, f"parent {parent.id!r} is a {parent.kind}")
    if rank_index[parent.rank] >= rank_index[taxon.rank]:
        raise TaxonomyError(
            path,
            taxon.line,
            f"parent {parent.id!r} ({parent.rank}) must rank above {taxon.id} ({taxon.rank})",
        )


def _check_cycles(taxa: list[Taxon], by_id: Mapping[str, Taxon], path: Path) -> None:
    for taxon in taxa:
        seen = [taxon.id]
        current = taxon
        while current.parent_id is not None and current.parent_id in by_id:
            if current.parent_id in seen:
                cycle = " -> ".join([*seen, current.parent_id])
                raise TaxonomyError(path, taxon.line, f"parent cycle: {cycle}")
            seen.append(current.parent_id)
            current = by_id[current.parent_id]


def _check_duplicate_names(taxa: list[Taxon], path: Path) -> None:
    owner: dict[str, Taxon] = {}
    for taxon in taxa:
        for name in taxon.names():
            key = normalize_name(name)
            first = owner.setdefault(key, taxon)
            if first.id != taxon.id:
                raise TaxonomyError(
                    path,
                    taxon.line,
                    f"name {name!r} of {taxon.id} is already used by {first.id} "
                    f"(line {first.line}); names and synonyms must be unique",
                )
