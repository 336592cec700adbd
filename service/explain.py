"""The decision's explanation and the group caveat, in the officer's language (en, fr, es).

The model core writes one English sentence per decision (``Decision.reason``, stored with the
identification). An officer reads the answer in their own language, so a response carries an
``explanation`` built here from the decision's structured fields (kind, rule, probability,
taxon, rank, appendix, origin) and, for a product group or a taxon whose species must be
confirmed, a ``caveat`` built from the taxonomy rows: every member with its appendix in the
officer's language (e.g. "walrus (Odobenus rosmarus): Appendix III"). Scientific names and ISO
country codes are not translated. Texts live in ``service/data/explanations.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from model.taxonomy import Appendix, TaxonNotFoundError, Taxonomy

EXPLANATIONS_FILE = Path(__file__).resolve().parent / "data" / "explanations.json"
_MAX_COUNTRIES = 6


@cache
def _texts() -> dict[str, dict[str, str]]:
    raw: dict[str, dict[str, str]] = json.loads(EXPLANATIONS_FILE.read_text(encoding="utf-8"))
    return {lang: texts for lang, texts in raw.items() if not lang.startswith("_")}


def text(language: str, key: str, **values: Any) -> str:
    """One text of the explanations file in ``language`` (English when missing), formatted."""
    texts = _texts()
    template = texts.get(language, {}).get(key) or texts["en"][key]
    return template.format(**values)


def _percent(probability: Any) -> str:
    try:
        return f"{round(float(probability) * 100)}%"
    except (TypeError, ValueError):
        return "?"


def _appendix_words(language: str, appendix: Appendix | str | None) -> str:
    value = appendix.value if isinstance(appendix, Appendix) else appendix
    if value in ("I", "II", "III"):
        return text(language, "appendix", appendix=value)
    return text(language, "not_listed")


def _taxon_name(taxonomy: Taxonomy, taxon_id: str, language: str) -> str:
    try:
        taxon = taxonomy.get(taxon_id)
    except TaxonNotFoundError:
        return taxon_id
    common = taxon.common_names.get(language) or taxon.common_names.get("en") or ""
    if taxon.kind == "taxon" and taxon.scientific_name:
        return f"{common} ({taxon.scientific_name})" if common else taxon.scientific_name
    return common or taxon.scientific_name or taxon_id


def _countries(codes: Iterable[str], language: str) -> str:
    listed = sorted(codes)
    if len(listed) <= _MAX_COUNTRIES:
        return ", ".join(listed)
    return text(language, "many_countries", count=len(listed))


def _member_listing(taxonomy: Taxonomy, taxon_id: str, language: str) -> str:
    """ "walrus (Odobenus rosmarus): Appendix III (Appendix II from BW, NA, ZA, ZW)"."""
    resolution = taxonomy.appendix_for(taxon_id, None)
    taxon = taxonomy.get(taxon_id)
    listing = next(
        (t for t in taxonomy.lineage(taxon_id) if t.appendix is not None or t.populations),
        taxon,
    )
    own = listing.appendix
    parts = [_appendix_words(language, own if own is not None else resolution.appendix)]
    for population in listing.populations:
        parts.append(
            text(
                language,
                "from_countries",
                appendix=_appendix_words(language, population.appendix),
                countries=_countries(population.countries, language),
            )
        )
    head, rest = parts[0], parts[1:]
    detail = f" ({'; '.join(rest)})" if rest else ""
    return text(
        language, "name_value", name=_taxon_name(taxonomy, taxon_id, language), value=head + detail
    )


def caveat(
    taxonomy: Taxonomy, taxon_id: str | None, origin_country: str | None, language: str
) -> str | None:
    """What the officer must still confirm about a decided taxon, or None: for a product group
    every member's listing; for a taxon listed only in some species, that the species decides."""
    if not taxon_id:
        return None
    try:
        taxon = taxonomy.get(taxon_id)
        resolution = taxonomy.appendix_for(taxon_id, origin_country)
    except (TaxonNotFoundError, ValueError):
        return None
    if taxon.kind == "group":
        members = "; ".join(_member_listing(taxonomy, m, language) for m in taxon.members)
        return text(language, "caveat_group", members=members)
    if resolution.confirm_species:
        return text(
            language,
            "caveat_species",
            name=taxon.scientific_name,
            appendix=_appendix_words(language, resolution.appendix),
        )
    return None


def explanation(
    decision: dict[str, Any], origin_country: str | None, language: str, taxonomy: Taxonomy
) -> str:
    """The decision's explanation in ``language`` (see the module docstring)."""
    kind = decision.get("kind")
    rule = str(decision.get("rule") or "")
    percent = _percent(decision.get("probability"))
    if kind == "unusable_image":
        problems = rule.partition(":")[2].split("+") if ":" in rule else []
        named = ", ".join(text(language, f"problem_{p}") for p in problems if p)
        return text(language, "unusable_image", problems=named or "?")
    if kind == "outside_training_domain":
        key = "outside_scanner" if rule.startswith("modality:") else "outside_ood"
        return text(language, key)
    if kind == "uncertain":
        return text(language, "uncertain", percent=percent)
    taxon = decision.get("taxon") or {}
    taxon_id = taxon.get("id")
    name = _taxon_name(taxonomy, taxon_id, language) if taxon_id else ""
    if kind == "lookalike":
        label = name or str(decision.get("label_name") or decision.get("label") or "")
        return text(language, "lookalike", name=label, percent=percent)
    rank = str(decision.get("rank") or "")
    rank_words = text(language, f"rank_{rank}") if rank in _RANKS else rank
    appendix = decision.get("appendix")
    if appendix in ("I", "II", "III"):
        where = (
            text(language, "for_origin", country=origin_country)
            if origin_country
            else text(language, "origin_unknown")
        )
        listing = f"{_appendix_words(language, appendix)} {where}"
    else:
        listing = text(language, "not_listed_for", country=origin_country or "-")
    return text(language, "taxon", name=name, rank=rank_words, percent=percent, listing=listing)


_RANKS = frozenset(
    {"kingdom", "phylum", "class", "order", "family", "genus", "species", "subspecies", "variety"}
    | {"group"}
)
