"""Reading and validating the taxonomy data files (``model/data/*.tsv``).

One loader: :func:`load_taxa` reads ``taxa.tsv``, the optional ``populations.tsv`` (split
listings) and ``countries.tsv`` (ISO 3166-1 alpha-2), and raises :class:`TaxonomyError` naming
file and line for anything invalid. The format is described in ``docs/taxonomy.md``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import cast

from model.taxonomy.types import (
    KINDS,
    LANGUAGES,
    RANKS,
    VERIFICATION_LEVELS,
    Appendix,
    PopulationListing,
    Taxon,
    TaxonKind,
    TaxonomyError,
    normalize_name,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_TAXA_PATH = DATA_DIR / "taxa.tsv"
DEFAULT_POPULATIONS_NAME = "populations.tsv"
COUNTRIES_PATH = DATA_DIR / "countries.tsv"

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


def load_taxa(
    path: Path | str | None = None,
    populations_path: Path | str | None = None,
    countries_path: Path | str | None = None,
) -> tuple[list[Taxon], dict[str, str], Path]:
    """Read and validate the taxonomy files; return ``(taxa, countries, taxa_path)``.

    ``path`` defaults to the packaged ``model/data/taxa.tsv``; ``populations_path`` to
    ``populations.tsv`` beside it (optional when absent); ``countries_path`` to the packaged
    ISO 3166-1 list. Raises :class:`TaxonomyError` naming file and line.
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
    return built, countries, taxa_path


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
