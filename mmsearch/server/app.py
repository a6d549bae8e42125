"""The HTTP API and the search page: a FastAPI app over one loaded :class:`SearchEngine`.

Every request reads the engine once (``state.current``) and uses that object to the end, so a reload,
which builds a new engine beside the old one and swaps the reference, never mixes two snapshots.
"""


import asyncio
import contextlib
import copy
import hashlib
import hmac
import inspect
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field


from .. import __version__
from ..errors import MMSearchError
from ..index import resolve_snapshot
from ..search import SearchEngine, SearchHit
from .config import ServeCfg
from .files import ThumbnailCache, UploadRejected, catalog_file, probe_upload
from .lease import Hold, Lease
from .limits import Busy, LatencyStats, ModelGate

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API_KEY_HEADER = "X-API-Key"
MAX_FILTER_CHARS = 64 * 1024  # a filters form field; far above any real filter, far below a memory risk
MAX_FILTER_VALUES = 50  # a metadata field with more distinct values is not offered as a filter menu
PAGE_HEADERS = {  # the page loads nothing from elsewhere (works offline, and a CDN could not be hijacked)
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# ----------------------------------------------------------------------------------------- schemas
class Hit(BaseModel):
    rank: int
    id: str
    score: float
    title: str
    metadata: dict[str, Any]
    thumbnail_url: str = Field(description="Small WebP of the image (relative URL)")
    item_url: str


class SearchResponse(BaseModel):
    hits: list[Hit]
    took_ms: float
    snapshot: str


class Item(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]
    thumbnail_url: str


class Health(BaseModel):
    status: str
    items: int
    snapshot: str


class Filters(BaseModel):
    supported: bool = Field(description="Whether this build's SearchEngine applies filters")
    fields: dict[str, list[Any]] = Field(description="Metadata fields with few distinct values, and those values")


class Reloaded(BaseModel):
    reloaded: bool
    snapshot: str
    items: int


ERRORS = {400: {"description": "Malformed query (one-line `detail`)"},
          401: {"description": "Missing or wrong API key"},
          413: {"description": "Request body over the upload limit"},
          415: {"description": "Upload is not an image"},
          503: {"description": "Model queue full; retry after `Retry-After` seconds"}}


# ------------------------------------------------------------------------------------------- state
@dataclass
class Loaded:
    """One engine and what the routes derive from it, swapped as a whole on reload."""

    engine: SearchEngine
    row_of: dict[str, dict[str, Any]]  # item id -> its row (fid, id, path, title, text, metadata)
    root: Path  # resolved catalog folder; only files below it are served
    fields: dict[str, list[Any]]
    version: str  # snapshot name, used to bust thumbnail caches after a rebuild
    lease: Lease  # in-flight searches; the engine's store closes after the last one, once retired

    @classmethod
    def of(cls, engine: SearchEngine) -> "Loaded":
        items = engine.items
        return cls(engine=engine, row_of={row["id"]: row for row in items},
                   root=Path(engine.manifest["catalog"]).resolve(), fields=filter_fields(items),
                   version=Path(engine.snapshot).name, lease=Lease(engine.store.close))


def filter_fields(items: list[dict]) -> dict[str, list[Any]]:
    """Metadata fields whose values are scalars with few distinct values: the page offers them as menus."""
    values: dict[str, set] = {}
    dropped: set[str] = set()
    for row in items:
        for key, val in (row.get("metadata") or {}).items():
            if key in dropped:
                continue
            if not isinstance(val, (str, int, float, bool)) or len(values.setdefault(key, set())) > MAX_FILTER_VALUES:
                dropped.add(key)
                values.pop(key, None)
                continue
            values[key].add(val)
    return {k: sorted(v, key=str) for k, v in sorted(values.items()) if 1 < len(v) <= MAX_FILTER_VALUES}


def filter_kwarg(fn: Any) -> str | None:
    """Name of the filters parameter of ``fn`` (``filters`` or ``where``), None if it takes none."""
    params = inspect.signature(fn).parameters
    return next((name for name in ("filters", "where") if name in params), None)


class ServerState:
    def __init__(self, engine: SearchEngine, cfg: ServeCfg):
        self.cfg = cfg
        self.current = Loaded.of(engine)
        self.gate = ModelGate(cfg.model_workers, cfg.max_pending)
        self.thumbs = ThumbnailCache(cfg.thumbnail_size, cfg.thumbnail_cache_bytes)
        self.latency = LatencyStats(cfg.latency_window)
        self.started = time.time()
        self._reload_lock = threading.Lock()
        self._swap_lock = threading.Lock()  # reading current + acquiring its lease vs swapping it
        self.failed_snapshot: Path | None = None  # on-disk snapshot that failed to load: not retried by the watcher
        self._key_digest = hashlib.sha256(cfg.api_key.encode()).digest() if cfg.api_key else None

    def key_ok(self, given: str | None) -> bool:
        """Constant-time check: both sides are hashed to 32 bytes first, so even the length is not leaked."""
        if self._key_digest is None:
            return True
        return hmac.compare_digest(hashlib.sha256((given or "").encode()).digest(), self._key_digest)

    def acquire(self) -> tuple[Loaded, Hold]:
        """The engine to serve a search with, held until the Hold's job ends or it is dropped."""
        with self._swap_lock:
            cur = self.current
            cur.lease.acquire()
        return cur, Hold(cur.lease)

    def reload(self) -> bool:
        """Load the index's current snapshot if it changed; the old engine keeps serving until the swap,
        and its store closes when its last in-flight search ends."""
        with self._reload_lock:
            fresh = copy.copy(self.current.engine)  # shares the model; _load rebinds everything else
            del fresh.store  # ... and opens a store of its own: the old one is the old engine's to close
            try:
                if not fresh.reload():
                    return False
            except MMSearchError:
                with contextlib.suppress(MMSearchError):
                    self.failed_snapshot = resolve_snapshot(fresh.path)
                raise
            loaded = Loaded.of(fresh)
            with self._swap_lock:
                old, self.current = self.current, loaded
            old.lease.retire()
            log.info("reloaded index: now serving snapshot %s (%d items)", fresh.snapshot, len(fresh))
            return True

    def changed_on_disk(self) -> bool:
        try:
            engine = self.current.engine
            snap = resolve_snapshot(engine.path)
            return snap != engine.snapshot and snap != self.failed_snapshot  # a bad snapshot is logged once
        except MMSearchError:
            return False  # index folder mid-replacement or gone: keep serving what is loaded


# ------------------------------------------------------------------------------------------ helpers
def item_urls(item_id: str, version: str) -> tuple[str, str]:
    path = quote(item_id, safe="/")
    return f"/items/{path}", f"/items/{path}/thumbnail?v={quote(version)}"


def hit_json(h: SearchHit, version: str) -> dict[str, Any]:
    item_url, thumb_url = item_urls(h.id, version)
    return {"rank": h.rank, "id": h.id, "score": round(float(h.score), 6), "title": h.title,
            "metadata": h.metadata, "thumbnail_url": thumb_url, "item_url": item_url}


def parse_filters(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_FILTER_CHARS:
        raise HTTPException(400, f"filters too long ({len(raw)} characters; the limit is {MAX_FILTER_CHARS})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f'filters must be a JSON object, e.g. {{"category": "food"}} ({exc.msg})') from None
    except RecursionError:  # [[[[...]]]] 50,000 deep
        raise HTTPException(400, "filters are nested too deeply; give a flat JSON object of field: value") from None
    if not isinstance(value, dict):
        raise HTTPException(400, 'filters must be a JSON object, e.g. {"category": "food"}')
    return value or None


def check_query_args(cfg: ServeCfg, text: str | None, k: int) -> str | None:
    if k > cfg.max_k:
        raise HTTPException(400, f"k must be at most {cfg.max_k}, got {k}")
    if text is not None and len(text) > cfg.max_text_chars:
        raise HTTPException(400, f"text too long ({len(text)} characters; the limit is {cfg.max_text_chars})")
    return text if text and text.strip() else None


_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"`]+/)*([^\s/'\"`;,)]*)")


def without_paths(message: str) -> str:
    """``message`` with every absolute path cut to its last component: responses never show server paths."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "/", message)


def one_line(errors: list[dict]) -> str:
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

    async def run_search(fn: Any, filters: dict | None, takes_filters: Any = None, **kwargs: Any) -> list[SearchHit]:
        """Run ``fn(**kwargs)`` through the model gate; ``filters`` go to whichever parameter
        ``takes_filters`` (default ``fn``) names them with, or are refused when it has none."""
        if filters:
            name = filter_kwarg(takes_filters or fn)
            if name is None:
                raise HTTPException(400, "filters are not supported by this mmsearch version")
            kwargs[name] = filters
        t0 = time.perf_counter()
        try:
            hits = await state.gate.run(fn, **kwargs)
        except (MMSearchError, ValueError) as exc:  # bad query (filters included); anything else is a bug
            raise HTTPException(400, without_paths(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__) \
                from None
        state.latency.add((time.perf_counter() - t0) * 1000.0)
        return hits

    def lookup(cur: Loaded, item_id: str) -> dict[str, Any]:
        row = cur.row_of.get(item_id)
        if row is None:
            raise HTTPException(404, "no such item")
        return row

    # ------------------------------------------------------------------------------------ routes
    @app.post("/search", response_model=SearchResponse, dependencies=api, responses=ERRORS, tags=["search"])
    async def search(
        image: Annotated[UploadFile | None, File(description="Query photo")] = None,
        text: Annotated[str | None, Form(description="Query text")] = None,
        k: Annotated[int, Form(ge=1, description="Number of hits")] = 10,
        image_weight: Annotated[float | None, Form(ge=0.0, le=1.0, description="Weight of the photo in "
                                                   "photo + text queries (default 0.5)")] = None,
        filters: Annotated[str | None, Form(description='JSON object of metadata filters, e.g. '
                                            '{"category": "food"}')] = None,
    ) -> dict[str, Any]:
        """Search by photo, text, or both (multipart form)."""
        text = check_query_args(cfg, text, k)
        where = parse_filters(filters)
        data = None
        if image is not None:
            data = await image.read()
            if not data and not image.filename:  # an empty file input, as browsers send it
                data = None
            else:
                try:  # off the event loop: even a header read may decode (and the gate bounds it)
                    await asyncio.to_thread(probe_upload, data, cfg.max_image_pixels)
                except UploadRejected as exc:
                    raise HTTPException(exc.status, str(exc)) from None
        if data is None and text is None:
            raise HTTPException(400, "a query needs an image, a text, or both")
        cur, hold = state.acquire()
        t0 = time.perf_counter()
        try:
            hits = await run_search(hold.wrap(cur.engine.search), where, image=data, text=text, k=k,
                                    image_weight=image_weight)
        finally:
            hold.drop()
        return {"hits": [hit_json(h, cur.version) for h in hits], "took_ms": round((time.perf_counter() - t0) * 1e3, 2),
                "snapshot": cur.version}

    @app.post("/search/by-item/{item_id:path}", response_model=SearchResponse, dependencies=api,
              responses={**ERRORS, 404: {"description": "No such item"}}, tags=["search"])
    async def search_by_item(
        item_id: str,
        text: Annotated[str | None, Form(description="Optional text to steer the results")] = None,
        k: Annotated[int, Form(ge=1)] = 10,
        image_weight: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
        filters: Annotated[str | None, Form(description="JSON object of metadata filters")] = None,
    ) -> dict[str, Any]:
        """"More like this": items whose images resemble this item's (the item itself is left out)."""
        text = check_query_args(cfg, text, k)
        where = parse_filters(filters)
        cur, hold = state.acquire()
        try:
            return await by_item_search(cur, hold, item_id, text, k, image_weight, where)
        finally:
            hold.drop()

    async def by_item_search(cur: Loaded, hold: Hold, item_id: str, text: str | None, k: int,
                             image_weight: float | None, where: dict | None) -> dict[str, Any]:
        row = lookup(cur, item_id)
        engine = cur.engine

        def by_item(k: int, text: str | None, image_weight: float | None, **kw: Any) -> list[SearchHit]:
            image = {}
            for name in ("image", "visual"):
                ch = engine.channels.get(name)
                if ch is not None:
                    present, vecs = ch.rows(np.array([row["fid"]]))  # (1, dim) stored unit vector
                    if present[0]:
                        image[name] = vecs
            if "image" not in image:
                raise HTTPException(404, "this item has no stored image embedding")
            txt = engine.encode_texts([text]) if text else None
            hits = engine.search_vectors(image, txt, k=k + 1, image_weight=image_weight, **kw)[0]
            hits = [h for h in hits if h.id != item_id][:k]
            for rank, h in enumerate(hits, 1):
                h.rank = rank
            return hits

        t0 = time.perf_counter()
        hits = await run_search(hold.wrap(by_item), where, engine.search_vectors, k=k, text=text,
                                image_weight=image_weight)
        return {"hits": [hit_json(h, cur.version) for h in hits], "took_ms": round((time.perf_counter() - t0) * 1e3, 2),
                "snapshot": cur.version}

    @app.get("/items/{item_id:path}/thumbnail", dependencies=api, tags=["items"],
             responses={200: {"content": {"image/webp": {}}, "description": "WebP thumbnail"},
                        304: {"description": "Not modified (If-None-Match)"}, 404: {"description": "No such item"}})
    def thumbnail(item_id: str, request: Request) -> Response:
        """A small WebP of the item's image (longest side ``thumbnail_size``), cached; ETag aware."""
        cur = state.current
        row = lookup(cur, item_id)
        path = catalog_file(cur.root, row["path"])
        if path is None:
            raise HTTPException(404, "no such item")
        try:
            tag = state.thumbs.etag(path)
            headers = {"ETag": f'"{tag}"', "Cache-Control": "private, max-age=86400"}
            if request.headers.get("if-none-match", "").strip() == f'"{tag}"':
                return Response(status_code=304, headers=headers)
            data, tag = state.thumbs.get(path)
        except (MMSearchError, OSError) as exc:
            log.warning("thumbnail of %s failed: %s", item_id, exc)
            raise HTTPException(404, "the item's image can no longer be read") from None
        return Response(data, media_type="image/webp", headers=headers)

    @app.get("/items/{item_id:path}", response_model=Item, dependencies=api, tags=["items"],
             responses={404: {"description": "No such item"}})
    def item(item_id: str) -> dict[str, Any]:
        """An item's title, text and metadata."""
        cur = state.current
        row = lookup(cur, item_id)
        return {"id": row["id"], "title": row.get("title", ""), "text": row.get("text", ""),
                "metadata": row.get("metadata", {}), "thumbnail_url": item_urls(row["id"], cur.version)[1]}

    @app.get("/health", response_model=Health, dependencies=api, tags=["service"])
    def health() -> dict[str, Any]:
        cur = state.current
        return {"status": "ok", "items": len(cur.engine), "snapshot": cur.version}

    @app.get("/stats", dependencies=api, tags=["service"])
    def stats() -> dict[str, Any]:
        """Item count, model, index type and query latency percentiles (sliding window)."""
        cur = state.current
        m = cur.engine.manifest
        return {
            "items": len(cur.engine),
            "model": m["model"],
            "index": {"snapshot": cur.version, "dim": m["dim"], "metric": m["metric"], "created": m["created"],
                      "channels": {n: {"type": c["index"], "factory": c.get("spec", {}).get("factory"),
                                       "count": c["count"]} for n, c in m["channels"].items()}},
            "latency": state.latency.summary(),
            "queue": {"pending": state.gate.pending, "limit": cfg.max_pending, "workers": cfg.model_workers,
                      "rejected": state.gate.rejected},
            "thumbnails": {"hits": state.thumbs.hits, "misses": state.thumbs.misses},
            "uptime_s": round(time.time() - state.started, 1),
            "mmsearch_version": __version__,
        }

    @app.get("/filters", response_model=Filters, dependencies=api, tags=["search"])
    def filters_() -> dict[str, Any]:
        """Metadata fields the page offers as filter menus."""
        cur = state.current
        return {"supported": filter_kwarg(cur.engine.search) is not None, "fields": cur.fields}

    @app.post("/reload", response_model=Reloaded, dependencies=api, tags=["service"],
              responses={409: {"description": "The index on disk cannot be loaded; the old one keeps serving"}})
    async def reload() -> dict[str, Any]:
        """Load a rebuilt or updated index now (it is also picked up on its own every few seconds)."""
        try:
            changed = await asyncio.to_thread(state.reload)
        except MMSearchError as exc:
            log.error("POST /reload: the index cannot be loaded (still serving the old one): %s", exc)
            raise HTTPException(409, f"{without_paths(str(exc))}; still serving snapshot "
                                     f"{state.current.version}") from None
        cur = state.current
        return {"reloaded": changed, "snapshot": cur.version, "items": len(cur.engine)}

    # ----------------------------------------------------------------------------------- the page
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def watch(state: ServerState) -> None:
    """Poll the index folder and reload when its CURRENT snapshot changes."""
    while True:
        await asyncio.sleep(state.cfg.reload_interval_s)
        try:
            if await asyncio.to_thread(state.changed_on_disk):
                await asyncio.to_thread(state.reload)
        except MMSearchError as exc:
            log.error("index changed but cannot be loaded (still serving the old one): %s", exc)
        except Exception:  # never let the watcher die silently
            log.exception("index watcher failed")
