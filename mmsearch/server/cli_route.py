"""POST /cli/query: the ``mmsearch query`` command answered by a running server (see discovery.py).

Takes exactly what the CLI has (a photo's bytes, a text, ``--where`` strings) and returns full
:class:`SearchHit` rows, so the CLI prints the same output as when it searches in-process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from ..search.algebra import Term
from ..search.paging import Paging
from ..search.query import Query
from .discovery import identity
from .files import UploadRejected, probe_upload
from .limits import RequestBudget
from .routes import bad_query_is_400, check_query_args, run_query
from .state import ServerState


class CliTerm(BaseModel):
    kind: Literal["image", "text"]
    text: str | None = None
    image_b64: str | None = None
    weight: float = 1.0


class CliQuery(BaseModel):
    """What ``mmsearch query`` parsed: its terms and options (commands/query.py -> discovery.ask)."""

    terms: list[CliTerm]
    k: int = 10
    image_weight: float | None = None
    where: list[str] | None = None
    mode: str | None = None
    min_score: float | None = None
    sort_by: str | None = None
    descending: bool = False
    offset: int | None = None
    window: int = 200


def read_photo(image_b64: str, max_pixels: int, budget: RequestBudget) -> bytes:
    """The photo's bytes after the header check (even a header read may decode: run it in a thread)."""
    try:
        image = base64.b64decode(image_b64, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "image_b64 is not base64") from None
    try:
        _, size = probe_upload(image, max_pixels)
    except UploadRejected as exc:
        raise HTTPException(exc.status, str(exc)) from None
    budget.photo(size)
    return image


def cli_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/cli/query", include_in_schema=False)
    async def cli_query(q: CliQuery) -> dict[str, Any]:
        check_query_args(state.cfg, None, q.k)
        budget = RequestBudget(state.cfg.max_terms, state.cfg.max_request_pixels)
        budget.terms(len(q.terms))
        terms = []
        for t in q.terms:
            if t.kind == "image":  # decoding and the header read: off the event loop, like /search
                value: Any = await asyncio.to_thread(read_photo, t.image_b64 or "", state.cfg.max_image_pixels, budget)
            else:
                value = check_query_args(state.cfg, t.text, q.k)
                if value is None:
                    continue
            with bad_query_is_400():
                terms.append(Term(t.kind, value, t.weight))
        with bad_query_is_400():
            query = Query(terms=terms, k=q.k, where=q.where or None, image_weight=q.image_weight, mode=q.mode,
                          paging=Paging(q.offset, q.min_score, q.sort_by, q.descending, q.window))
        with state.use() as use:  # the lease: a reload cannot close the store under this search
            hits = await run_query(state, use, query)
            path = use.engine.path  # the CLI checks the identity names the index it was asked for
            ident = identity(path) if path is not None else None
        return {"hits": [h.to_dict() for h in hits], "snapshot": use.version, "identity": ident}

    return router
