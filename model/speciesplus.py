"""Taxonomy updates from Species+ (the CITES Checklist): read an export, show the difference
with the current taxonomy, and write it into ``model/data``.

Formats read (fields as in ``../shared/reference/cites-permits-and-species-plus.md``):

- the Species+ **CITES listings CSV export** (unepwcmc/SAPI ``cites_listings_export.rb``):
  ``Id, Kingdom, Phylum, Class, Order, Family, Genus, Species, Subspecies, Scientific Name,
  Author, Rank, Listing, Party, Listed under, Full note, # Full note, ...``;
- Species+ API JSON ``GET /api/v1/taxon_concepts``: ``{"taxon_concepts": [{id, full_name,
  rank, name_status, higher_taxa, synonyms, common_names, cites_listing, cites_listings:
  [{appendix, annotation, hash_annotation, effective_at, party}]}]}``;
- Species+ API JSON ``GET /api/v1/taxon_concepts/:id/cites_legislation``: ``{"cites_listings":
  [{taxon_concept_id, is_current, appendix, change_type, effective_at, party, annotation,
  hash_annotation}]}``; it names no taxon, so the caller says which one (``taxon_name``).

Species+ keeps split listings by population as annotation text ("Populations of Botswana,
Namibia ..."); such a listing becomes a ``populations.tsv`` row with the ISO codes of the
countries its annotation names. A listing with a ``party`` is country-specific: an Appendix III
listing by that party, or a reservation (``R+``/``R-``, shown, never written: the taxonomy has
no reservations).

:func:`read_export` reads a file, :func:`diff_taxonomy` compares it with a :class:`Taxonomy`,
:func:`render_diff` prints the difference and :func:`apply_diff` writes it (rows it writes are
marked ``V`` with the file as their source, then the result is validated by loading it).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from model.taxonomy import (
    RANKS,
    Appendix,
    Taxon,
    Taxonomy,
    TaxonomyError,
    normalize_name,
)

logger = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "Id",
    "Kingdom",
    "Phylum",
    "Class",
    "Order",
    "Family",
    "Genus",
    "Species",
    "Subspecies",
    "Scientific Name",
    "Author",
    "Rank",
    "Listing",
    "Party",
    "Listed under",
    "Full note",
    "# Full note",
)
"""The columns of the Species+ CITES listings CSV export this importer needs."""

HIGHER_RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus")
_POPULATION_RE = re.compile(
    r"^\s*(?:only\s+)?(?:the\s+)?(?:populations?|subpopulations?)\s+of\b", re.IGNORECASE
)
_CODE_RE = re.compile(r"\(([A-Z]{2})\)")


class ImportFormatError(ValueError):
    """The file is not a Species+ export this importer reads; the message says what is wrong."""


@dataclass(frozen=True)
class ImportedListing:
    """One current listing of a taxon in the export."""

    appendix: Appendix
    countries: frozenset[str] = frozenset()
    party: str | None = None
    annotation: str = ""
    hash_annotation: str = ""
    effective_at: date | None = None
    change_type: str = "+"

    @property
    def reservation(self) -> bool:
        """A reservation entered by ``party`` (not a listing)."""
        return self.change_type.startswith("R")

    def note(self) -> str:
        """The annotation text for the taxonomy row (hash annotation first)."""
        parts = [p for p in (self.hash_annotation, self.annotation) if p]
        if self.party and not self.reservation and self.appendix is Appendix.III:
            parts.append(f"Appendix III listing by {self.party}")
        return "; ".join(parts)


@dataclass(frozen=True)
class ImportedTaxon:
    """A taxon of the export with its current listings."""

    name: str
    rank: str
    higher: Mapping[str, str]
    listings: tuple[ImportedListing, ...]
    concept_id: str = ""
    author: str = ""
    listed_under: str = ""
    common_names: Mapping[str, str] = field(default_factory=dict)
    synonyms: tuple[str, ...] = ()

    @property
    def whole(self) -> ImportedListing | None:
        """The listing of the taxon as a whole (no population, no reservation), if any."""
        found = [entry for entry in self.listings if not entry.countries and not entry.reservation]
        return max(found, key=lambda e: e.appendix.strictness) if found else None

    @property
    def populations(self) -> tuple[ImportedListing, ...]:
        """Listings of populations named by country."""
        return tuple(e for e in self.listings if e.countries and not e.reservation)

    @property
    def reservations(self) -> tuple[ImportedListing, ...]:
        """Reservations (``R+``) entered by parties."""
        return tuple(e for e in self.listings if e.reservation)


@dataclass(frozen=True)
class Export:
    """A read Species+ file."""

    path: Path
    kind: str  # csv, taxon_concepts, cites_legislation
    taxa: tuple[ImportedTaxon, ...]
    partial: str = ""  # why the file is known to hold only part of its answer (API pages)


# ---- reading -------------------------------------------------------------------------------
class CountryNames:
    """Finds ISO 3166-1 alpha-2 codes in annotation text ("Populations of Botswana, ...")."""

    def __init__(self, countries: Mapping[str, str]) -> None:
        self._codes = set(countries)
        names: dict[str, str] = {}
        for code, name in countries.items():
            for variant in _name_variants(name):
                names[normalize_name(variant)] = code
        self._pattern = re.compile(
            r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")\b"
        )
        self._names = names

    def code(self, text: str) -> str | None:
        """The code of a country code or name, or None."""
        text = text.strip()
        if text.upper() in self._codes and len(text) == 2:
            return text.upper()
        return self._names.get(normalize_name(text))

    def in_text(self, text: str) -> frozenset[str]:
        """Every country named (or given as ``(XX)``) in ``text``."""
        found = {m for m in _CODE_RE.findall(text) if m in self._codes}
        found |= {self._names[m] for m in self._pattern.findall(normalize_name(text))}
        return frozenset(found)


def _name_variants(name: str) -> list[str]:
    """``Tanzania, United Republic of`` -> itself, ``Tanzania`` and ``United Republic of
    Tanzania``; ``Bolivia (Plurinational State of)`` -> itself and ``Bolivia``."""
    variants = [name]
    base = re.sub(r"\s*\(.*\)$", "", name)
    if base != name:
        variants.append(base)
    if ", " in base:
        head, tail = base.split(", ", 1)
        variants += [head, f"{tail} {head}"]
    return variants


def read_export(
    path: Path, countries: Mapping[str, str], *, taxon_name: str | None = None
) -> Export:
    """Read a Species+ CSV export or API JSON file; raise :class:`ImportFormatError`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ImportFormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
    names = CountryNames(countries)
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"{path}: invalid JSON ({exc})") from None
        return _read_json(path, data, names, taxon_name)
    return Export(path, "csv", tuple(_read_csv(path, text, names)))


