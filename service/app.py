"""The FastAPI application factory (``create_app``) and its lifespan.

The lifespan builds the components (:func:`service.compose.build_context`: migrates the database,
loads the bundle, the persisted active version if there is one, else ``CITES_BUNDLE_DIR``) and
starts the stages' background tasks; nothing heavy happens at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.fusion import MAX_VIEWS
from service.apidocs import install_offline_docs
from service.compose import StartupError, build_context
from service.context import AppContext
from service.keys import Principal, verify_key
from service.limits import MULTIPART_OVERHEAD, BodyLimitMiddleware
from service.metrics import ServiceMetrics
from service.problems import (
    ProblemError,
    install_problem_handlers,
    install_problem_openapi,
    upload_too_large,
)
from service.replicas import ActiveVersionFollower
from service.routes import (
    feedback,
    identifications,
    models,
    offline,
    ops,
    taxa,
    verifications,
)
from service.security import (
    AuthGate,
    FailedKeyThrottle,
    RejectControlCharacters,
    SecurityHeaders,
    install_log_escaping,
)
from service.settings import Settings, load_settings

__all__ = ["StartupError", "create_app"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_DESCRIPTION = """Suggests likely CITES taxa, with appendix, calibrated confidence and guidance,
from photos and x-ray images of wildlife products. Send an API key as `Authorization: Bearer
<key>` (or `X-API-Key`). Errors are `application/problem+json`. See docs/api.md."""


class MetricsMiddleware:
    """Counts requests by method, route template and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=template).observe(
                time.perf_counter() - started
            )


JSON_BODY_LIMIT = 64 * 1024
"""Bodies of every route that takes no image (feedback, activation...): JSON of a few KiB."""


def _body_limits(settings: Settings) -> tuple[Any, Any]:
    single = settings.max_upload_bytes + MULTIPART_OVERHEAD
    batch = settings.max_upload_bytes * settings.max_batch_images + MULTIPART_OVERHEAD
    views = settings.max_upload_bytes * MAX_VIEWS + MULTIPART_OVERHEAD

    def limit_for(path: str) -> int | None:
        if path.endswith("/identifications:batch") or path.rstrip("/") == "/v1/verifications":
            return batch
        if path.rstrip("/") == "/v1/identifications":
            return single
        if path.endswith("/identifications:views"):
            return views
        return JSON_BODY_LIMIT

    def problem_for(path: str, limit: int) -> ProblemError:
        if path.endswith("/identifications:views"):
            return ProblemError(
                413,
                "too-many-views",
                f"The photos exceed {limit} bytes together ({MAX_VIEWS} photos of at most "
                f"{settings.max_upload_bytes} bytes). Send fewer or smaller photos.",
                title="Too many photos",
            )
        if path.endswith("/identifications:batch") or path.rstrip("/") == "/v1/verifications":
            return ProblemError(
                413,
                "batch-too-large",
                f"The batch upload exceeds {limit} bytes ({settings.max_batch_images} images of "
                f"at most {settings.max_upload_bytes} bytes). Split the batch.",
                title="Batch too large",
            )
        if path.rstrip("/") != "/v1/identifications":  # JSON bodies (feedback) and the rest
            return ProblemError(
                413,
                "body-too-large",
                f"The request body exceeds {limit} bytes; send a smaller request.",
                title="Request too large",
            )
        return upload_too_large(None, settings.max_upload_bytes)

    return limit_for, problem_for


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; the bundle is loaded when the app starts (lifespan)."""
    settings = settings or load_settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.allow_anonymous:
            logger.warning(
                "!!! CITES_ALLOW_ANONYMOUS is on: requests WITHOUT an API key act as an admin. "
                "Development only: never expose this service. !!!"
            )
        context = build_context(settings, metrics)
        app.state.context = context
        await context.start()
        follower = ActiveVersionFollower(
            context.host, context.sessions, settings.replica_poll_s, metrics.set_active_model
        )
        follower.start()
        logger.info(
            "serving model %s (data in %s)",
            context.host.current.version if context.host.current else "none",
            settings.data_dir.resolve(),
        )
        try:
            yield
        finally:
            await follower.close()
            await context.close()

    app = FastAPI(
        title="CITES Vision",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.apidocs serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    install_offline_docs(app)
    install_problem_handlers(app)
    install_problem_openapi(app)
    for router in (
        ops.router,
        identifications.router,
        verifications.router,
        feedback.router,
        taxa.router,
        offline.router,  # before models: its /v1/models/active/... paths are more specific
        models.router,
    ):
        app.include_router(router)
    limit_for, problem_for = _body_limits(settings)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=limit_for,
        problem_for=problem_for,
        on_reject=lambda: metrics.rejected.labels(reason="body_too_large").inc(),
    )
    _add_auth_gate(app, settings, metrics)
    app.add_middleware(RejectControlCharacters)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    install_log_escaping()
    _mount_static(app, settings.static_dir or STATIC_DIR)
    app.state.metrics = metrics
    app.state.settings = settings
    return app


def _add_auth_gate(app: FastAPI, settings: Settings, metrics: ServiceMetrics) -> None:
    """Keys are checked from the headers before the body limit and the body (service.security)."""

    def verify(_scope: Scope, key: str) -> Principal | None:
        context: AppContext = app.state.context
        with context.sessions() as session:
            principal = verify_key(session, key)
        if principal is not None:
            context.note_key_use(principal)
        return principal

    app.add_middleware(
        AuthGate,
        verify=verify,
        throttle=FailedKeyThrottle(settings.auth_failure_burst, settings.auth_failures_per_minute),
        allow_anonymous=lambda _scope: settings.allow_anonymous,
        on_failure=lambda reason: metrics.auth_failures.labels(reason=reason).inc(),
    )


def _mount_static(app: FastAPI, folder: Path) -> None:
    index = folder / "index.html"
    if not index.is_file():
        logger.info("no officer web page at %s; serving the API only", folder)
        return
    app.mount("/static", StaticFiles(directory=folder), name="static")

    @app.get("/", include_in_schema=False)
    def officer_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
