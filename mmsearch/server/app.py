"""The HTTP API and the search page: a FastAPI app over one loaded :class:`SearchEngine`.

Every request takes the engine once (``with state.use()``, which holds its lease) and uses that object to
the end, so a reload, which builds a new engine beside the old one and swaps the reference, never mixes two
snapshots nor closes a store a request still reads.
The routes live in routes.py (search, items, service routers), the loaded state in state.py.
"""

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated, Sequence

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from .._version import __version__
from ..search.engine import SearchEngine
from .docs import add_docs
from .limits import Busy
from .routes import items_router, search_router, service_router
from .settings import ServeCfg
from .state import ServerState, watch

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"
PAGE_HEADERS = {  # the page loads nothing from elsewhere (works offline, and a CDN could not be hijacked)
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def one_line(errors: Sequence[dict]) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


# --------------------------------------------------------------------------------------------- app
def create_app(engine: SearchEngine, cfg: ServeCfg | None = None) -> FastAPI:
    """The ASGI app serving ``engine``: JSON API, thumbnails and the search page.

    Args:
        engine: an opened SearchEngine (the model is loaded once, here).
        cfg: limits, API key and reload settings; defaults to :class:`ServeCfg`. The folder the engine
            was opened from is watched for rebuilds.

    Example:
        >>> from mmsearch import SearchEngine                            # doctest: +SKIP
        >>> from mmsearch.server import create_app, ServeCfg             # doctest: +SKIP
        >>> app = create_app(SearchEngine.open("index"), ServeCfg())     # doctest: +SKIP
    """
    cfg = cfg or ServeCfg()
    state = ServerState(engine, cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher = asyncio.create_task(watch(state)) if cfg.reload_interval_s > 0 else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            state.gate.close()
            state.thumbs.close()

    app = FastAPI(title="mmsearch", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Multimodal image search: query an index by text, photo, or photo + text.",
                  max_body_size=cfg.max_upload_bytes)  # 413 before the body is read
    app.state.mm = state

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="Required when the server was started with --api-key")

    def require_key(key: Annotated[str | None, Depends(key_header)]) -> None:
        if not state.key_ok(key):
            raise HTTPException(401, f"missing or wrong API key (send it in the {API_KEY_HEADER} header)",
                                headers={"WWW-Authenticate": "ApiKey"})

    api = [Depends(require_key)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc.errors())}, status_code=422)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(cfg.retry_after_s)})

    app.include_router(search_router(state), dependencies=api)
    app.include_router(items_router(state), dependencies=api)
    app.include_router(service_router(state), dependencies=api)
    from .cli_route import cli_router  # `mmsearch query` through this server (discovery.py)

    app.include_router(cli_router(state), dependencies=api)

    # ----------------------------------------------------------------------------------- the page
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_docs(app, STATIC)  # /docs offline (swagger-ui-bundle), /redoc, /favicon.ico
    return app
