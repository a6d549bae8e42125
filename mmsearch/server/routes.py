"""The server's routes, in three routers: search, items, service (create_app adds the API key check)."""

import asyncio
import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Any, Iterator
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from .._version import __version__
from ..errors import ItemNotFoundError, MMSearchError
from ..search.algebra import Term
from ..search.engine import SearchHit
from ..search.paging import Paging
from ..search.query import Query as SearchQuery
from .files import UploadRejected, catalog_file, probe_upload
from .limits import RequestBudget
from .paths import ITEM_PATH  # noqa: F401  (registers the {item_id:itempath} convertor)
from .settings import ServeCfg
from .state import ServerState, Use

log = logging.getLogger(__name__)

MAX_FILTER_CHARS = 64 * 1024  # a filters form field; far above any real filter, far below a memory risk


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


class ItemList(BaseModel):
    total: int = Field(description="Items matching the filters (all pages)")
    items: list[Item]


class Health(BaseModel):
    status: str
    items: int
    snapshot: str


class NumericRange(BaseModel):
    min: float
    max: float


class Filters(BaseModel):
    supported: bool = Field(description="Whether this build's SearchEngine applies filters")
    fields: dict[str, list[Any]] = Field(description="Metadata fields with few distinct values, and those values")
    numeric: dict[str, NumericRange] = Field(
        default_factory=dict, description="Metadata fields whose values are all numbers, with their smallest and "
        'largest value: filter them by range, e.g. [["price", ">=", 10], ["price", "<", 50]]')


class DuplicateGroup(BaseModel):
    ids: list[str] = Field(description="The group's items, its first (lowest id) first")
    scores: list[float] = Field(description="Each member's similarity to the first item (1.0 for exact copies)")
    kinds: list[str] = Field(description='Per member: "exact" (the same file content as the first) or "near"')
    kind: str = Field(description='"exact" when every member is an exact copy of the first, else "near"')
    thumbnail_urls: list[str]


class Duplicates(BaseModel):
    groups: list[DuplicateGroup] = Field(description="Largest group first")


class Reloaded(BaseModel):
    reloaded: bool
    snapshot: str
    items: int


ERRORS = {400: {"description": "Malformed query (one-line `detail`)"},
          401: {"description": "Missing or wrong API key"},
          413: {"description": "Request body over the upload limit, or more query terms (`max_terms`) or photo "
                                "pixels (`max_request_pixels`) than one request may have"},
          415: {"description": "Upload is not an image"},
          503: {"description": "Model queue full; retry after `Retry-After` seconds"}}


# ------------------------------------------------------------------------------------------ helpers
def item_urls(item_id: str, version: str) -> tuple[str, str]:
    path = quote(item_id, safe="/")
    return f"/items/{path}", f"/items/{path}/thumbnail?v={quote(version)}"


def hit_json(h: SearchHit, version: str) -> dict[str, Any]:
    item_url, thumb_url = item_urls(h.id, version)
    return {"rank": h.rank, "id": h.id, "score": round(float(h.score), 6), "title": h.title,
            "metadata": h.metadata, "thumbnail_url": thumb_url, "item_url": item_url}


def parse_filters(raw: str | None) -> dict[str, Any] | list[Any] | None:
    """The ``filters`` field: a JSON object of field: value (or [op, value]), or a JSON list of
    [field, op, value] triples (several conditions on one field: a range)."""
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
    if not isinstance(value, (dict, list)):
        raise HTTPException(400, 'filters must be a JSON object, e.g. {"category": "food"}, or a list of '
                                 '[field, op, value], e.g. [["price", ">=", 10], ["price", "<", 50]]')
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