def _read_csv(path: Path, text: str, names: CountryNames) -> Iterable[ImportedTaxon]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise ImportFormatError(
            f"{path}: not a Species+ CITES listings CSV export; missing column(s) "
            f"{', '.join(missing)}"
        )
    for line_no, row in enumerate(reader, start=2):
        name = (row["Scientific Name"] or "").strip()
        if not name:
            raise ImportFormatError(f"{path}:{line_no}: empty Scientific Name")
        note, hash_note = (row["Full note"] or "").strip(), (row["# Full note"] or "").strip()
        party_text = (row["Party"] or "").strip()
        party = (names.code(party_text) or party_text) if party_text else None
        parts = [
            p for p in (row["Listing"] or "").replace(" ", "").split("/") if p not in ("", "NC")
        ]
        appendices = [_appendix(p, f"{path}:{line_no}") for p in parts]
        listings = _csv_listings(
            appendices, _population_countries(note, names), party, note, hash_note
        )
        yield ImportedTaxon(
            name=name,
            rank=(row["Rank"] or "").strip().lower(),
            higher={r: (row[r.capitalize()] or "").strip() for r in HIGHER_RANKS},
            listings=tuple(listings),
            concept_id=(row["Id"] or "").strip(),
            author=(row["Author"] or "").strip(),
            listed_under=(row["Listed under"] or "").strip(),
        )


def _csv_listings(
    appendices: Sequence[Appendix],
    countries: frozenset[str],
    party: str | None,
    note: str,
    hash_note: str,
) -> list[ImportedListing]:
    """The listings of one CSV row. ``I/II`` is a split listing described only by its note:
    the least strict appendix goes to the populations the note names ("Populations of ...");
    the others cover every other origin. One appendix with a "Populations of ..." note lists
    only those populations."""
    if not appendices:
        return []
    if not countries:
        return [
            ImportedListing(a, frozenset(), party if a is Appendix.III else None, note, hash_note)
            for a in appendices
        ]
    ordered = sorted(appendices, key=lambda a: a.strictness)
    named = ImportedListing(ordered[0], countries, None, note, hash_note)
    return [named, *(ImportedListing(a, frozenset(), None, "", hash_note) for a in ordered[1:])]


