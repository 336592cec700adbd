"""CITES permit cross-check: validate declared permit data, run the checks that need no image,
and compare what an image suggests with what the permit declares. Pure: no HTTP, no database.

Codes and their sources: ``../shared/reference/cites-permits-and-species-plus.md`` (purpose codes
after Res. Conf. 12.3 (Rev. CoP18); source codes from unepwcmc/SAPI, checked against EU Reg.
865/2006 Annex I and 50 CFR 23.24). Field names follow the CITES standard permit form and the
ePermit data elements; the mapping is in ``docs/api.md``.

Every finding is a :class:`Finding`: a code, an outcome and language-independent parameters,
written out in en/fr/es by :func:`model.permit_texts.render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Literal

from model.listing_status import listing_status
from model.permit_texts import render
from model.speciesplus import find_by_scientific_name
from model.taxonomy import (
    Appendix,
    AppendixResolution,
    InvalidCountryError,
    Taxon,
    Taxonomy,
)

Outcome = Literal["consistent", "inconsistent", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("consistent", "inconsistent", "inconclusive")

CODES_SOURCE = "../shared/reference/cites-permits-and-species-plus.md"

PERMIT_TYPES: dict[str, str] = {
    "export": "export permit",
    "import": "import permit",
    "re-export": "re-export certificate",
}
"""Permit types (Res. Conf. 12.3 standard form, box 'Export / Import / Re-export')."""

PURPOSE_CODES: dict[str, str] = {
    "T": "commercial",
    "Z": "zoo",
    "G": "botanical garden",
    "Q": "circus or travelling exhibition",
    "S": "scientific",
    "H": "hunting trophy",
    "P": "personal",
    "M": "medical (including biomedical research)",
    "E": "educational",
    "N": "reintroduction or introduction into the wild",
    "B": "breeding in captivity or artificial propagation",
    "L": "law enforcement / judicial / forensic",
}
"""Purpose codes (cites.org, adapted from Res. Conf. 12.3 (Rev. CoP18); SAPI purpose_codes)."""

SOURCE_CODES: dict[str, str] = {
    "W": "wild",
    "R": "ranched",
    "D": "Appendix-I animals bred in captivity / plants artificially propagated for commercial "
    "purposes in registered operations",
    "A": "artificially propagated plants",
    "C": "animals bred in captivity",
    "F": "animals born in captivity (F1 or later) not meeting 'bred in captivity'",
    "U": "source unknown (must be justified)",
    "I": "confiscated or seized",
    "O": "pre-Convention",
    "X": "taken in the marine environment not under the jurisdiction of any State",
}
"""Source codes (unepwcmc/SAPI source_codes; EU Reg. 865/2006 Annex I; 50 CFR 23.24). ``Y`` is
left out on purpose: the reference file could not verify it."""

DECLARED_APPENDICES: tuple[str, ...] = ("I", "II", "III")

TEXT_LIMITS: dict[str, int] = {
    "permit_number": 64,
    "scientific_name": 200,
    "description": 500,
    "unit": 32,
}


@dataclass(frozen=True)
class FieldIssue:
    """One refused field: a text code of :mod:`model.permit_texts` with its parameters."""

    field: str
    code: str
    params: Mapping[str, object]

    def message(self, language: str) -> str:
        """The issue in words."""
        return render(self.code, {"field": self.field, **self.params}, language)


class PermitDataError(ValueError):
    """The declared permit data are invalid; :attr:`issues` says which field and why."""

    def __init__(self, issues: Sequence[FieldIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__(self.message("en"))

    def message(self, language: str) -> str:
        """All issues in one sentence, in ``language``."""
        details = "; ".join(issue.message(language) for issue in self.issues)
        return render("invalid_permit", {"details": details}, language)


@dataclass(frozen=True)
class DeclaredPermit:
    """The declared data of one permit line (validated; countries are ISO alpha-2 codes)."""

    permit_number: str
    permit_type: str
    issuing_country: str
    country_of_export: str
    country_of_import: str
    scientific_name: str
    appendix: str
    source_code: str
    purpose_code: str
    valid_until: date
    valid_from: date | None = None
    country_of_origin: str | None = None
    description: str | None = None
    quantity: float | None = None
    unit: str | None = None

    @property
    def origin(self) -> str | None:
        """The country the specimens originate in: box 'country of origin' when given, else
        the country of export of an export permit (a re-export or import permit without a
        declared origin leaves it unknown)."""
        if self.country_of_origin:
            return self.country_of_origin
        return self.country_of_export if self.permit_type == "export" else None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (dates as ISO text)."""
        data = asdict(self)
        data["valid_until"] = self.valid_until.isoformat()
        data["valid_from"] = self.valid_from.isoformat() if self.valid_from else None
        return data


