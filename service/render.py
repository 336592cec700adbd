"""JSON shapes of identifications (docs/api.md): built once from a prediction and stored; the
language-dependent parts (guidance, common names) are added when a response is rendered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from model.labels import Label
from model.listing_status import listing_status
from model.predictor import Prediction, Predictor
from model.taxonomy import Appendix, TaxonNotFoundError, Taxonomy
from service.explain import caveat, explanation
from service.guidance import GuidanceBook
from service.imagestore import PreparedImage
from service.keys import Principal
from service.repository import iso
from service.tables import Feedback


def taxon_summary(taxonomy: Taxonomy, taxon_id: str | None) -> dict[str, Any] | None:
    """``{id, scientific_name, rank, kind, common_names}`` of a taxon, or None."""
    if not taxon_id:
        return None
    try:
        taxon = taxonomy.get(taxon_id)
    except TaxonNotFoundError:
        return {"id": taxon_id, "scientific_name": None, "rank": None, "kind": None}
    return {
        "id": taxon.id,
        "scientific_name": taxon.scientific_name,
        "rank": taxon.rank,
        "kind": taxon.kind,
        "common_names": dict(taxon.common_names),
    }


def listing_of(
    taxonomy: Taxonomy, taxon_id: str | None, origin_country: str | None
) -> dict[str, object] | None:
    """Whether the taxonomy row behind a taxon's appendix (for an origin) is verified against
    a source (``verified``, ``verification``, ``source``, ``status_checked``, ``row``); None for
    look-alikes, unknown taxa and taxa without an appendix."""
    if not taxon_id:
        return None
    try:
        resolution = taxonomy.appendix_for(taxon_id, origin_country)
    except (TaxonNotFoundError, ValueError):
        return None
    if resolution.basis in ("lookalike", "unlisted"):
        return None
    return listing_status(taxonomy, resolution).to_dict()


def appendix_of(taxonomy: Taxonomy, label: Label, origin_country: str | None) -> str | None:
    """The appendix that applies to a label's taxon for an origin (None: not listed)."""
    if label.kind != "cites" or not label.taxon_id:
        return None
    try:
        resolution = taxonomy.appendix_for(label.taxon_id, origin_country)
    except (TaxonNotFoundError, ValueError):
        return None
    return None if resolution.appendix is Appendix.NOT_LISTED else resolution.appendix.value


