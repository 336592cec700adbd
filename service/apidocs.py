"""``/docs`` (Swagger UI) and ``/redoc`` served without internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on an isolated network they stay
blank. Here the pages load the files that the maintained PyPI package ``fastapi-offline``
installs (``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``, a favicon),
mounted at :data:`ASSETS_PATH`; nothing is copied into the repository by hand and nothing is
fetched from elsewhere (no Google fonts either).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"


def install_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from the packaged assets. Create ``app`` with
    ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not registered."""
    if not (ASSETS_DIR / "swagger-ui-bundle.js").is_file():  # pragma: no cover - broken install
        raise RuntimeError(f"the Swagger UI files of fastapi-offline are missing in {ASSETS_DIR}")
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
