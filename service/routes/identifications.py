"""``/v1/identifications``: identify images, read them back, give feedback."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from model.fusion import MAX_VIEWS
from model.heatmap import draw_box
from model.imageio import decode_image
from model.taxonomy import TaxonNotFoundError
from model.vocabulary import DecisionKind, Modality
from service.context import AppContext
from service.deps import (
    BatchIdentifier,
    ContextDep,
    FeedbackGiver,
    Identifier,
    Reader,
    SessionDep,
)
from service.device_cases import (
    DeviceAnswer,
    check_device_views,
    find_synced,
    parse_device_answer,
)
from service.guidance import negotiate_language
from service.identify import IdentificationPipeline, IdentifyOptions
from service.keys import Principal
from service.problems import ProblemError, too_many_views, upload_too_large
from service.render import feedback_dict, render_identification
from service.repository import (
    ListFilter,
    add_feedback,
    feedback_history,
    latest_feedback,
    list_identifications,
    view_shas,
)
from service.scope import EVERYTHING, RecordScope, Visibility, visibility_for
from service.security import MULTI_LINE_TEXT, SINGLE_LINE_TEXT
from service.tables import Identification, StoredImage
from service.uploads import Upload

router = APIRouter(prefix="/v1", tags=["identifications"])


def get_language(
    response: Response,
    accept_language: Annotated[str | None, Header(description="en, fr or es (q-values)")] = None,
) -> str:
    """The guidance language negotiated from ``Accept-Language``."""
    language = negotiate_language(accept_language)
    response.headers["Content-Language"] = language
    return language


Language = Annotated[str, Depends(get_language)]


def get_pipeline(context: ContextDep) -> IdentificationPipeline:
    """The identification pipeline of this app."""
    return context.pipeline


PipelineDep = Annotated[IdentificationPipeline, Depends(get_pipeline)]


def form_options(
    modality: Annotated[Modality | None, Form(description="camera or xray")] = None,
    top_k: Annotated[int, Form(ge=1, le=20, description="labels to return")] = 5,
    origin_country: Annotated[
        str | None, Form(min_length=2, max_length=2, description="ISO 3166 alpha-2")
    ] = None,
    case_ref: Annotated[
        str | None, Form(max_length=120, pattern=SINGLE_LINE_TEXT, description="case reference")
    ] = None,
) -> IdentifyOptions:
    """The optional form fields shared by single and batch identification."""
    return IdentifyOptions(
        modality=modality,
        top_k=top_k,
        origin_country=origin_country.upper() if origin_country else None,
        case_ref=case_ref.strip() or None if case_ref else None,
    )


Options = Annotated[IdentifyOptions, Depends(form_options)]


def json_answer(body: dict[str, Any], response: Response, status_code: int) -> JSONResponse:
    """``body`` as JSON with the headers the dependencies set on ``response`` (Content-Language,
    Location). Returning a response skips FastAPI's generic encoding of the answer
    (``jsonable_encoder`` walks every value again: about half a millisecond per identification);
    the answer is plain JSON data already."""
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return JSONResponse(body, status_code=status_code, headers=headers)


def created(
    result: dict[str, Any], response: Response, context: AppContext, language: str
) -> JSONResponse:
    """201 with ``Location`` and the new identification rendered in ``language``."""
    response.headers["Location"] = f"/v1/identifications/{result['id']}"
    rendered = render_identification(
        result, language, context.guidance, None, taxonomy=context.taxonomy
    )
    return json_answer(rendered, response, 201)


def spool_upload(upload: UploadFile, limit: int) -> Upload:
    """The upload as the form parser spooled it (read by the decoder, not here)."""
    spooled = Upload.from_form(upload)
    if spooled.size > limit:
        raise upload_too_large(spooled.size, limit)
    return spooled


@router.post(
    "/identifications",
    status_code=201,
    summary="Identify one image",
    response_model=None,
    responses={
        200: {"description": "the stored answer of a case already synced from the phone"},
        201: {"description": "the identification", "content": {"application/json": {}}},
        413: {"description": "too large"},
        422: {"description": "unusable input"},
    },
)
async def identify_one(
    request: Request,
    response: Response,
    principal: Identifier,
    pipeline: PipelineDep,
    context: ContextDep,
    options: Options,
    language: Language,
    image: Annotated[UploadFile, File(description="the photo or x-ray image")],
    device_answer: Annotated[
        str | None,
        Form(description="a case made offline: the phone's answer as JSON (docs/web.md)"),
    ] = None,
) -> JSONResponse:
    """Suggest likely CITES taxa for one uploaded image, with decision and guidance. With
    ``device_answer`` (a case made on the phone offline) both answers are stored, and a repeated
    upload of the same case returns the stored one (200) instead of a second case."""
    if len((await request.form()).getlist("image")) > 1:  # parsed once, cached by Starlette
        raise ProblemError(
            422,
            "duplicate-image-part",
            "The upload has more than one 'image' part; send one image per request, or use "
            "/v1/identifications:batch with 'images' parts.",
            title="More than one image",
        )
    options, already = _offline_case(
        device_answer, 1, options, principal, context, response, language
    )
    if already is not None:
        return already
    upload = spool_upload(image, context.settings.max_upload_bytes)
    result = await pipeline.identify(upload, options, principal)
    return created(result, response, context, language)


def _offline_case(
    device_answer: str | None,
    photos: int,
    options: IdentifyOptions,
    principal: Principal,
    context: AppContext,
    response: Response,
    language: str,
) -> tuple[IdentifyOptions, JSONResponse | None]:
    """A case made on the phone (``device_answer`` of ``photos`` photos), checked: the options
    that store the phone's answer beside the service's, and the stored answer (200) when the
    case was already synced (a retry), else None."""
    device = parse_device_answer(device_answer)
    check_device_views(device, photos)
    if device is None:
        return options, None
    return replace(options, device=device), _synced_case(
        device, principal, context, response, language
    )


def _synced_case(
    device: DeviceAnswer,
    principal: Principal,
    context: AppContext,
    response: Response,
    language: str,
) -> JSONResponse | None:
    """The stored answer (200) of a case from the phone that was already synced, else None."""
    with context.sessions() as session:
        synced = find_synced(session, principal, device)
        row = session.get(Identification, synced) if synced else None
        if row is None:
            return None
        response.headers["Location"] = f"/v1/identifications/{row.id}"
        stored = render_identification(
            row.result,
            language,
            context.guidance,
            latest_feedback(session, [row.id]).get(row.id),
            taxonomy=context.taxonomy,
        )
        return json_answer(stored, response, 200)


@router.post(
    "/identifications:batch",
    summary="Identify many images (scanner systems)",
    response_model=None,
    responses={200: {"description": "one entry per image", "content": {"application/json": {}}}},
)
async def identify_batch(
    response: Response,
    principal: BatchIdentifier,
    pipeline: PipelineDep,
    context: ContextDep,
    options: Options,
    language: Language,
    images: Annotated[list[UploadFile], File(description="the images, in order")],
) -> JSONResponse:
    """Identify up to ``CITES_MAX_BATCH_IMAGES`` images; one bad image gives an error entry."""
    settings = context.settings
    if len(images) > settings.max_batch_images:
        raise ProblemError(
            413,
            "batch-too-large",
            f"{len(images)} images in one call; the limit is {settings.max_batch_images} "
            "(CITES_MAX_BATCH_IMAGES). Split the batch.",
            title="Batch too large",
        )
    predictor = pipeline.active_predictor()
    options = pipeline.check_options(options)

    async def one(upload: UploadFile) -> dict[str, Any]:
        # each image goes to the model of its modality (camera and x-ray may be mixed)
        spooled = spool_upload(upload, settings.max_upload_bytes)
        return await pipeline.identify(spooled, options, principal)

    outcomes = await asyncio.gather(*(one(u) for u in images), return_exceptions=True)
    results: list[dict[str, Any]] = []
    for index, (upload, outcome) in enumerate(zip(images, outcomes, strict=True)):
        entry: dict[str, Any] = {"index": index, "filename": upload.filename}
        if isinstance(outcome, ProblemError):
            entry["error"] = outcome.to_dict(language=language)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            entry["identification"] = render_identification(
                outcome, language, context.guidance, None, taxonomy=context.taxonomy
            )
        results.append(entry)
    used = sorted({r["identification"]["model_version"] for r in results if "identification" in r})
    body = {
        "model_version": used[0] if len(used) == 1 else predictor.version,
        "model_versions": used,
        "results": results,
    }
    return json_answer(body, response, 200)


@router.post(
    "/identifications:views",
    status_code=201,
    summary="Identify one object from several photos (multi-view)",
    response_model=None,
    responses={
        200: {"description": "the stored answer of a case already synced from the phone"},
        201: {"description": "one fused identification", "content": {"application/json": {}}},
        413: {"description": "too large, or more than 6 photos"},
        422: {"description": "an unusable photo (named), or photos of different modalities"},
    },
)
async def identify_views(
    response: Response,
    principal: Identifier,
    pipeline: PipelineDep,
    context: ContextDep,
    options: Options,
    language: Language,
    images: Annotated[
        list[UploadFile],
        File(description="1 to 6 photos of the same object (front, back, close-ups), in order"),
    ],
    device_answer: Annotated[
        str | None,
        Form(description="a case made offline: the phone's fused answer as JSON (docs/web.md)"),
    ] = None,
) -> JSONResponse:
    """One answer for one object photographed several times: each photo is stored and answered
    on its own (``views``), and the answer fuses them (``fusion``; docs/api.md). With
    ``device_answer`` (a multi-view case made on the phone offline) both answers are stored,
    and a repeated upload of the same case returns the stored one (200)."""
    if len(images) > MAX_VIEWS:  # refuse before reading a byte of any photo
        raise too_many_views(len(images), MAX_VIEWS)
    options, already = _offline_case(
        device_answer, len(images), options, principal, context, response, language
    )
    if already is not None:
        return already
    spooled = [spool_upload(upload, context.settings.max_upload_bytes) for upload in images]
    result = await pipeline.identify_views(spooled, options, principal)
    return created(result, response, context, language)


def _visibility(session: Session, principal: Principal, context: AppContext) -> Visibility:
    return visibility_for(session, principal, RecordScope(context.settings.record_scope))


def _get(
    session: Session, identification_id: str, visibility: Visibility = EVERYTHING
) -> Identification:
    row = session.get(Identification, identification_id)
    if row is None or not visibility.allows(row.created_by):  # out of scope: as if absent
        raise ProblemError(
            404,
            "not-found",
            f"No identification {identification_id!r}.",
            title="Identification not found",
        )
    return row


ViewQuery = Annotated[
    int,
    Query(ge=0, lt=MAX_VIEWS, description="which photo of a multi-view identification (from 0)"),
]


def _view_sha(session: Session, row: Identification, view: int) -> str:
    """The sha256 of photo ``view`` of an identification (404 when it has no such photo)."""
    if view == 0:  # the first photo is the identification's own image: no lookup
        return row.image_sha256
    shas = view_shas(session, row)
    if view >= len(shas):
        raise ProblemError(
            404,
            "not-found",
            f"Identification {row.id} has {len(shas)} photo(s); there is no view {view} "
            f"(views count from 0).",
            title="No such photo",
        )
    return shas[view]


def as_utc(value: datetime | None) -> datetime | None:
    """A query time as aware UTC (naive times are taken as UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/identifications", summary="List identifications, newest first")
def list_all(
    principal: Reader,
    context: ContextDep,
    session: SessionDep,
    language: Language,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,  # SQL integers are 64-bit
    since: Annotated[datetime | None, Query(description="ISO time, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO time, exclusive")] = None,
    case_ref: Annotated[str | None, Query(max_length=120, pattern=SINGLE_LINE_TEXT)] = None,
    decision: Annotated[DecisionKind | None, Query()] = None,
    label: Annotated[str | None, Query(max_length=200, pattern=SINGLE_LINE_TEXT)] = None,
    mine: Annotated[bool, Query(description="only those made with my key")] = False,
) -> dict[str, Any]:
    """A page of identifications with optional filters."""
    filters = ListFilter(
        since=as_utc(since),
        until=as_utc(until),
        case_ref=case_ref,
        decision=decision,
        label=label,
        created_by=principal.key_id if mine else None,
        visible_keys=_visibility(session, principal, context).key_ids,
    )
    rows, total = list_identifications(session, filters, limit=limit, offset=offset)
    feedback = latest_feedback(session, [r.id for r in rows])
    items = [
        render_identification(
            r.result, language, context.guidance, feedback.get(r.id), taxonomy=context.taxonomy
        )
        for r in rows
    ]
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return {
        "items": items,
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    }


@router.get("/identifications/{identification_id}", summary="One identification")
def get_one(
    identification_id: str,
    principal: Reader,
    context: ContextDep,
    session: SessionDep,
    language: Language,
) -> dict[str, Any]:
    """An identification with its latest feedback."""
    row = _get(session, identification_id, _visibility(session, principal, context))
    feedback = latest_feedback(session, [row.id]).get(row.id)
    return render_identification(
        row.result, language, context.guidance, feedback, taxonomy=context.taxonomy
    )


@router.get(
    "/identifications/{identification_id}/image",
    summary="The stored image",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def get_image(
    identification_id: str,
    principal: Reader,
    context: ContextDep,
    session: SessionDep,
    view: ViewQuery = 0,
) -> Response:
    """The image as stored (location metadata removed unless configured otherwise); ``view``
    picks a photo of a multi-view identification."""
    row = _get(session, identification_id, _visibility(session, principal, context))
    image = session.get(StoredImage, _view_sha(session, row, view))
    if image is None:
        raise ProblemError(404, "not-found", "The image of this identification is missing.")
    data = context.store.read(image.path)
    return Response(
        data,
        media_type=image.mime,
        headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{image.sha256}"'},
    )


@router.get(
    "/identifications/{identification_id}/heatmap",
    summary="Heat map of what the model looked at",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_heatmap(
    identification_id: str,
    principal: Reader,
    context: ContextDep,
    label: Annotated[
        str | None, Query(max_length=200, pattern=SINGLE_LINE_TEXT, description="label id")
    ] = None,
    view: ViewQuery = 0,
) -> Response:
    """The image with the class-activation map of the decided (or top-1, or given) label;
    ``view`` picks a photo of a multi-view identification."""

    def load() -> tuple[Identification, StoredImage | None]:
        with context.sessions() as session:
            row = _get(session, identification_id, _visibility(session, principal, context))
            return row, session.get(StoredImage, _view_sha(session, row, view))

    row, image = await run_in_threadpool(load)
    if image is None:
        raise ProblemError(404, "not-found", "The image of this identification is missing.")
    path = context.store.path_of(image.path)
    png = await context.heatmaps.render(row, path, label, principal.key_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private"})


@router.get(
    "/identifications/{identification_id}/located",
    summary="The x-ray scan with the box of the suspected object drawn on it",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no box"}},
)
async def get_located(identification_id: str, _principal: Reader, context: ContextDep) -> Response:
    """The stored scan with the x-ray model's box (``location.box``) drawn in red; 404 when the
    answer has no box (a camera answer, or "no wildlife product")."""

    def render() -> bytes:
        with context.sessions() as session:
            row = _get(session, identification_id)
            image = session.get(StoredImage, row.image_sha256)
            location = (row.result or {}).get("location") or {}
            box = location.get("box")
            if image is None or not box:
                raise ProblemError(
                    404,
                    "no-location",
                    "This identification has no box: only x-ray answers that suspect an object "
                    "say where it is.",
                    title="No location",
                )
            data = context.store.read(image.path)
        decoded = decode_image(data, max_pixels=context.settings.max_pixels, target_shorter=1024)
        width, height = decoded.image.size
        pixels = (
            round(box[0] * width),
            round(box[1] * height),
            round(box[2] * width),
            round(box[3] * height),
        )
        return draw_box(decoded.image, pixels)

    png = await run_in_threadpool(render)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private"})


class FeedbackIn(BaseModel):
    """An officer's confirmation or correction; unknown fields are refused (422)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirm", "correct"]
    label: str | None = Field(
        default=None, max_length=200, pattern=SINGLE_LINE_TEXT, description="a label id"
    )
    taxon_id: str | None = Field(
        default=None, max_length=200, pattern=SINGLE_LINE_TEXT, description="a taxonomy id"
    )
    note: str | None = Field(default=None, max_length=2000, pattern=MULTI_LINE_TEXT)
    case_ref: str | None = Field(
        default=None,
        max_length=120,
        pattern=SINGLE_LINE_TEXT,
        description="case / seizure reference (as in identification); blank means none",
    )

    @field_validator("case_ref")
    @classmethod
    def _strip_case_ref(cls, value: str | None) -> str | None:
        return value.strip() or None if value else None

    @model_validator(mode="after")
    def _needs_target(self) -> FeedbackIn:
        if self.verdict == "correct" and not (self.label or self.taxon_id):
            raise ValueError("a correction needs 'label' or 'taxon_id'")
        return self


@router.post(
    "/identifications/{identification_id}/feedback",
    status_code=201,
    summary="Confirm or correct an identification",
)
def post_feedback(
    identification_id: str,
    body: FeedbackIn,
    principal: FeedbackGiver,
    context: ContextDep,
    session: SessionDep,
) -> dict[str, Any]:
    """Append a feedback entry; older entries are kept."""
    row = _get(session, identification_id, _visibility(session, principal, context))
    label = body.label
    if label is not None:
        known = {entry["label"] for entry in row.result.get("top_k", [])}
        known |= context.host.known_labels(row.model_version)
        if label not in known:
            raise ProblemError(
                422,
                "unknown-label",
                f"Label {label!r} is not a label of model {row.model_version}; known labels: "
                f"{', '.join(sorted(known))}. To name another taxon use 'taxon_id'.",
                title="Unknown label",
            )
    if body.taxon_id is not None:
        try:
            context.taxonomy.get(body.taxon_id)
        except TaxonNotFoundError as exc:
            raise ProblemError(422, "unknown-label", str(exc), title="Unknown taxon") from None
    entry = add_feedback(
        session,
        row,
        principal,
        verdict=body.verdict,
        label=label,
        taxon_id=body.taxon_id,
        note=body.note.strip() if body.note else None,
        case_ref=body.case_ref,
    )
    return feedback_dict(entry)


@router.get(
    "/identifications/{identification_id}/feedback", summary="Feedback history, oldest first"
)
def get_feedback(
    identification_id: str, principal: Reader, context: ContextDep, session: SessionDep
) -> dict[str, Any]:
    """Every feedback entry of an identification."""
    row = _get(session, identification_id, _visibility(session, principal, context))
    return {"items": [feedback_dict(f) for f in feedback_history(session, row.id)]}