def _population_countries(note: str, names: CountryNames) -> frozenset[str]:
    """Countries of a population listing named in its note."""
    for sentence in re.split(r"(?<=[.;])\s+", note):
        if _POPULATION_RE.match(sentence):
            return names.in_text(sentence)
    return frozenset()


def _appendix(value: str, where: str) -> Appendix:
    if value not in ("I", "II", "III"):
        raise ImportFormatError(f"{where}: unknown appendix {value!r} (I, II or III)")
    return Appendix(value)


def _date(value: Any, where: str) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ImportFormatError(f"{where}: effective_at {value!r} is not a date") from None


def _party(value: Any, names: CountryNames) -> str | None:
    if isinstance(value, Mapping):
        code = value.get("iso_code2") or value.get("name")
        return names.code(str(code)) if code else None
    if isinstance(value, str) and value.strip():
        return names.code(value) or value.strip()
    return None


def _listing_from_json(
    entry: Mapping[str, Any], names: CountryNames, where: str
) -> ImportedListing | None:
    change = str(entry.get("change_type") or "+")
    if change == "-" or entry.get("is_current") is False:
        return None
    appendix = _appendix(str(entry.get("appendix") or ""), where)
    annotation = str(entry.get("annotation") or "").strip()
    party = _party(entry.get("party"), names)
    countries = frozenset() if change.startswith("R") else _population_countries(annotation, names)
    return ImportedListing(
        appendix,
        countries,
        party,
        annotation,
        str(entry.get("hash_annotation") or "").strip(),
        _date(entry.get("effective_at"), where),
        change,
    )


def _read_json(path: Path, data: Any, names: CountryNames, taxon_name: str | None) -> Export:
    if isinstance(data, Mapping) and isinstance(data.get("taxon_concepts"), list):
        taxa = [
            _concept(path, i, concept, names) for i, concept in enumerate(data["taxon_concepts"])
        ]
        return Export(
            path,
            "taxon_concepts",
            tuple(t for t in taxa if t is not None),
            _partial(data.get("pagination"), len(data["taxon_concepts"])),
        )
    if isinstance(data, Mapping) and isinstance(data.get("cites_listings"), list):
        if not taxon_name:
            raise ImportFormatError(
                f"{path}: a cites_legislation file names no taxon (only taxon_concept_id); "
                "say which taxon it is with --taxon NAME"
            )
        listings = [
            _listing_from_json(e, names, f"{path}: cites_listings[{i}]")
            for i, e in enumerate(data["cites_listings"])
            if isinstance(e, Mapping)
        ]
        concept_ids = {
            str(e.get("taxon_concept_id"))
            for e in data["cites_listings"]
            if isinstance(e, Mapping) and e.get("taxon_concept_id")
        }
        taxon = ImportedTaxon(
            name=taxon_name,
            rank="",
            higher={},
            listings=tuple(e for e in listings if e is not None),
            concept_id=", ".join(sorted(concept_ids)),
        )
        return Export(path, "cites_legislation", (taxon,))
    raise ImportFormatError(
        f"{path}: JSON without 'taxon_concepts' or 'cites_listings': not a Species+ API answer"
    )


def _partial(pagination: Any, received: int) -> str:
    """Why a taxon_concepts answer is one page of several ("" when it is complete)."""
    if not isinstance(pagination, Mapping):
        return ""
    total = pagination.get("total_entries")
    if isinstance(total, int) and total > received:
        return f"this file is one page ({received} of {total} taxon concepts)"
    return ""


