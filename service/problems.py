"""``application/problem+json`` (RFC 9457) errors and the handlers that render them."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.imageio import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.guidance import negotiate_language

logger = logging.getLogger(__name__)

PROBLEM_BASE = "https://cites-vision.example/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 1
"""Seconds a client is told to wait after a 503 ``overloaded`` or 429 ``too-many-requests``."""


class ProblemError(Exception):
    """An error the API reports to its caller as a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        photo: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or slug.replace("-", " ").capitalize()
        self.headers = dict(headers or {})
        self.errors = list(errors) if errors is not None else None
        self.photo = photo
        """(position from 1, count) of the photo of a multi-view request the problem is about."""

    def to_dict(self, instance: str | None = None, language: str = "en") -> dict[str, Any]:
        """The problem document as a JSON-ready dict, its ``title`` and ``detail`` in
        ``language`` (en, fr, es: :func:`localised_texts`)."""
        title, detail = localised_texts(self, language)
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": title,
            "status": self.status,
            "detail": detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        return body


PROBLEM_TEXTS_FILE = Path(__file__).resolve().parent / "data" / "problems.json"


@cache
def _problem_texts() -> dict[str, dict[str, list[str]]]:
    raw: dict[str, dict[str, list[str]]] = json.loads(
        PROBLEM_TEXTS_FILE.read_text(encoding="utf-8")
    )
    return {lang: texts for lang, texts in raw.items() if not lang.startswith("_")}


def localised_texts(problem: ProblemError, language: str) -> tuple[str, str]:
    """``(title, detail)`` of ``problem`` in ``language``. English keeps the problem's own
    texts (they name the limits and values involved); French and Spanish come from
    ``service/data/problems.json`` by slug (``http-NNN`` slugs share ``http-error``); a slug
    not there keeps the problem's texts (e.g. ``invalid-permit``, built in the caller's
    language by its maker)."""
    if language == "en":
        return problem.title, problem.detail
    texts = _problem_texts().get(language, {})
    slug = "http-error" if problem.slug.startswith("http-") else problem.slug
    found = texts.get(slug)
    if not found:
        return problem.title, problem.detail
    if problem.photo is not None:  # the English detail names the photo itself
        position, count = problem.photo
        return found[0], PHOTO_PREFIX[language].format(n=position, count=count) + found[1]
    return found[0], found[1]


PHOTO_PREFIX = {"fr": "Photo {n} sur {count} : ", "es": "Foto {n} de {count}: "}
"""How a French or Spanish problem detail names the photo of a multi-view request."""


def language_of(headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]]) -> str:
    """The answer language for request headers (a mapping, or an ASGI scope's header list)."""
    if isinstance(headers, Mapping):
        return negotiate_language(headers.get("accept-language"))
    for name, value in headers:
        if name.lower() == b"accept-language":
            return negotiate_language(value.decode("latin-1"))
    return negotiate_language(None)


class ProblemResponse(JSONResponse):
    """A JSON response with the problem media type."""

    media_type = PROBLEM_MEDIA_TYPE


def problem_response(
    problem: ProblemError, instance: str | None = None, language: str = "en"
) -> ProblemResponse:
    """Render a :class:`ProblemError` as an HTTP response in ``language``."""
    return ProblemResponse(
        problem.to_dict(instance, language),
        status_code=problem.status,
        headers={**problem.headers, "Content-Language": language},
    )


# ---- the problems of the identification path (one factory each) ---------------------------


def image_problem(exc: ImageError) -> ProblemError:
    """The problem for an image the decoder refused (empty, unsupported, corrupt, too big,
    too expensive to decode)."""
    if isinstance(exc, ImageTooLargeError):
        return ProblemError(413, "too-many-pixels", str(exc), title="Image has too many pixels")
    if exc.code == "no_pixels":  # a DICOS Threat Detection Report (model.scanner)
        return ProblemError(422, "no-pixel-data", str(exc), title="No image in this file")
    if exc.code == "too_complex":  # service.decode.ImageTooComplexError
        return ProblemError(
            422, "image-too-complex", str(exc), title="Image too expensive to decode"
        )
    slug, title = {
        EmptyImageError: ("empty-image", "Empty image"),
        UnsupportedImageError: ("unsupported-image", "Unsupported image"),
        CorruptImageError: ("corrupt-image", "Corrupt image"),
    }.get(type(exc), ("unsupported-image", "Unusable image"))
    return ProblemError(422, slug, str(exc), title=title)