def parse_permit(fields: Mapping[str, str | None], taxonomy: Taxonomy) -> DeclaredPermit:
    """Validate the declared permit fields (form text); raise :class:`PermitDataError` listing
    every refused field (unknown codes, countries, dates; missing required fields)."""
    issues: list[FieldIssue] = []

    def text(name: str, *, required: bool) -> str | None:
        value = (fields.get(name) or "").strip()
        if not value:
            if required:
                issues.append(FieldIssue(name, "field_required", {}))
            return None
        limit = TEXT_LIMITS.get(name)
        if limit is not None and len(value) > limit:
            issues.append(FieldIssue(name, "field_too_long", {"limit": limit}))
            return None
        return value

    def code(name: str, allowed: Mapping[str, str] | Sequence[str], *, upper: bool) -> str | None:
        value = text(name, required=True)
        if value is None:
            return None
        value = value.upper() if upper else value.lower()
        if value not in allowed:
            issues.append(
                FieldIssue(
                    name,
                    "unknown_code",
                    {"value": value, "allowed": ", ".join(allowed), "source": CODES_SOURCE},
                )
            )
            return None
        return value

    def country(name: str, *, required: bool) -> str | None:
        value = text(name, required=required)
        if value is None:
            return None
        try:
            return taxonomy.normalize_country(value)
        except InvalidCountryError:
            issues.append(FieldIssue(name, "unknown_country", {"value": value}))
            return None

    def day(name: str, *, required: bool) -> date | None:
        value = text(name, required=required)
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            issues.append(FieldIssue(name, "bad_date", {"value": value}))
            return None

    permit_number = text("permit_number", required=True)
    permit_type = code("permit_type", tuple(PERMIT_TYPES), upper=False)
    issuing = country("issuing_country", required=True)
    exporter = country("country_of_export", required=True)
    importer = country("country_of_import", required=True)
    origin = country("country_of_origin", required=False)
    name = text("scientific_name", required=True)
    appendix = code("appendix", DECLARED_APPENDICES, upper=True)
    source = code("source_code", SOURCE_CODES, upper=True)
    purpose = code("purpose_code", PURPOSE_CODES, upper=True)
    description = text("description", required=False)
    unit = text("unit", required=False)
    valid_from = day("valid_from", required=False)
    valid_until = day("valid_until", required=True)
    quantity: float | None = None
    raw_quantity = text("quantity", required=False)
    if raw_quantity is not None:
        try:
            quantity = float(raw_quantity)
        except ValueError:
            quantity = None
        if quantity is None or not quantity > 0 or quantity == float("inf"):
            issues.append(FieldIssue("quantity", "bad_quantity", {"value": raw_quantity}))
            quantity = None
        elif unit is None:
            issues.append(FieldIssue("unit", "quantity_without_unit", {}))
    if valid_from and valid_until and valid_from > valid_until:
        issues.append(
            FieldIssue(
                "valid_from",
                "dates_reversed",
                {"valid_from": valid_from.isoformat(), "valid_until": valid_until.isoformat()},
            )
        )
    if issues or valid_until is None:  # a missing required field is always an issue
        raise PermitDataError(issues)
    return DeclaredPermit(
        permit_number=permit_number or "",
        permit_type=permit_type or "",
        issuing_country=issuing or "",
        country_of_export=exporter or "",
        country_of_import=importer or "",
        scientific_name=name or "",
        appendix=appendix or "",
        source_code=source or "",
        purpose_code=purpose or "",
        valid_until=valid_until,
        valid_from=valid_from,
        country_of_origin=origin,
        description=description,
        quantity=quantity,
        unit=unit,
    )