def _concept(path: Path, index: int, concept: Any, names: CountryNames) -> ImportedTaxon | None:
    where = f"{path}: taxon_concepts[{index}]"
    if not isinstance(concept, Mapping) or not concept.get("full_name"):
        raise ImportFormatError(f"{where}: no full_name")
    if concept.get("name_status", "A") != "A":
        return None  # synonyms and trade names are not taxa of their own
    listings = [
        _listing_from_json(e, names, f"{where}.cites_listings[{i}]")
        for i, e in enumerate(concept.get("cites_listings") or [])
        if isinstance(e, Mapping)
    ]
    common: dict[str, str] = {}
    for entry in concept.get("common_names") or []:
        if isinstance(entry, Mapping) and entry.get("name"):
            lang = str(entry.get("language") or "").lower()[:2]
            if lang in ("en", "fr", "es"):
                common.setdefault(lang, str(entry["name"]))
    synonyms = tuple(
        str(s.get("full_name"))
        for s in concept.get("synonyms") or []
        if isinstance(s, Mapping) and s.get("full_name")
    )
    higher = concept.get("higher_taxa") or {}
    return ImportedTaxon(
        name=str(concept["full_name"]).strip(),
        rank=str(concept.get("rank") or "").lower(),
        higher={r: str(higher.get(r) or "") for r in HIGHER_RANKS}
        if isinstance(higher, Mapping)
        else {},
        listings=tuple(e for e in listings if e is not None),
        concept_id=str(concept.get("id") or ""),
        author=str(concept.get("author_year") or ""),
        common_names=common,
        synonyms=synonyms,
    )


# ---- difference ----------------------------------------------------------------------------
def find_by_scientific_name(taxonomy: Taxonomy, name: str) -> Taxon | None:
    """The taxon (not a group or look-alike) whose scientific name or synonym is ``name``,
    compared without case and accents; ``Manis spp.`` is read as ``Manis``."""
    needle = normalize_name(re.sub(r"\s+(spp?|ssp)\.?$", "", name.strip(), flags=re.IGNORECASE))
    if not needle:
        return None
    for taxon in taxonomy.find(needle):
        if taxon.kind == "taxon" and needle in {
            normalize_name(n) for n in (taxon.scientific_name, *taxon.synonyms)
        }:
            return taxon
    return None


@dataclass(frozen=True)
class Change:
    """One line of the difference between the taxonomy and the export."""

    kind: str  # added, removed, appendix, annotation, population, reservation
    name: str
    taxon_id: str | None
    before: str
    after: str
    effective_at: date | None = None
    annotation: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "name": self.name,
            "taxon_id": self.taxon_id,
            "before": self.before,
            "after": self.after,
            "effective_at": self.effective_at.isoformat() if self.effective_at else None,
            "annotation": self.annotation,
        }


@dataclass
class _Plan:
    """What writing changes for one taxon."""

    taxon_id: str
    imported: ImportedTaxon
    appendix: Appendix | None = None  # new own appendix (None: keep)
    annotation: str | None = None
    populations: list[tuple[Appendix, frozenset[str], str]] | None = None  # None: keep rows
    new_row: dict[str, str] | None = None  # an added taxon
    after_line: int = 0


@dataclass
class TaxonomyDiff:
    """The difference between an export and the taxonomy, and how to write it."""

    export: Export
    changes: list[Change]
    unchanged: int
    plans: dict[str, _Plan]
    skipped: list[str]

    @property
    def empty(self) -> bool:
        """True when writing would change nothing."""
        return not self.plans

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "file": str(self.export.path),
            "format": self.export.kind,
            "taxa_in_file": len(self.export.taxa),
            "changes": [c.to_dict() for c in self.changes],
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


def _label(appendix: Appendix | None) -> str:
    return (appendix or Appendix.NOT_LISTED).label


def _slug(name: str) -> str:
    folded = normalize_name(name)
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")


def diff_taxonomy(export: Export, taxonomy: Taxonomy) -> TaxonomyDiff:
    """Compare the export with ``taxonomy``: taxa added and removed, appendices, annotations,
    country-specific listings (population rows and Appendix III parties) and reservations."""
    changes: list[Change] = []
    plans: dict[str, _Plan] = {}
    skipped: list[str] = []
    unchanged = 0
    matched: set[str] = set()
    for imported in export.taxa:
        ours = find_by_scientific_name(taxonomy, imported.name)
        if ours is None:
            plan = _added(imported, taxonomy, export, changes, skipped)
            if plan is not None:
                plans[plan.taxon_id] = plan
            continue
        matched.add(ours.id)
        before = len(changes)
        plan = _compare(ours, imported, taxonomy, changes)
        if plan is not None:
            plans[ours.id] = plan
        if len(changes) == before:
            unchanged += 1
    if export.partial:
        skipped.append(f"removed taxa are not looked for: {export.partial}")
    elif export.kind != "cites_legislation":
        for taxon in taxonomy:
            if taxon.id in matched or taxon.kind != "taxon" or taxon.appendix is None:
                continue
            if taxon.appendix is Appendix.NOT_LISTED and not taxon.populations:
                continue
            # removed only when the export holds a higher taxon of it as a row of its own,
            # i.e. it lists that taxon with its descendants, and this one is not among them
            if set(t.id for t in taxonomy.ancestors(taxon.id)) & matched:
                changes.append(
                    Change(
                        "removed",
                        taxon.scientific_name,
                        taxon.id,
                        _label(taxon.appendix),
                        "not in the export (not listed)",
                    )
                )
                plans[taxon.id] = _Plan(
                    taxon.id,
                    ImportedTaxon(taxon.scientific_name, taxon.rank, {}, ()),
                    appendix=Appendix.NOT_LISTED,
                    annotation=f"not in Species+ export {export.path.name}",
                    populations=[],
                )
    return TaxonomyDiff(export, changes, unchanged, plans, skipped)