def upload_too_large(size: int | None, limit: int) -> ProblemError:
    """413 for an upload over the byte limit."""
    got = f"The upload is {size} bytes; " if size is not None else "The upload is too large; "
    return ProblemError(
        413,
        "image-too-large",
        f"{got}the limit is {limit} bytes (CITES_MAX_UPLOAD_BYTES). Send a smaller image, "
        "e.g. resized to 2000 px on the longer side.",
        title="Image too large",
    )


def overloaded(reason: str) -> ProblemError:
    """503 with Retry-After: the service as a whole is at its limit."""
    return ProblemError(
        503,
        "overloaded",
        f"The service is busy ({reason}); retry in {RETRY_AFTER_S} s.",
        title="Service overloaded",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def too_many_requests(reason: str) -> ProblemError:
    """429 with Retry-After: this client (API key) already uses its share of the service."""
    return ProblemError(
        429,
        "too-many-requests",
        f"This API key already has {reason}; wait for those answers and retry in "
        f"{RETRY_AFTER_S} s. Each key gets a share of the image decoders so that one client "
        "cannot hold them all.",
        title="Too many requests for this key",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def not_ready() -> ProblemError:
    """503 while no model is loaded."""
    return ProblemError(
        503,
        "not-ready",
        "No model is loaded yet; retry shortly.",
        title="Not ready",
        headers={"Retry-After": "2"},
    )


def request_timeout(limit_s: float) -> ProblemError:
    """504 when an identification took longer than ``CITES_REQUEST_TIMEOUT_S``."""
    return ProblemError(
        504,
        "timeout",
        f"The identification took longer than {limit_s:g} s (CITES_REQUEST_TIMEOUT_S); the "
        "service is busy or the image is very large. Retry later.",
        title="Timeout",
    )


def storage_unavailable(exc: OSError) -> ProblemError:
    """507 when the image store cannot be written (disk full, read-only, permissions)."""
    logger.error("cannot write to the image store: %s", exc)
    return ProblemError(
        507,
        "storage-unavailable",
        "The image store cannot be written right now (disk full or read-only); nothing was "
        "stored. Retry later; an operator must check the data directory.",
        title="Storage unavailable",
    )


def too_many_views(count: int, limit: int) -> ProblemError:
    """413 for a multi-view identification with more photos than allowed."""
    return ProblemError(
        413,
        "too-many-views",
        f"{count} photos in one multi-view identification; it takes 1 to {limit} photos of "
        "one object. Send fewer photos, or identify the objects separately.",
        title="Too many photos",
    )


def no_views() -> ProblemError:
    """422 for a multi-view identification without a photo."""
    return ProblemError(
        422,
        "validation-error",
        "A multi-view identification needs at least one photo: send 'images' parts.",
        title="No photo",
    )


def in_view(problem: ProblemError, position: int, count: int) -> ProblemError:
    """``problem`` of one photo of a multi-view identification, naming the photo (its
    ``errors`` entry has ``loc`` ``["body", "images", position]``)."""
    return ProblemError(
        problem.status,
        problem.slug,
        f"Photo {position + 1} of {count}: {problem.detail} Nothing was identified or stored; "
        "send the photos again without it, or retake it.",
        title=problem.title,
        headers=problem.headers,
        errors=[{"loc": ["body", "images", position], "msg": problem.detail, "type": problem.slug}],
        photo=(position + 1, count),
    )


def mixed_modalities(modalities: Sequence[str]) -> ProblemError:
    """422 when the photos of one object are of different modalities (camera and x-ray)."""
    listed = ", ".join(f"photo {i + 1}: {m}" for i, m in enumerate(modalities))
    return ProblemError(
        422,
        "mixed-modalities",
        f"The photos of one object must all be camera photos or all x-ray images ({listed}). "
        "Identify them in separate requests.",
        title="Photos of different kinds",
    )


_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
}


def _http_exception(request: Request, exc: Exception) -> ProblemResponse:
    exc = cast(StarletteHTTPException, exc)  # registered for this type only
    status = exc.status_code
    slug = _SLUGS.get(status, f"http-{status}")
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    detail = str(exc.detail) if exc.detail else reason
    if status == 404 and detail == "Not Found":
        detail = f"No resource at {request.url.path}; see /docs for the API."
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs."
    problem = ProblemError(status, slug, detail, title=reason, headers=exc.headers)
    return problem_response(problem, request.url.path, language_of(request.headers))


def _validation(request: Request, exc: Exception) -> ProblemResponse:
    exc = cast(RequestValidationError, exc)  # registered for this type only
    errors = [
        {
            "loc": list(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    problem = ProblemError(
        422,
        "validation-error",
        "The request is not valid: " + "; ".join(parts),
        title="Invalid request",
        errors=errors,
    )
    return problem_response(problem, request.url.path, language_of(request.headers))


def _problem(request: Request, exc: Exception) -> ProblemResponse:
    return problem_response(cast(ProblemError, exc), request.url.path, language_of(request.headers))


def _database_unavailable(request: Request, exc: Exception) -> ProblemResponse:
    logger.error("database error on %s %s: %s", request.method, request.url.path, exc)
    problem = ProblemError(
        503,
        "database-unavailable",
        "The database does not answer right now; retry shortly.",
        title="Database unavailable",
        headers={"Retry-After": "5"},
    )
    return problem_response(problem, request.url.path, language_of(request.headers))


def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    problem = ProblemError(
        500,
        "internal-error",
        "The service failed unexpectedly; the error is logged. Try again or report it.",
        title="Internal error",
    )
    return problem_response(problem, request.url.path, language_of(request.headers))


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` an ``application/problem+json`` response."""
    app.add_exception_handler(ProblemError, _problem)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def _error_statuses(path: str, method: str, operation: Mapping[str, Any]) -> set[int]:
    """The error statuses an operation can answer (see the problem table in docs/api.md)."""
    statuses = {500}
    body = operation.get("requestBody", {}).get("content", {})
    if operation.get("parameters") or body:
        statuses.add(422)
    if "security" in operation:
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    if method == "post" and path.startswith("/v1/"):
        statuses |= {400, 413}  # malformed body; over the body limit
    if "multipart/form-data" in body:
        # per-key share used; overloaded / not ready; timeout; image store unwritable
        statuses |= {429, 503, 504, 507}
    if path.endswith(("/activate", "/offline-model")):
        statuses.add(409)  # activation refused; the phone asked for a model no longer active
    if path.endswith("/rollback"):
        statuses |= {409, 503}  # nothing to roll back to; no model loaded yet
    if path.endswith(("/offline-model", "/offline-package")):
        statuses.add(503)  # no model loaded yet
    if path.endswith("/heatmap"):
        statuses |= {410, 429, 503}  # model gone; per-key share used; decoders busy
    if path == "/readyz":
        statuses.add(503)
    return statuses


def install_problem_openapi(app: FastAPI) -> None:
    """Document every error answer of ``app`` as ``application/problem+json`` in its OpenAPI
    schema, so that clients (and schema-driven fuzzers) see what the service really sends."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                PROBLEM_SCHEMA
            )
            problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for path, item in schema.get("paths", {}).items():
                for method, operation in item.items():
                    responses = operation.setdefault("responses", {})
                    for status in sorted(_error_statuses(path, method, operation)):
                        entry = responses.setdefault(str(status), {})
                        entry.setdefault("description", HTTPStatus(status).phrase)
                        entry["content"] = problem
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
