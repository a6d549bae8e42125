"""``/docs`` (Swagger UI) served offline from the swagger-ui-bundle package, ``/redoc`` pointing there, and
the favicon. No CDN: the assets come from the installed package, or /docs says how to install them."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs-assets"


def swagger_assets() -> Path | None:
    """The folder of Swagger UI's JS/CSS inside the swagger-ui-bundle package, or None if not installed."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI, static: Path) -> None:
    """Routes: /docs, /redoc (-> /docs), /favicon.ico. Call on an app created with docs_url=None."""
    assets = swagger_assets()
    if assets is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse("<!doctype html><title>mmsearch API docs</title><p>The interactive API docs need "
                                "the swagger-ui-bundle package: <code>pip install 'mmsearch[serve]'</code>. The "
                                "schema itself is at <a href=\"/openapi.json\">/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url="/favicon.ico")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        return RedirectResponse("/docs")  # one set of offline docs assets is enough

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(static / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})