async def run_query(state: ServerState, use: Use, query: SearchQuery) -> list[SearchHit]:
    """Answer ``query`` with ``use``'s engine (:meth:`SearchEngine.run`, the one entrance every route takes),
    through the model gate as a job of ``use`` (it holds the engine's lease while it runs)."""
    t0 = time.perf_counter()
    try:
        hits = await state.gate.run(use.job(use.engine.run), query)
    except ItemNotFoundError as exc:
        raise HTTPException(404, without_paths(str(exc))) from None
    except (MMSearchError, ValueError) as exc:  # bad query (filters included); anything else is a bug
        raise HTTPException(400, without_paths(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__) \
            from None
    state.latency.add((time.perf_counter() - t0) * 1000.0)
    return hits


@contextlib.contextmanager
def bad_query_is_400() -> Iterator[None]:
    """A query that cannot be built (a term weight, a paging option, k out of range) is a 400 with its message."""
    try:
        yield
    except MMSearchError as exc:
        raise HTTPException(400, str(exc)) from None


@contextlib.contextmanager
def bad_filter_is_400() -> Iterator[None]:
    """A bad filter or option met while reading the index (/items, /duplicates) is a 400 with the error's
    first line."""
    try:
        yield
    except (MMSearchError, ValueError) as exc:
        raise HTTPException(400, str(exc).splitlines()[0]) from None


def given(upload: UploadFile | str) -> bool:
    """Whether a file field holds a photo (browsers send an empty one when no file was chosen)."""
    return bool(upload) if isinstance(upload, str) else bool(upload.filename or upload.size)


async def read_upload(upload: UploadFile | str, cfg: ServeCfg, budget: RequestBudget) -> bytes | None:
    """The bytes of one uploaded photo after the header check (its pixels counted against the request's
    ``budget``); None for an empty file input (it may arrive as an empty string)."""
    if isinstance(upload, str):
        if upload:
            raise HTTPException(400, "image must be an uploaded file, not a text field")
        return None
    data = await upload.read()
    if not data and not upload.filename:
        return None
    try:  # off the event loop: even a header read may decode
        _, size = await asyncio.to_thread(probe_upload, data, cfg.max_image_pixels)
    except UploadRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None
    budget.photo(size)
    return data


def weigh(values: list[Any], weights: list[float] | None, what: str) -> list[tuple[float, Any]]:
    """(weight, value) pairs; ``weights`` gives one per value, in order (default 1 each)."""
    if weights is None:
        return [(1.0, v) for v in values]
    if len(weights) != len(values):
        raise HTTPException(400, f"{what}_weights has {len(weights)} value(s) for {len(values)} {what}(s)")
    return [(float(w), v) for w, v in zip(weights, values) if w != 0]


def lookup(cur: Use, item_id: str) -> dict[str, Any]:
    row = cur.row_of.get(item_id)
    if row is None:
        raise HTTPException(404, "no such item")
    return row


# ------------------------------------------------------------------------------------------ routers
def search_router(state: ServerState) -> APIRouter:
    """POST /search, POST /search/by-item/{id}, GET /filters."""
    router = APIRouter()
    cfg = state.cfg

    @router.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
    async def search(
        image: Annotated[list[UploadFile | str] | None, File(description="Query photo; repeat the field for several "
                                                       "photos")] = None,
        text: Annotated[list[str] | None, Form(description="Query text; repeatable")] = None,
        k: Annotated[int, Form(ge=1, description="Number of hits")] = 10,
        image_weight: Annotated[float | None, Form(ge=0.0, le=1.0, description="Weight of the photo in "
                                                   "one-photo + one-text queries (default 0.5)")] = None,
        filters: Annotated[str | None, Form(description='JSON object of metadata filters, e.g. '
                                            '{"category": "food"}')] = None,
        not_image: Annotated[list[UploadFile | str] | None, File(description="A photo the results should not look "
                                                           "like; repeatable")] = None,
        not_text: Annotated[list[str] | None, Form(description="A text the results should not match; "
                                                   "repeatable")] = None,
        image_weights: Annotated[list[float] | None, Form(description="One weight per `image`, in order "
                                                          "(default 1; negative: not)")] = None,
        text_weights: Annotated[list[float] | None, Form(description="One weight per `text`, in order "
                                                         "(default 1; negative: not)")] = None,
        mode: Annotated[str | None, Form(description="hybrid (keyword + semantic), semantic or keyword; default: "
                                         "hybrid when the items have titles")] = None,
        min_score: Annotated[float | None, Form(description="Leave out hits scoring below this")] = None,
        sort_by: Annotated[str | None, Form(description="Order the best `window` hits by score, id, title or a "
                                            "metadata field")] = None,
        descending: Annotated[bool, Form(description="With sort_by: largest / latest first")] = False,
        offset: Annotated[int | None, Form(ge=0, description="Skip this many hits of the ordered window "
                                           "(stable pages)")] = None,
        window: Annotated[int, Form(ge=1, le=1000, description="Hits that sort_by and offset page through")] = 200,
    ) -> dict[str, Any]:
        """Search by photos and texts (multipart form): one of each, or any number, weighted, with "not"
        terms (the query algebra of README "Query algebra")."""
        where = parse_filters(filters)
        for t in (text or []) + (not_text or []):
            check_query_args(cfg, t, k)
        check_query_args(cfg, None, k)
        budget = RequestBudget(cfg.max_terms, cfg.max_request_pixels)
        photos = [f for f in (image or []) + (not_image or []) if given(f)]
        budget.terms(len(photos) + sum(bool(t.strip()) for t in (text or []) + (not_text or [])))
        images = [d for d in [await read_upload(f, cfg, budget) for f in image or []] if d is not None]
        nots = [d for d in [await read_upload(f, cfg, budget) for f in not_image or []] if d is not None]
        texts = [t for t in text or [] if t.strip()]
        neg_texts = [t for t in not_text or [] if t.strip()]
        if not images and not texts and not nots and not neg_texts:
            raise HTTPException(400, "a query needs an image, a text, or both")
        with bad_query_is_400():
            terms = ([Term("image", d, w) for w, d in weigh(images, image_weights, "image")]
                     + [Term("image", d, -1.0) for d in nots]
                     + [Term("text", t, w) for w, t in weigh(texts, text_weights, "text")]
                     + [Term("text", t, -1.0) for t in neg_texts])
            query = SearchQuery(terms=terms, k=k, where=where, image_weight=image_weight, mode=mode,
                                paging=Paging(offset, min_score, sort_by, descending, window))
        with state.use() as use:
            return await answer(use, query)

    @router.post("/search/by-item/{item_id:itempath}", response_model=SearchResponse,
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
        RequestBudget(cfg.max_terms, cfg.max_request_pixels).terms(1 + (text is not None))  # the item is a term
        with state.use() as use:
            row = lookup(use, item_id)
            return await answer(use, SearchQuery.similar(row["id"], (), text, k=k, where=where, image_weight=image_weight))

    async def answer(use: Use, query: SearchQuery) -> dict[str, Any]:
        t0 = time.perf_counter()
        hits = await run_query(state, use, query)
        return {"hits": [hit_json(h, use.version) for h in hits], "took_ms": round((time.perf_counter() - t0) * 1e3, 2),
                "snapshot": use.version}

    @router.post("/search/similar", response_model=SearchResponse,
                 responses={**ERRORS, 404: {"description": "No such item"}}, tags=["search"])
    async def search_similar(
        ids: Annotated[list[str], Form(alias="id", description="An item the results should resemble; repeatable")],
        not_id: Annotated[list[str] | None, Form(description="An item the results should not resemble; "
                                                 "repeatable")] = None,
        text: Annotated[str | None, Form(description="Optional text to steer the results")] = None,
        k: Annotated[int, Form(ge=1)] = 10,
        filters: Annotated[str | None, Form(description="JSON object of metadata filters")] = None,
    ) -> dict[str, Any]:
        """"More like these": items resembling every `id` and none of `not_id` (a basket, a board, a history);
        the given items are left out."""
        text = check_query_args(cfg, text, k)
        where = parse_filters(filters)
        RequestBudget(cfg.max_terms, cfg.max_request_pixels).terms(len(ids) + len(not_id or []) + (text is not None))
        with state.use() as use:
            return await answer(use, SearchQuery.similar(ids, not_id or [], text, k=k, where=where))

    @router.get("/filters", response_model=Filters, tags=["search"])
    def filters_() -> dict[str, Any]:
        """Metadata fields the page offers as filter menus (``fields``) and as ranges (``numeric``)."""
        with state.use() as use:
            return {"supported": True, "fields": use.fields,
                    "numeric": use.numeric}

    return router


def items_router(state: ServerState) -> APIRouter:
    """GET /items, GET /duplicates, GET /items/{id}/thumbnail, GET /items/{id}."""
    router = APIRouter()

    @router.get("/items", response_model=ItemList, tags=["items"], responses={400: ERRORS[400]})
    def list_items(
        filters: Annotated[str | None, Query(description='JSON object of metadata filters, e.g. '
                                             '{"category": "food"}')] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """The indexed items (as `mmsearch list`), all or those matching the filters, in index order."""
        where = parse_filters(filters)
        with state.use() as cur:  # the store stays open while it is read
            rows = list(cur.row_of.values())
            if where is not None:
                with bad_filter_is_400():
                    keep = set(cur.engine.select(where).tolist())
                rows = [r for r in rows if r["fid"] in keep]
        page = rows[offset:offset + limit]
        return {"total": len(rows), "items": [{"id": r["id"], "title": r.get("title", ""), "text": r.get("text", ""),
                                               "metadata": r.get("metadata", {}),
                                               "thumbnail_url": item_urls(r["id"], cur.version)[1]} for r in page]}

    @router.get("/duplicates", response_model=Duplicates, tags=["items"], responses={400: ERRORS[400]})
    async def duplicates(
        threshold: Annotated[float, Query(ge=-1.0, le=1.0, description="Near-duplicate cosine similarity")] = 0.92,
        kind: Annotated[str, Query(pattern="^(all|exact|near)$")] = "all",
        filters: Annotated[str | None, Query(description="JSON metadata filters: only these items")] = None,
    ) -> dict[str, Any]:
        """Groups of copies among the indexed images (as `mmsearch dedupe`): exact copies and near-duplicates."""
        from ..search.tools import find_duplicates

        where = parse_filters(filters)
        with state.use() as cur:  # the index stays open while it is read
            with bad_filter_is_400():  # reads every image vector: off the event loop
                groups = await asyncio.to_thread(find_duplicates, cur.engine, threshold, where, kind)
        return {"groups": [{"ids": g["ids"], "scores": g["scores"], "kinds": g["kinds"], "kind": g["kind"],
                            "thumbnail_urls": [item_urls(i, cur.version)[1] for i in g["ids"]]} for g in groups]}

    def locate(root: Path, item_path: str) -> tuple[Path, str]:
        path = catalog_file(root, item_path)
        if path is None:
            raise HTTPException(404, "no such item")
        return path, state.thumbs.etag(path)

    @router.get("/items/{item_id:itempath}/thumbnail", tags=["items"],
                responses={200: {"content": {"image/webp": {}}, "description": "WebP thumbnail"},
                         304: {"description": "Not modified (If-None-Match)"}, 404: {"description": "No such item"}})
    async def thumbnail(item_id: str, request: Request) -> Response:
        """A small WebP of the item's image (longest side ``thumbnail_size``), cached; ETag aware."""
        with state.use() as cur:
            row = lookup(cur, item_id)
            root = cur.root
        try:
            path, tag = await asyncio.to_thread(locate, root, row["path"])  # file system reads: off the loop
            headers = {"ETag": f'"{tag}"', "Cache-Control": "private, max-age=86400"}
            if request.headers.get("if-none-match", "").strip() == f'"{tag}"':
                return Response(status_code=304, headers=headers)
            data = await state.thumbs.fetch(path, tag)  # bounded decodes, one per file however many ask
        except (MMSearchError, OSError) as exc:
            log.warning("thumbnail of %s failed: %s", item_id, exc)
            raise HTTPException(404, "the item's image can no longer be read") from None
        return Response(data, media_type="image/webp", headers=headers)

    @router.get("/items/{item_id:itempath}", response_model=Item, tags=["items"],
                responses={404: {"description": "No such item"}})
    def item(item_id: str) -> dict[str, Any]:
        """An item's title, text and metadata."""
        with state.use() as cur:
            row = lookup(cur, item_id)
        return {"id": row["id"], "title": row.get("title", ""), "text": row.get("text", ""),
                "metadata": row.get("metadata", {}), "thumbnail_url": item_urls(row["id"], cur.version)[1]}

    return router


def service_router(state: ServerState) -> APIRouter:
    """GET /health, GET /stats, POST /reload."""
    router = APIRouter()
    cfg = state.cfg

    @router.get("/health", response_model=Health, tags=["service"])
    def health() -> dict[str, Any]:
        with state.use() as use:
            return {"status": "ok", "items": len(use.engine), "snapshot": use.version}

    @router.get("/stats", tags=["service"])
    def stats() -> dict[str, Any]:
        """Item count, model, index type and query latency percentiles (sliding window)."""
        with state.use() as use:
            m, count, version = use.engine.manifest, len(use.engine), use.version
        return {
            "items": count,
            "model": m["model"],
            "index": {"snapshot": version, "dim": m["dim"], "metric": m["metric"], "created": m["created"],
                      "channels": {n: {"type": c["index"], "factory": c.get("spec", {}).get("factory"),
                                       "count": c["count"]} for n, c in m["channels"].items()}},
            "latency": state.latency.summary(),
            "queue": {"pending": state.gate.pending, "limit": cfg.max_pending, "workers": cfg.model_workers,
                      "rejected": state.gate.rejected},
            "thumbnails": {"hits": state.thumbs.hits, "misses": state.thumbs.misses, "shared": state.thumbs.shared},
            "uptime_s": round(time.time() - state.started, 1),
            "mmsearch_version": __version__,
        }

    @router.post("/reload", response_model=Reloaded, tags=["service"],
                 responses={409: {"description": "The index on disk cannot be loaded; the old one keeps serving"}})
    async def reload() -> dict[str, Any]:
        """Load a rebuilt or updated index now (it is also picked up on its own every few seconds)."""
        try:
            changed = await asyncio.to_thread(state.reload)
        except MMSearchError as exc:
            log.error("POST /reload: the index cannot be loaded (still serving the old one): %s", exc)
            with state.use() as use:
                raise HTTPException(409, f"{without_paths(str(exc))}; still serving snapshot {use.version}") from None
        with state.use() as use:
            return {"reloaded": changed, "snapshot": use.version, "items": len(use.engine)}

    return router
