"""The FastAPI application factory (``create_app``) and its lifespan.

The lifespan migrates the database, loads the bundle (the persisted active version if there is
one, else ``CITES_BUNDLE_DIR``), starts the micro-batcher and the decode pool; nothing heavy
happens at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.taxonomy import default_taxonomy
from service.batcher import MicroBatcher
from service.context import AppContext
from service.database import make_engine, make_sessionmaker, migrate, sqlite_dir
from service.guidance import GuidanceBook
from service.identify import Identifier, run_batch, upload_too_large
from service.imagestore import ImageStore
from service.limits import MULTIPART_OVERHEAD, BodyLimitMiddleware
from service.metrics import ServiceMetrics
from service.modelhost import ModelHost, ModelLoadError
from service.problems import ProblemError, install_problem_handlers, install_problem_openapi
from service.recorder import IdentificationRecorder
from service.replicas import ActiveVersionFollower
from service.repository import ACTIVE_MODEL_KEY, get_state
from service.routes import feedback, identifications, models, ops, taxa
from service.settings import Settings, load_settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_DESCRIPTION = """Suggests likely CITES taxa, with appendix, calibrated confidence and guidance,
from photos and x-ray images of wildlife products. Send an API key as `Authorization: Bearer
<key>` (or `X-API-Key`). Errors are `application/problem+json`. See docs/api.md."""


class StartupError(RuntimeError):
    """The service cannot start (no usable bundle, database unreachable...)."""


def _initial_predictor(host: ModelHost, settings: Settings, context_sessions: Any) -> Any:
    """The persisted active version when it still loads, else the configured bundle."""
    with context_sessions() as session:
        persisted = get_state(session, ACTIVE_MODEL_KEY)
    if persisted:
        folder = host.weights_dir / persisted
        if folder.is_dir():
            try:
                predictor = host.load(folder)
                logger.info("serving the persisted active model %s", predictor.version)
                return predictor
            except ModelLoadError as exc:
                logger.error(
                    "persisted model %s failed (%s); using %s", persisted, exc, settings.bundle_dir
                )
        else:
            logger.warning(
                "persisted model folder %s is gone; using %s", folder, settings.bundle_dir
            )
    try:
        return host.load(settings.bundle_dir)
    except ModelLoadError as exc:
        raise StartupError(
            f"{exc}. Point --bundle / CITES_BUNDLE_DIR at a bundle folder (with manifest.json)."
        ) from exc


def build_context(settings: Settings, metrics: ServiceMetrics) -> AppContext:
    """Open storage and load the model (blocking; called from the lifespan)."""
    url = settings.resolved_database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    folder = sqlite_dir(url)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    taxonomy = default_taxonomy()
    host = ModelHost(
        settings.resolved_weights_dir,
        taxonomy=taxonomy,
        threads=settings.onnx_threads,
        precision=settings.precision,
        warmup_batch=settings.batch_max_size,
    )
    host.set_initial(_initial_predictor(host, settings, sessions))
    batcher: MicroBatcher[Any, Any] = MicroBatcher(
        run_batch,
        max_size=settings.batch_max_size,
        max_wait_s=settings.batch_max_wait_ms / 1000.0,
        queue_max=settings.queue_max,
        metrics=metrics,
        # requests still decoding will join the batch soon (context is bound below)
        incoming=lambda: context.identifier.decoding(),
    )
    context = AppContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=ImageStore(settings.images_dir),
        metrics=metrics,
        guidance=GuidanceBook.load(),
        taxonomy=taxonomy,
        host=host,
        batcher=batcher,
        recorder=IdentificationRecorder(sessions, queue_max=settings.queue_max, metrics=metrics),
        decode_pool=ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode"),
    )
    context.identifier = Identifier(context)
    current = host.current
    if current is not None:
        metrics.set_active_model(current.version)
    return context


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


def _body_limits(settings: Settings) -> tuple[Any, Any]:
    single = settings.max_upload_bytes + MULTIPART_OVERHEAD
    batch = settings.max_upload_bytes * settings.max_batch_images + MULTIPART_OVERHEAD

    def limit_for(path: str) -> int | None:
        if path.endswith("/identifications:batch"):
            return batch
        if path.startswith("/v1/"):
            return single
        return 1024 * 1024

    def problem_for(path: str, limit: int) -> ProblemError:
        if path.endswith("/identifications:batch"):
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
        context.batcher.start()
        context.recorder.start()
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
            await context.batcher.close()
            await context.recorder.close()
            context.decode_pool.shutdown(wait=False, cancel_futures=True)
            context.engine.dispose()

    app = FastAPI(
        title="CITES Vision",
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    install_problem_openapi(app)
    for router in (ops.router, identifications.router, feedback.router, taxa.router, models.router):
        app.include_router(router)
    limit_for, problem_for = _body_limits(settings)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=limit_for,
        problem_for=problem_for,
        on_reject=lambda: metrics.rejected.labels(reason="body_too_large").inc(),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _mount_static(app, settings.static_dir or STATIC_DIR)
    app.state.metrics = metrics
    app.state.settings = settings
    return app


def _mount_static(app: FastAPI, folder: Path) -> None:
    index = folder / "index.html"
    if not index.is_file():
        logger.info("no officer web page at %s; serving the API only", folder)
        return
    app.mount("/static", StaticFiles(directory=folder), name="static")

    @app.get("/", include_in_schema=False)
    def officer_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})