def _compare(
    ours: Taxon, imported: ImportedTaxon, taxonomy: Taxonomy, changes: list[Change]
) -> _Plan | None:
    plan = _Plan(ours.id, imported)
    whole = imported.whole
    new_whole = whole.appendix if whole else Appendix.NOT_LISTED
    effective = ours.appendix
    known_annotation = ours.annotation
    if effective is None:  # inherited in our taxonomy: the ancestor's row says it
        resolution = taxonomy.appendix_for(ours.id)
        effective = resolution.appendix if resolution.basis == "inherited" else None
        known_annotation += " " + taxonomy.get(resolution.source_id).annotation
    if (effective or Appendix.NOT_LISTED) != new_whole:
        changes.append(
            Change(
                "appendix",
                imported.name,
                ours.id,
                _label(effective),
                _label(new_whole),
                whole.effective_at if whole else None,
                whole.note() if whole else "",
            )
        )
        plan.appendix = new_whole
        plan.annotation = whole.note() if whole else ""
    elif (
        whole is not None
        and whole.hash_annotation
        and whole.hash_annotation not in known_annotation
    ):
        changes.append(
            Change(
                "annotation",
                imported.name,
                ours.id,
                ours.annotation or "-",
                whole.note(),
                whole.effective_at,
                whole.note(),
            )
        )
        plan.annotation = whole.note()
    if (
        whole is not None
        and whole.party
        and whole.appendix is Appendix.III
        and (whole.party not in ours.annotation)
    ):
        changes.append(
            Change(
                "population",
                imported.name,
                ours.id,
                ours.annotation or "-",
                f"Appendix III listing by {whole.party}",
                whole.effective_at,
                whole.note(),
            )
        )
        plan.annotation = whole.note()
    ours_rows = {c: p.appendix for p in ours.populations for c in p.countries}
    new_rows = {
        c: p.appendix for p in imported.populations for c in p.countries if p.appendix != new_whole
    }
    if ours_rows != new_rows:
        for pop in imported.populations:
            added = sorted(c for c in pop.countries if ours_rows.get(c) != pop.appendix)
            if added and pop.appendix != new_whole:
                changes.append(
                    Change(
                        "population",
                        imported.name,
                        ours.id,
                        ", ".join(f"{c}: {_label(ours_rows.get(c, effective))}" for c in added),
                        f"{pop.appendix.label} for {', '.join(added)}",
                        pop.effective_at,
                        pop.note(),
                    )
                )
        gone = sorted(c for c in ours_rows if c not in new_rows)
        if gone:
            changes.append(
                Change(
                    "population",
                    imported.name,
                    ours.id,
                    ", ".join(f"{c}: {ours_rows[c].label}" for c in gone),
                    f"no country-specific row ({_label(new_whole)} like other origins)",
                )
            )
        plan.populations = [
            (p.appendix, frozenset(p.countries), p.note())
            for p in imported.populations
            if p.appendix != new_whole
        ]
        if plan.appendix is None and ours.appendix is None:
            plan.appendix = new_whole  # a taxon with population rows needs its own appendix
    for reservation in imported.reservations:
        changes.append(
            Change(
                "reservation",
                imported.name,
                ours.id,
                "-",
                f"reservation by {reservation.party or '?'} on {reservation.appendix.label} "
                "(shown only: the taxonomy keeps no reservations)",
                reservation.effective_at,
                reservation.note(),
            )
        )
    if plan.appendix is None and plan.annotation is None and plan.populations is None:
        return None
    return plan


