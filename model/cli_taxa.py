"""``cites-vision taxa``: search, list, show a taxon and say which appendix applies.

Subcommands::

    cites-vision taxa search WORD [--json]
    cites-vision taxa list [--kind KIND] [--json]
    cites-vision taxa show ID [--json]
    cites-vision taxa appendix ID [--country CC] [--json]
    cites-vision taxa import FILE [--write] [--taxon NAME] [--json]

``ID`` is a taxon id (``loxodonta-africana``) or a name that matches exactly one taxon.
Only the standard library and ``model.taxonomy`` are imported, so this runs on a serving-only
install.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from model.cli import CommandError
from model.listing_status import ListingStatus, listing_status
from model.speciesplus import ImportFormatError, apply_diff, diff_taxonomy, read_export, render_diff
from model.taxonomy import (
    DEFAULT_POPULATIONS_NAME,
    DEFAULT_TAXA_PATH,
    KINDS,
    InvalidCountryError,
    Taxon,
    Taxonomy,
    TaxonomyError,
    default_taxonomy,
    normalize_name,
)

EXIT_NOT_FOUND = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``taxa`` command and its subcommands to the dispatcher."""
    taxa = subparsers.add_parser(
        "taxa",
        help="look up CITES taxa, product groups and look-alike materials",
        description="Look up the CITES taxonomy that predictions are reported in.",
    )
    taxa.add_argument(
        "--data", metavar="TAXA_TSV", help="use this taxa file instead of the packaged one"
    )
    actions = taxa.add_subparsers(dest="taxa_command", metavar="ACTION")

    search = actions.add_parser("search", help="find taxa by scientific or common name")
    search.add_argument("word", nargs="+", help="name or part of one (en, fr, es, scientific)")
    search.add_argument("--limit", type=int, default=20, help="show at most N results")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(func=_search)

    listing = actions.add_parser("list", help="list every entry of the taxonomy")
    listing.add_argument("--kind", choices=KINDS, help="only entries of this kind")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    show = actions.add_parser("show", help="show one taxon with its lineage and listing")
    show.add_argument("taxon", metavar="ID", help="taxon id or an exact name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)

    appendix = actions.add_parser("appendix", help="which appendix applies, by origin country")
    appendix.add_argument("taxon", metavar="ID", help="taxon id or an exact name")
    appendix.add_argument(
        "--country", metavar="CC", help="origin country, ISO 3166-1 alpha-2 (e.g. KE)"
    )
    appendix.add_argument("--json", action="store_true", help="print JSON")
    appendix.set_defaults(func=_appendix)

    species_plus = actions.add_parser(
        "import",
        help="show the difference with a Species+ export; --write applies it",
        description="Read a Species+ CITES listings CSV export or Species+ API JSON "
        "(taxon_concepts, or cites_legislation with --taxon) and print what differs from the "
        "taxonomy: taxa added or removed, listings, annotations and country-specific listings "
        "with effective dates. Nothing is written without --write.",
    )
    species_plus.add_argument("file", metavar="FILE", help="the CSV or JSON file")
    species_plus.add_argument(
        "--write", action="store_true", help="apply the difference to the taxonomy files"
    )
    species_plus.add_argument(
        "--taxon", metavar="NAME", help="the taxon a cites_legislation file is about"
    )
    species_plus.add_argument("--json", action="store_true", help="print the difference as JSON")
    species_plus.set_defaults(func=_import)

    taxa.set_defaults(func=_help(taxa))


def _help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


def _taxonomy(args: argparse.Namespace) -> Taxonomy:
    try:
        return Taxonomy.load(args.data) if args.data else default_taxonomy()
    except TaxonomyError as exc:
        raise CommandError(f"invalid taxonomy data: {exc}") from exc


def _resolve(taxonomy: Taxonomy, text: str) -> Taxon:
    """A taxon from an id, or from a name that matches exactly one entry."""
    if text in taxonomy:
        return taxonomy.get(text)
    matches = taxonomy.find(text)
    needle = normalize_name(text)
    exact = [t for t in matches if any(normalize_name(n) == needle for n in t.names())]
    if len(exact) == 1:
        return exact[0]
    candidates = exact or matches
    if not candidates:
        raise CommandError(
            f"no taxon has the id or name {text!r}; try `cites-vision taxa search WORD`",
            EXIT_NOT_FOUND,
        )
    shown = ", ".join(t.id for t in candidates[:8])
    raise CommandError(f"{text!r} is not a taxon id; did you mean one of: {shown}?", EXIT_NOT_FOUND)


def _emit_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def _row(taxon: Taxon, taxonomy: Taxonomy) -> str:
    appendix = taxonomy.appendix_for(taxon.id).appendix.label
    return (
        f"{taxon.id:<34} {taxon.rank:<10} {taxon.scientific_name:<30} {taxon.name:<32} {appendix}"
    )


def _summary(taxon: Taxon, taxonomy: Taxonomy) -> dict[str, object]:
    data = taxon.to_dict()
    data["resolved_appendix"] = taxonomy.appendix_for(taxon.id).to_dict()
    return data


def _search(args: argparse.Namespace) -> int:
    taxonomy = _taxonomy(args)
    word = " ".join(args.word)
    found = taxonomy.find(word)[: max(args.limit, 1)]
    if not found:
        raise CommandError(
            f"no taxon matches {word!r} (searched scientific names, synonyms and en/fr/es "
            "common names); try a shorter word, or `cites-vision taxa list`",
            EXIT_NOT_FOUND,
        )
    if args.json:
        _emit_json([_summary(t, taxonomy) for t in found])
    else:
        sys.stdout.write("".join(_row(t, taxonomy) + "\n" for t in found))
    return 0


def _list(args: argparse.Namespace) -> int:
    taxonomy = _taxonomy(args)
    entries = [t for t in taxonomy if args.kind is None or t.kind == args.kind]
    if args.json:
        _emit_json([_summary(t, taxonomy) for t in entries])
    else:
        sys.stdout.write("".join(_row(t, taxonomy) + "\n" for t in entries))
        sys.stdout.write(f"{len(entries)} entries\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    taxonomy = _taxonomy(args)
    taxon = _resolve(taxonomy, args.taxon)
    lineage = [t.scientific_name for t in taxonomy.lineage(taxon.id)]
    if args.json:
        data = _summary(taxon, taxonomy)
        data["lineage"] = [t.id for t in taxonomy.lineage(taxon.id)]
        data["children"] = [t.id for t in taxonomy.children(taxon.id)]
        _emit_json(data)
        return 0
    resolution = taxonomy.appendix_for(taxon.id)
    names = ", ".join(f"{lang}: {name}" for lang, name in taxon.common_names.items())
    lines = [
        f"{taxon.scientific_name} ({taxon.rank}, {taxon.kind}) [{taxon.id}]",
        f"  names:        {names}",
        f"  synonyms:     {'; '.join(taxon.synonyms) or '-'}",
        f"  lineage:      {' < '.join(lineage)}",
        f"  products:     {'; '.join(taxon.product_types) or '-'}",
        f"  appendix:     {resolution.appendix.label} - {resolution.explanation}",
        f"  {_listing_line(listing_status(taxonomy, resolution))}",
    ]
    lines += [
        f"  population:   {p.appendix.label} from {', '.join(sorted(p.countries))}: {p.annotation}"
        for p in taxon.populations
    ]
    if taxon.members:
        lines.append(f"  members:      {', '.join(taxon.members)}")
    if taxon.resembles:
        lines.append(f"  resembles:    {', '.join(taxon.resembles)}")
    checked = taxon.status_checked.isoformat() if taxon.status_checked else "-"
    lines.append(f"  checked:      {checked} ({taxon.verification}) {taxon.source}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _appendix(args: argparse.Namespace) -> int:
    taxonomy = _taxonomy(args)
    taxon = _resolve(taxonomy, args.taxon)
    try:
        resolution = taxonomy.appendix_for(taxon.id, args.country)
    except InvalidCountryError as exc:
        raise CommandError(str(exc)) from exc
    status = listing_status(taxonomy, resolution)
    if args.json:
        _emit_json({**resolution.to_dict(), "listing": status.to_dict()})
    else:
        sys.stdout.write(
            f"{resolution.appendix.label}\n{resolution.explanation}\n{_listing_line(status)}\n"
        )
    return 0


def _listing_line(status: ListingStatus) -> str:
    """Whether the row behind an appendix is verified, in one line."""
    if status.verified:
        return f"listing: verified ({status.verification}, {status.row}): {status.source}"
    return (
        f"listing NOT VERIFIED ({status.row} is recalled, not checked against a source): "
        "confirm it in the CITES Checklist (Species+) before acting on it"
    )


def _import(args: argparse.Namespace) -> int:
    taxonomy = _taxonomy(args)
    taxa_path = Path(args.data) if args.data else DEFAULT_TAXA_PATH
    try:
        export = read_export(Path(args.file), taxonomy.countries, taxon_name=args.taxon)
    except ImportFormatError as exc:
        raise CommandError(str(exc)) from exc
    diff = diff_taxonomy(export, taxonomy)
    if args.json:
        _emit_json(diff.to_dict())
    else:
        sys.stdout.write(render_diff(diff))
    if not args.write:
        if not diff.empty and not args.json:
            sys.stdout.write("nothing written; run again with --write to apply\n")
        return 0
    try:
        written = apply_diff(
            diff,
            taxa_path,
            taxa_path.with_name(DEFAULT_POPULATIONS_NAME),
            taxonomy.countries,
            checked=datetime.now(UTC).date(),
        )
    except TaxonomyError as exc:
        raise CommandError(
            f"the import would make the taxonomy invalid, nothing written: {exc}"
        ) from exc
    except OSError as exc:
        raise CommandError(f"cannot write {taxa_path.parent}: {exc}") from exc
    sys.stderr.write(f"wrote {written} taxa into {taxa_path} and its populations.tsv\n")
    return 0
