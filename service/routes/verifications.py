"""``/v1/verifications``: check images against declared CITES permit data, read them back.

Field names follow the CITES standard permit form and ePermit data elements; the mapping to
the form's boxes is in docs/api.md. Roles as for identifications: officers, scanners and admins
verify; every role reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile

from model.vocabulary import Modality
from service.deps import ContextDep, Identifier, Reader, SessionDep
from service.problems import ProblemError
from service.routes.identifications import Language, as_utc, spool_upload
from service.security import SINGLE_LINE_TEXT, refuse_control_characters
from service.verifications import (
    UploadedImage,
    VerificationFilter,
    Verifier,
    get_verification,
    list_verifications,
    render_verification,
)

router = APIRouter(prefix="/v1", tags=["verifications"])

Verdict = Literal["consistent", "inconsistent", "inconclusive"]
_TEXT = 600  # generous: the permit module gives each field its own limit, in the caller's language


def permit_form(
    permit_number: Annotated[str | None, Form(max_length=_TEXT, description="box 1")] = None,
    permit_type: Annotated[
        str | None, Form(max_length=_TEXT, description="export, import or re-export")
    ] = None,
    issuing_country: Annotated[
        str | None, Form(max_length=_TEXT, description="ISO alpha-2 of the issuing authority")
    ] = None,
    country_of_export: Annotated[str | None, Form(max_length=_TEXT, description="ISO")] = None,
    country_of_import: Annotated[str | None, Form(max_length=_TEXT, description="ISO")] = None,
    scientific_name: Annotated[
        str | None, Form(max_length=_TEXT, description="declared taxon (scientific name)")
    ] = None,
    appendix: Annotated[str | None, Form(max_length=_TEXT, description="I, II or III")] = None,
    source_code: Annotated[str | None, Form(max_length=_TEXT, description="W R D A ...")] = None,
    purpose_code: Annotated[str | None, Form(max_length=_TEXT, description="T Z G Q ...")] = None,
    description: Annotated[str | None, Form(max_length=_TEXT)] = None,
    quantity: Annotated[str | None, Form(max_length=_TEXT, description="a number > 0")] = None,
    unit: Annotated[str | None, Form(max_length=_TEXT, description="e.g. KIL, PCS")] = None,
    country_of_origin: Annotated[str | None, Form(max_length=_TEXT, description="ISO")] = None,
    valid_from: Annotated[str | None, Form(max_length=_TEXT, description="YYYY-MM-DD")] = None,
    valid_until: Annotated[str | None, Form(max_length=_TEXT, description="YYYY-MM-DD")] = None,
) -> dict[str, str | None]:
    """The declared permit fields, as sent (validated by :func:`model.permits.parse_permit`);
    control characters (NUL...) are refused with 422 (line breaks only in the description)."""
    fields = {
        "permit_number": permit_number,
        "permit_type": permit_type,
        "issuing_country": issuing_country,
        "country_of_export": country_of_export,
        "country_of_import": country_of_import,
        "scientific_name": scientific_name,
        "appendix": appendix,
        "source_code": source_code,
        "purpose_code": purpose_code,
        "description": description,
        "quantity": quantity,
        "unit": unit,
        "country_of_origin": country_of_origin,
        "valid_from": valid_from,
        "valid_until": valid_until,
    }
    refuse_control_characters(fields, multi_line=("description",))
    return fields


PermitFields = Annotated[dict[str, str | None], Depends(permit_form)]


@router.post(
    "/verifications",
    status_code=201,
    summary="Check images against declared permit data",
    responses={413: {"description": "too large"}, 422: {"description": "invalid permit data"}},
)
async def verify(
    response: Response,
    principal: Identifier,
    context: ContextDep,
    language: Language,
    permit: PermitFields,
    images: Annotated[list[UploadFile], File(description="one or more photos of the goods")],
    case_ref: Annotated[
        str | None, Form(max_length=120, pattern=SINGLE_LINE_TEXT, description="case reference")
    ] = None,
    modality: Annotated[Modality | None, Form(description="camera or xray")] = None,
) -> dict[str, Any]:
    """A verdict per image (consistent / inconsistent / inconclusive, with the reason), the
    permit checks that need no image, and the appendix for the declared origin."""
    settings = context.settings
    if len(images) > settings.max_batch_images:
        raise ProblemError(
            413,
            "batch-too-large",
            f"{len(images)} images in one verification; the limit is "
            f"{settings.max_batch_images} (CITES_MAX_BATCH_IMAGES).",
            title="Too many images",
        )
    uploads = [
        UploadedImage(u.filename, spool_upload(u, settings.max_upload_bytes)) for u in images
    ]
    verifier = Verifier(context.pipeline, context.taxonomy, context.sessions)
    result = await verifier.verify(
        permit,
        uploads,
        principal,
        case_ref=case_ref.strip() or None if case_ref else None,
        modality=modality,
        language=language,
    )
    response.headers["Location"] = f"/v1/verifications/{result['id']}"
    return render_verification(result, language)


@router.get("/verifications", summary="List verifications, newest first")
def list_all(
    principal: Reader,
    session: SessionDep,
    language: Language,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    case_ref: Annotated[str | None, Query(max_length=120)] = None,
    permit_number: Annotated[str | None, Query(max_length=64)] = None,
    verdict: Annotated[Verdict | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="ISO time, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO time, exclusive")] = None,
    mine: Annotated[bool, Query(description="only those made with my key")] = False,
) -> dict[str, Any]:
    """A page of verifications with optional filters (as for identifications)."""
    filters = VerificationFilter(
        case_ref=case_ref,
        permit_number=permit_number,
        verdict=verdict,
        created_by=principal.key_id if mine else None,
        since=as_utc(since),
        until=as_utc(until),
    )
    rows, total = list_verifications(session, filters, limit=limit, offset=offset)
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return {
        "items": [render_verification(r.result, language) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    }


@router.get("/verifications/{verification_id}", summary="One verification")
def get_one(
    verification_id: str, _principal: Reader, session: SessionDep, language: Language
) -> dict[str, Any]:
    """A stored verification, its reasons in the caller's language."""
    return render_verification(get_verification(session, verification_id).result, language)