def _added(
    imported: ImportedTaxon,
    taxonomy: Taxonomy,
    export: Export,
    changes: list[Change],
    skipped: list[str],
) -> _Plan | None:
    rank = imported.rank if imported.rank in RANKS else ""
    if not rank:
        skipped.append(
            f"{imported.name}: rank {imported.rank or '?'} is not one the taxonomy keeps"
        )
        return None
    parent = _parent(imported, rank, taxonomy)
    if parent is None:
        skipped.append(f"{imported.name}: none of its higher taxa is in the taxonomy")
        return None
    taxon_id = _slug(imported.name)
    if taxon_id in taxonomy:
        taxon_id = f"{taxon_id}-{rank}"
    whole = imported.whole
    appendix = whole.appendix if whole else Appendix.NOT_LISTED
    effective = whole.effective_at if whole else None
    if whole is None and imported.populations:
        effective = imported.populations[0].effective_at
    pops = ", ".join(
        f"{p.appendix.label} for {', '.join(sorted(p.countries))}" for p in imported.populations
    )
    changes.append(
        Change(
            "added",
            imported.name,
            taxon_id,
            "-",
            f"{rank} under {parent.scientific_name}: {appendix.label}"
            + (f"; {pops}" if pops else ""),
            effective,
            whole.note() if whole else "",
        )
    )
    names = dict(imported.common_names)
    row = {
        "id": taxon_id,
        "kind": "taxon",
        "rank": rank,
        "scientific_name": imported.name,
        "parent_id": parent.id,
        "name_en": names.get("en") or imported.name,
        "name_fr": names.get("fr", ""),
        "name_es": names.get("es", ""),
        "synonyms": "; ".join(imported.synonyms),
        "product_types": "",
        "appendix": appendix.value,
        "annotation": whole.note() if whole else "",
        "members": "",
        "resembles": "",
    }
    below = [parent, *taxonomy.descendants(parent.id)]
    return _Plan(
        taxon_id,
        imported,
        new_row=row,
        populations=[(p.appendix, p.countries, p.note()) for p in imported.populations],
        after_line=max(t.line for t in below),
    )


def _parent(imported: ImportedTaxon, rank: str, taxonomy: Taxonomy) -> Taxon | None:
    level = RANKS.index(rank)
    for higher_rank in reversed(HIGHER_RANKS):
        if RANKS.index(higher_rank) >= level:
            continue
        name = imported.higher.get(higher_rank, "")
        if not name:
            continue
        found = find_by_scientific_name(taxonomy, name)
        if found is not None and RANKS.index(found.rank) < level:
            return found
    if rank == "species" and " " in imported.name:  # the genus from the binomial
        found = find_by_scientific_name(taxonomy, imported.name.split()[0])
        if found is not None and found.rank in HIGHER_RANKS:
            return found
    return None


def render_diff(diff: TaxonomyDiff) -> str:
    """The difference as text, one change a line, for the terminal."""
    marks = {"added": "+", "removed": "-", "reservation": "!"}
    lines = [
        f"Species+ {diff.export.kind} file {diff.export.path}: {len(diff.export.taxa)} taxa; "
        f"{len(diff.changes)} change(s), {diff.unchanged} taxa unchanged"
    ]
    titles = {
        "added": "taxon added",
        "removed": "taxon removed",
        "appendix": "listing changed",
        "annotation": "annotation changed",
        "population": "country-specific listing",
        "reservation": "reservation",
    }
    for change in diff.changes:
        when = f" (effective {change.effective_at.isoformat()})" if change.effective_at else ""
        note = f" [{change.annotation}]" if change.annotation else ""
        ident = f" [{change.taxon_id}]" if change.taxon_id else ""
        lines.append(
            f"{marks.get(change.kind, '~')} {titles[change.kind]}: {change.name}{ident}: "
            f"{change.before} -> {change.after}{when}{note}"
        )
    lines += [f"  skipped: {reason}" for reason in diff.skipped]
    if diff.export.kind == "csv":
        lines.append("  (the CSV export carries no effective dates; the API JSON does)")
    return "\n".join(lines) + "\n"