@dataclass(frozen=True)
class Finding:
    """One outcome of a check, with the words to explain it (rendered per language)."""

    check: str
    outcome: Outcome
    code: str
    params: Mapping[str, object] = field(default_factory=dict)

    def reason(self, language: str) -> str:
        """The finding in words."""
        return render(self.code, self.params, language)

    def to_dict(self) -> dict[str, object]:
        """Stored form (language-independent)."""
        return {
            "check": self.check,
            "outcome": self.outcome,
            "code": self.code,
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class PermitAssessment:
    """The checks of a permit that need no image, and the declared taxon as resolved."""

    permit: DeclaredPermit
    taxon: Taxon | None
    resolution: AppendixResolution | None
    checks: tuple[Finding, ...]
    listing: Mapping[str, object] | None

    @property
    def applicable_appendix(self) -> str | None:
        """The appendix the taxonomy gives the declared taxon for the declared origin."""
        return self.resolution.appendix.value if self.resolution else None


def find_declared_taxon(taxonomy: Taxonomy, scientific_name: str) -> Taxon | None:
    """The taxon a permit declares: scientific name or synonym (``Manis spp.`` is the genus
    ``Manis``); None when the taxonomy has no such taxon. Common names are not accepted."""
    return find_by_scientific_name(taxonomy, scientific_name)


def assess_permit(permit: DeclaredPermit, taxonomy: Taxonomy, today: date) -> PermitAssessment:
    """Run the permit checks that need no image: the declared appendix against the taxonomy
    for the declared origin, the validity dates, and the purpose for Appendix I trade."""
    taxon = find_declared_taxon(taxonomy, permit.scientific_name)
    resolution = taxonomy.appendix_for(taxon.id, permit.origin) if taxon else None
    checks = [
        _appendix_check(permit, taxon, resolution, taxonomy),
        _validity_check(permit, today),
        _purpose_check(permit, resolution),
    ]
    listing = None
    if taxon is not None and resolution is not None:
        status = listing_status(taxonomy, resolution)
        listing = status.to_dict()
        if not status.verified:
            checks.append(
                Finding(
                    "listing_source",
                    "inconclusive",
                    "listing_unverified",
                    {"name": taxon.scientific_name, "row": status.row},
                )
            )
    return PermitAssessment(permit, taxon, resolution, tuple(checks), listing)


def _origin_text(permit: DeclaredPermit) -> str:
    return permit.origin or "?"


def _appendix_check(
    permit: DeclaredPermit,
    taxon: Taxon | None,
    resolution: AppendixResolution | None,
    taxonomy: Taxonomy,
) -> Finding:
    if taxon is None or resolution is None:
        return Finding(
            "appendix", "inconclusive", "taxon_unknown", {"declared_name": permit.scientific_name}
        )
    params: dict[str, object] = {
        "name": taxon.scientific_name,
        "origin": _origin_text(permit),
        "declared_appendix": permit.appendix,
        "applicable_appendix": resolution.appendix.value,
    }
    if resolution.basis == "descendants" or resolution.confirm_species:
        return Finding("appendix", "inconclusive", "appendix_needs_species", params)
    if resolution.origin_dependent and permit.origin is None:
        return Finding("appendix", "inconclusive", "appendix_needs_origin", params)
    if resolution.appendix.value != permit.appendix:
        rule = resolution.rule or resolution.explanation
        return Finding("appendix", "inconsistent", "appendix_contradicts", {**params, "rule": rule})
    return Finding("appendix", "consistent", "appendix_matches", params)


def _validity_check(permit: DeclaredPermit, today: date) -> Finding:
    params: dict[str, object] = {
        "valid_from": permit.valid_from.isoformat() if permit.valid_from else "?",
        "valid_until": permit.valid_until.isoformat(),
        "today": today.isoformat(),
    }
    if permit.valid_until < today:
        return Finding("validity", "inconsistent", "expired", params)
    if permit.valid_from is not None and permit.valid_from > today:
        return Finding("validity", "inconsistent", "not_yet_valid", params)
    code = "valid" if permit.valid_from is not None else "valid_until"
    return Finding("validity", "consistent", code, params)


def _purpose_check(permit: DeclaredPermit, resolution: AppendixResolution | None) -> Finding:
    applicable = resolution.appendix.value if resolution else permit.appendix
    if permit.appendix == "I":  # the stricter of declared and resolved decides
        applicable = "I"
    params: dict[str, object] = {
        "purpose_code": permit.purpose_code,
        "purpose": PURPOSE_CODES[permit.purpose_code],
        "source_code": permit.source_code,
        "applicable_appendix": applicable,
    }
    if applicable == "I" and permit.purpose_code == "T":
        if permit.source_code == "O":
            return Finding("purpose", "inconclusive", "purpose_pre_convention", params)
        if permit.source_code != "D":
            return Finding("purpose", "inconsistent", "purpose_commercial_appendix_i", params)
    return Finding("purpose", "consistent", "purpose_allowed", params)


# ---- image against permit ------------------------------------------------------------------
@dataclass(frozen=True)
class ImageEvidence:
    """What the model decided for one image (from an identification)."""

    kind: str  # taxon, lookalike, uncertain, outside_training_domain (model.decision)
    taxon_id: str | None
    name: str | None
    probability: float
    model_reason: str = ""


def compare_image(
    assessment: PermitAssessment, evidence: ImageEvidence, taxonomy: Taxonomy
) -> Finding:
    """Does the image agree with the declared taxon? ``consistent`` when the suggested taxon is
    the declared one, above it or below it in the tree (or a group holding it); ``inconsistent``
    when the model is confident of another taxon or of a look-alike material; ``inconclusive``
    when the model is not confident or the declared taxon is unknown here."""
    permit = assessment.permit
    declared = assessment.taxon
    origin = permit.origin
    params: dict[str, object] = {
        "declared_name": declared.scientific_name if declared else permit.scientific_name,
        "declared_appendix": permit.appendix,
        "probability": round(evidence.probability, 4),
    }
    if evidence.kind not in ("taxon", "lookalike") or evidence.taxon_id is None:
        reason = evidence.model_reason or evidence.kind.replace("_", " ")
        return Finding(
            "image",
            "inconclusive",
            "image_uncertain",
            {**params, "model_reason": reason, "model_kind": evidence.kind},
        )
    suggested = taxonomy.get(evidence.taxon_id)
    suggestion = taxonomy.appendix_for(suggested.id, origin)
    params["suggested_name"] = suggested.scientific_name
    params["suggested_appendix"] = suggestion.appendix.value
    params["suggested_taxon_id"] = suggested.id
    if suggested.kind != "taxon":  # a product group or material: named in the reader's language
        params["suggested_common"] = dict(suggested.common_names)
    if evidence.kind == "lookalike" or suggested.kind == "lookalike":
        return Finding("image", "inconsistent", "image_lookalike", params)
    if declared is None:
        return Finding("image", "inconclusive", "image_unknown_declared", params)
    relation = _relation(taxonomy, declared, suggested)
    if relation == "same_or_below":
        return Finding("image", "consistent", "image_matches", params)
    if relation == "above":  # name what else it holds that is stricter than declared
        stricter = _stricter_inside(taxonomy, suggested, origin, Appendix(permit.appendix))
        return Finding(
            "image", "consistent", "image_matches_higher", {**params, "also_includes": stricter}
        )
    # the reason already gives the suggested taxon's appendix: name only what is stricter still
    floor = max(Appendix(permit.appendix), suggestion.appendix, key=lambda a: a.strictness)
    includes = _stricter_inside(taxonomy, suggested, origin, floor)
    return Finding("image", "inconsistent", "image_differs", {**params, "includes": includes})


def _relation(taxonomy: Taxonomy, declared: Taxon, suggested: Taxon) -> str:
    """``same_or_below`` (suggested is the declared taxon or inside it), ``above`` (suggested
    is a higher taxon or group containing the declared one) or ``unrelated``."""
    declared_line = {t.id for t in taxonomy.lineage(declared.id)}
    if suggested.kind == "group":
        members = [taxonomy.get(m) for m in suggested.members]
        if any(m.id in declared_line for m in members):
            return "above"
        if any(declared.id in {t.id for t in taxonomy.lineage(m.id)} for m in members):
            return "above"
        return "unrelated"
    if declared.id in {t.id for t in taxonomy.lineage(suggested.id)}:
        return "same_or_below"
    if suggested.id in declared_line:
        return "above"
    return "unrelated"


def _stricter_inside(
    taxonomy: Taxonomy, suggested: Taxon, origin: str | None, floor: Appendix
) -> dict[str, object]:
    """When the suggested taxon (or group) holds taxa listed more strictly than ``floor`` (the
    declared appendix or the suggested taxon's own, whichever is stricter), the strictest
    appendix and up to three of their names (``D. nigra``), else ``{}``."""
    if suggested.kind == "group":
        inside = [taxonomy.get(m) for m in suggested.members]
        inside += [d for m in inside for d in taxonomy.descendants(m.id)]
    else:
        inside = taxonomy.descendants(suggested.id)
    declared_strictness = floor.strictness
    found: dict[Appendix, list[str]] = {}
    for taxon in inside:
        if taxon.appendix is None and not taxon.populations:
            continue
        appendix = taxonomy.appendix_for(taxon.id, origin).appendix
        if appendix.strictness > declared_strictness:
            found.setdefault(appendix, []).append(_short_name(taxon.scientific_name))
    if not found:
        return {}
    strict = max(found, key=lambda a: a.strictness)
    names = list(dict.fromkeys(found[strict]))
    return {"strict_appendix": strict.value, "strict_names": ", ".join(names[:3])}


def _short_name(name: str) -> str:
    """``Dalbergia nigra`` -> ``D. nigra``; a one-word name stays."""
    parts = name.split()
    return f"{parts[0][0]}. {' '.join(parts[1:])}" if len(parts) > 1 else name


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """Overall verdict: any inconsistent wins, then any inconclusive, else consistent."""
    if "inconsistent" in outcomes:
        return "inconsistent"
    if "inconclusive" in outcomes or not outcomes:
        return "inconclusive"
    return "consistent"
