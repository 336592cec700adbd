"""What the officers' page needs offline: the offline package, the model file, the service
worker, the app icons and the browser runtime's files (docs/web.md, "Offline use")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from model.predictor import Predictor
from service.deps import ContextDep, Reader
from service.icons import SIZES, icon_png
from service.offline import (
    RUNTIME_URL,
    OfflinePackages,
    model_file,
    web_runtime,
)
from service.problems import ProblemError

router = APIRouter(tags=["offline"])
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
NO_CACHE = {"Cache-Control": "no-cache"}
_MEDIA_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


def _active(context: ContextDep) -> Predictor:
    current = context.host.current
    if current is None:
        raise ProblemError(
            503, "not-ready", "No model is loaded yet.", headers={"Retry-After": "2"}
        )
    return current


def _packages(request: Request, context: ContextDep) -> OfflinePackages:
    packages: OfflinePackages | None = getattr(request.app.state, "offline_packages", None)
    if packages is None:
        packages = OfflinePackages(context.taxonomy, context.guidance)
        request.app.state.offline_packages = packages
    return packages


@router.get(
    "/v1/models/active/offline-package",
    summary="The active camera model's decision data for identifying on the phone",
    responses={503: {"description": "no model loaded yet"}},
)
def offline_package(
    request: Request, response: Response, context: ContextDep, _principal: Reader
) -> dict[str, Any]:
    """Preprocessing, labels, temperature, thresholds, decision rules, roll-up lineages, the
    out-of-domain model, appendices by origin and guidance texts, as data (docs/web.md)."""
    predictor = _active(context)
    package = dict(_packages(request, context).get(predictor))
    runtime = web_runtime()
    package["runtime"] = {
        "available": runtime.available,
        "url": RUNTIME_URL,
        "files": list(runtime.files),
        "size": runtime.size(),
    }
    response.headers["Cache-Control"] = "no-store"
    return package


@router.get(
    "/v1/models/active/offline-model",
    summary="The ONNX file of the active model, for the page's offline identification",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        409: {"description": "another model is active now"},
        503: {"description": "no model loaded yet"},
    },
)
def offline_model(
    context: ContextDep,
    _principal: Reader,
    version: Annotated[str | None, Query(max_length=200, description="expected version")] = None,
) -> FileResponse:
    """The model file the service runs (same precision). With ``version``, a 409 says that
    another model became active meanwhile (fetch the package again)."""
    predictor = _active(context)
    if version is not None and version != predictor.version:
        raise ProblemError(
            409,
            "model-changed",
            f"The active model is now {predictor.version}, not {version}: fetch the offline "
            "package again.",
            title="Another model is active",
        )
    path = model_file(predictor)
    sha256 = predictor.bundle.manifest.files[path.name]
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-store", "ETag": f'"{sha256}"'},
    )


@router.get("/sw.js", include_in_schema=False)
def service_worker() -> FileResponse:
    """The service worker, served from the root so that its scope is the whole page."""
    return FileResponse(
        STATIC_DIR / "sw.js",
        media_type="text/javascript",
        headers={**NO_CACHE, "Service-Worker-Allowed": "/"},
    )


@router.get("/icons/{name}.png", include_in_schema=False)
def icon(name: str) -> Response:
    """``icon-192``, ``icon-512`` and ``maskable-512``, drawn by :mod:`service.icons`."""
    kind, _, size_text = name.rpartition("-")
    if kind not in ("icon", "maskable") or not size_text.isdigit() or int(size_text) not in SIZES:
        raise ProblemError(404, "not-found", f"No icon {name}.png.", title="Not found")
    return Response(
        icon_png(int(size_text), maskable=kind == "maskable"),
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get(RUNTIME_URL + "{name}", include_in_schema=False)
def runtime_file(name: str) -> FileResponse:
    """A file of ONNX Runtime Web from ``service/web/node_modules`` (``make web-runtime``)."""
    path = web_runtime().path_of(name)
    if path is None:
        raise ProblemError(
            404,
            "runtime-missing",
            f"The browser runtime file {name!r} is not installed: run `make web-runtime`. "
            "The page works online only without it.",
            title="Browser runtime not installed",
        )
    return FileResponse(
        path,
        media_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        headers=NO_CACHE,
    )


@router.get("/offline-shell.json", include_in_schema=False)
def offline_shell() -> dict[str, Any]:
    """What the service worker precaches: the page, every file under ``static/`` and the
    installed browser runtime files (listed from disk, so no list is kept by hand)."""
    files = ["/"]
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.name != "sw.js":
            files.append("/static/" + path.relative_to(STATIC_DIR).as_posix())
    files += [f"/icons/{kind}-{size}.png" for kind, size in _ICONS]
    runtime = web_runtime()
    files += [RUNTIME_URL + name for name in runtime.files if runtime.path_of(name) is not None]
    return {"files": files}


_ICONS = (("icon", 192), ("icon", 512), ("maskable", 512))