# ---- writing -------------------------------------------------------------------------------
def apply_diff(
    diff: TaxonomyDiff,
    taxa_path: Path,
    populations_path: Path,
    countries: Mapping[str, str],
    *,
    checked: date,
    countries_path: Path | None = None,
) -> int:
    """Write the difference into the TSV files; returns the number of taxa written.

    Rows written get ``status_checked`` = ``checked``, ``verification`` = ``V`` and the export
    file as ``source``. Both files are written to temporary copies, loaded and validated with
    :meth:`Taxonomy.load`, and only then moved into place: an invalid result writes nothing
    (:class:`model.taxonomy.TaxonomyError` is raised).
    """
    if diff.empty:
        return 0
    taxonomy = Taxonomy.load(taxa_path, populations_path, countries_path)
    source = f"Species+ {diff.export.kind} export {diff.export.path}"
    taxa_lines = taxa_path.read_text(encoding="utf-8").splitlines()
    header = _header(taxa_lines)
    inserts: dict[int, list[str]] = {}
    for plan in diff.plans.values():
        concept = f" (taxon concept {plan.imported.concept_id})" if plan.imported.concept_id else ""
        stamp = {
            "status_checked": checked.isoformat(),
            "verification": "V",
            "source": source + concept,
        }
        if plan.new_row is not None:
            row = {**plan.new_row, **stamp}
            inserts.setdefault(plan.after_line, []).append(_tsv([row.get(h, "") for h in header]))
            continue
        taxon = taxonomy.get(plan.taxon_id)
        cells = next(
            csv.reader([taxa_lines[taxon.line - 1]], delimiter="\t", quoting=csv.QUOTE_NONE)
        )
        row = dict(zip(header, cells, strict=True))
        if plan.appendix is not None:
            row["appendix"] = plan.appendix.value
        if plan.annotation is not None:
            row["annotation"] = plan.annotation
        row.update(stamp)
        taxa_lines[taxon.line - 1] = _tsv([row[h] for h in header])
    out: list[str] = []
    for number, line in enumerate(taxa_lines, start=1):
        out.append(line)
        out.extend(inserts.get(number, []))
    pop_lines = populations_path.read_text(encoding="utf-8").splitlines()
    pop_header = _header(pop_lines)
    replaced = {tid for tid, plan in diff.plans.items() if plan.populations is not None}
    kept = [
        line
        for line in pop_lines
        if not line.strip()
        or line.lstrip().startswith("#")
        or line.split("\t", 1)[0] not in replaced
    ]
    for taxon_id in sorted(replaced):
        plan = diff.plans[taxon_id]
        concept = f" (taxon concept {plan.imported.concept_id})" if plan.imported.concept_id else ""
        for appendix, codes, note in plan.populations or []:
            row = {
                "taxon_id": taxon_id,
                "appendix": appendix.value,
                "countries": "; ".join(sorted(codes)),
                "annotation": note,
                "status_checked": checked.isoformat(),
                "verification": "V",
                "source": source + concept,
            }
            kept.append(_tsv([row[h] for h in pop_header]))
    _write_validated(
        taxa_path, "\n".join(out) + "\n", populations_path, "\n".join(kept) + "\n", countries_path
    )
    logger.info("wrote %d taxa from %s", len(diff.plans), diff.export.path)
    return len(diff.plans)


def _header(lines: Sequence[str]) -> list[str]:
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return [c.strip() for c in line.split("\t")]
    raise TaxonomyError("?", 1, "empty file: no header line")


def _tsv(cells: Sequence[str]) -> str:
    return "\t".join(" ".join(str(c).replace("\t", " ").split()) for c in cells)


def _write_validated(
    taxa_path: Path, taxa_text: str, pop_path: Path, pop_text: str, countries_path: Path | None
) -> None:
    with tempfile.TemporaryDirectory(dir=taxa_path.parent) as scratch:
        new_taxa = Path(scratch) / taxa_path.name
        new_pops = Path(scratch) / pop_path.name
        new_taxa.write_text(taxa_text, encoding="utf-8")
        new_pops.write_text(pop_text, encoding="utf-8")
        Taxonomy.load(new_taxa, new_pops, countries_path)  # raises TaxonomyError: write nothing
        os.replace(new_pops, pop_path)
        os.replace(new_taxa, taxa_path)


__all__ = [
    "Change",
    "Export",
    "ImportFormatError",
    "ImportedListing",
    "ImportedTaxon",
    "TaxonomyDiff",
    "apply_diff",
    "diff_taxonomy",
    "find_by_scientific_name",
    "read_export",
    "render_diff",
]
