"""``/v1/taxa``: look up the CITES taxonomy."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from model.listing_status import listing_status
from model.taxonomy import InvalidCountryError, TaxonNotFoundError, Taxonomy
from service.deps import ContextDep, Reader
from service.problems import ProblemError

router = APIRouter(prefix="/v1/taxa", tags=["taxa"])


def taxon_to_dict(
    taxonomy: Taxonomy, taxon_id: str, origin_country: str | None = None
) -> dict[str, Any]:
    """A taxon with its lineage (and the appendix for an origin, when one is given)."""
    taxon = taxonomy.get(taxon_id)
    body: dict[str, Any] = taxon.to_dict()
    body["lineage"] = [
        {"id": t.id, "scientific_name": t.scientific_name, "rank": t.rank}
        for t in taxonomy.lineage(taxon_id)
    ]
    if origin_country is not None:
        resolution = taxonomy.appendix_for(taxon_id, origin_country)
        body["appendix_for_origin"] = resolution.to_dict()
        body["appendix_for_origin"]["listing"] = listing_status(taxonomy, resolution).to_dict()
    return body


@router.get("", summary="Search taxa by scientific or common name (en/fr/es)")
def search_taxa(
    context: ContextDep,
    _principal: Reader,
    q: Annotated[str, Query(min_length=1, max_length=200, description="name or part of it")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Taxa whose names match ``q``, best matches first."""
    taxonomy = context.taxonomy
    found = taxonomy.find(q)[:limit]
    return {"items": [taxon_to_dict(taxonomy, t.id) for t in found]}


@router.get("/{taxon_id}", summary="One taxon, its lineage and listings")
def get_taxon(
    taxon_id: str,
    context: ContextDep,
    _principal: Reader,
    origin_country: Annotated[
        str | None, Query(min_length=2, max_length=2, description="ISO 3166 alpha-2")
    ] = None,
) -> dict[str, Any]:
    """One taxon; with ``origin_country`` also the appendix that applies to that origin."""
    try:
        return taxon_to_dict(context.taxonomy, taxon_id, origin_country)
    except TaxonNotFoundError as exc:
        raise ProblemError(404, "not-found", str(exc), title="Taxon not found") from None
    except InvalidCountryError as exc:
        raise ProblemError(
            422, "validation-error", str(exc), title="Invalid origin country"
        ) from None