def build_result(
    prediction: Prediction,
    predictor: Predictor,
    taxonomy: Taxonomy,
    *,
    ident_id: str,
    created_at: datetime,
    principal: Principal,
    image: PreparedImage,
    modality: str,
    origin_country: str | None,
    case_ref: str | None,
    top_k: int,
    modality_source: str = "caller",
    location: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored body of a new identification (``location``: the x-ray model's box)."""
    labels = predictor.labels
    by_id = {label.id: label for label in labels}
    top = [
        {
            "rank": rank,
            "label": score.label.id,
            "label_name": score.label.name,
            "kind": score.label.kind,
            "probability": round(float(score.probability), 6),
            "taxon": taxon_summary(taxonomy, score.label.taxon_id),
            "appendix": appendix_of(taxonomy, score.label, origin_country),
            "listing": listing_of(
                taxonomy,
                score.label.taxon_id if score.label.kind == "cites" else None,
                origin_country,
            ),
        }
        for rank, score in enumerate(prediction.top[: max(1, top_k)], start=1)
    ]
    decision = prediction.decision
    deciding = by_id.get(decision.label_id) if decision.label_id else None
    return {
        "id": ident_id,
        "created_at": iso(created_at),
        "created_by": principal.name,
        "image": image_summary(image, f"/v1/identifications/{ident_id}/image"),
        "model_version": predictor.version,
        "modality": modality,
        "origin_country": origin_country,
        "case_ref": case_ref,
        "top_k": top,
        "decision": {
            "kind": decision.kind,
            "rule": decision.rule,
            "label": decision.label_id,
            "label_name": deciding.name if deciding else None,
            "taxon": taxon_summary(taxonomy, decision.taxon_id),
            "rank": decision.rank,
            "appendix": decision.appendix,
            "listing": listing_of(taxonomy, decision.taxon_id, origin_country)
            if decision.appendix
            else None,
            "probability": round(float(decision.probability), 6),
            "explanation": decision.reason,
            "refer_to_expert": decision.refer_to_expert,
        },
        "heatmap_url": f"/v1/identifications/{ident_id}/heatmap",
        "modality_source": modality_source,
        "location": _with_image_url(location, ident_id),
    }


def image_summary(image: PreparedImage, url: str) -> dict[str, Any]:
    """What an answer says of a stored image, with the URL that serves it."""
    return {
        "sha256": image.sha256,
        "mime": image.mime,
        "width": image.width,
        "height": image.height,
        "size": image.size,
        "gps_removed": image.gps_removed,
        "location_removed": list(image.location_removed),
        "url": url,
    }


def view_entry(
    position: int,
    prediction: Prediction,
    image: PreparedImage,
    ident_id: str,
    *,
    used: bool,
    location: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One photo of a multi-view identification: its image, whether it took part in the
    fused answer, and its own answer (decision and most probable label)."""
    decision = prediction.decision
    top = prediction.top[0] if prediction.top else None
    base = f"/v1/identifications/{ident_id}"
    return {
        "position": position,
        "image": image_summary(image, f"{base}/image?view={position}"),
        "used": used,
        "decision": {
            "kind": decision.kind,
            "rule": decision.rule,
            "label": decision.label_id,
            "probability": round(float(decision.probability), 6),
        },
        "top": None
        if top is None
        else {
            "label": top.label.id,
            "label_name": top.label.name,
            "kind": top.label.kind,
            "probability": round(float(top.probability), 6),
        },
        "ood_score": None if prediction.ood_score is None else round(prediction.ood_score, 4),
        "heatmap_url": f"{base}/heatmap?view={position}",
        "location": location,
    }


def _with_image_url(location: dict[str, Any] | None, ident_id: str) -> dict[str, Any] | None:
    """The location with the URL of the scan with its box drawn (when there is a box)."""
    if location is None:
        return None
    url = f"/v1/identifications/{ident_id}/located" if location.get("box") else None
    return {**location, "image_url": url}


def _localise_taxon(taxon: dict[str, Any] | None, language: str) -> None:
    if taxon is None:
        return
    names = taxon.get("common_names") or {}
    taxon["common_name"] = names.get(language) or names.get("en")


def render_identification(
    result: dict[str, Any],
    language: str,
    guidance: GuidanceBook,
    feedback: Feedback | None,
    *,
    taxonomy: Taxonomy | None = None,
) -> dict[str, Any]:
    """A response body: the stored result plus guidance, common names in ``language`` and the
    latest feedback; with ``taxonomy``, the decision's ``explanation`` and ``caveat`` (what
    must still be confirmed, for product groups) in ``language`` too (:mod:`service.explain`)."""
    body = dict(result)
    body["top_k"] = [dict(entry) for entry in result.get("top_k", [])]
    decision = dict(result["decision"])
    body["decision"] = decision
    for entry in body["top_k"]:
        entry["taxon"] = dict(entry["taxon"]) if entry.get("taxon") else None
        _localise_taxon(entry["taxon"], language)
    decision["taxon"] = dict(decision["taxon"]) if decision.get("taxon") else None
    _localise_taxon(decision["taxon"], language)
    if taxonomy is not None:
        origin = result.get("origin_country")
        decision["explanation"] = explanation(decision, origin, language, taxonomy)
        decision["caveat"] = caveat(taxonomy, (decision["taxon"] or {}).get("id"), origin, language)
    body["guidance"] = guidance.lookup(
        decision["kind"], decision.get("appendix"), language
    ).to_dict()
    body["feedback"] = feedback_dict(feedback) if feedback is not None else None
    return body


def feedback_dict(row: Feedback) -> dict[str, Any]:
    """JSON-ready form of a feedback entry."""
    return {
        "id": row.id,
        "identification_id": row.identification_id,
        "created_at": iso(row.created_at),
        "created_by": row.created_by_name,
        "verdict": row.verdict,
        "label": row.label,
        "taxon_id": row.taxon_id,
        "note": row.note,
        "case_ref": row.case_ref,
    }
