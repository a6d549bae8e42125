"""``/docs`` (Swagger UI) and ``/redoc`` served offline from the fastapi-offline package's assets, and the
favicon. No CDN: the assets come from the installed package, or the pages say how to install it.

(swagger-ui-bundle ships Swagger UI 4, which cannot read FastAPI's OpenAPI 3.1 schema; fastapi-offline
ships Swagger UI 5 and ReDoc. Only its asset files are used, not its FastAPI subclass.)"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs-assets"


def docs_assets() -> Path | None:
    """The folder with swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js, or None."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
             "script-src 'self' blob:; worker-src 'self' blob:; font-src 'self' data:")
MISSING = ("<!doctype html><title>mmsearch API docs</title><p>The interactive API docs need the fastapi-offline "
           "package (its Swagger UI and ReDoc files): <code>pip install 'mmsearch[serve]'</code>. The schema "
           "itself is at <a href=\"/openapi.json\">/openapi.json</a>.</p>")


def add_docs(app: FastAPI, static: Path) -> None:
    """Routes: /docs, /redoc (-> /docs), /favicon.ico. Call on an app created with docs_url=None."""
    assets = docs_assets()
    if assets is not None:
        redoc_js: list[bytes] = []

        @app.get(f"{DOCS_ASSETS}/redoc.standalone.js", include_in_schema=False)
        def redoc_standalone() -> Response:
            if not redoc_js:  # ReDoc's sidebar footer shows a logo from its CDN: show ours instead
                redoc_js.append((assets / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, b"/favicon.ico"))
            return Response(redoc_js[0], media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    schema = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse(MISSING)
        return get_swagger_ui_html(openapi_url=schema, title=f"{app.title} API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url="/favicon.ico")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        if assets is None:
            return HTMLResponse(MISSING)
        page = get_redoc_html(openapi_url=schema, title=f"{app.title} API", with_google_fonts=False,
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js", redoc_favicon_url="/favicon.ico")
        page.headers["Content-Security-Policy"] = REDOC_CSP  # its footer logo would come from a CDN
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(static / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})
