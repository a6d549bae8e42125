"""POST /cli/query: the ``mmsearch query`` command answered by a running server (see discovery.py).

Takes exactly what the CLI has (a photo's bytes, a text, ``--where`` strings) and returns full
:class:`SearchHit` rows, so the CLI prints the same output as when it searches in-process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from .discovery import identity
from .files import UploadRejected, probe_upload
from .limits import RequestBudget
from .routes import check_query_args, run_search
from .state import ServerState


class CliQuery(BaseModel):
    image_b64: str | None = None
    text: str | None = None
    k: int = 10
    image_weight: float | None = None
    where: list[str] | None = None


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
        text = check_query_args(state.cfg, q.text, q.k)
        budget = RequestBudget(state.cfg.max_terms, state.cfg.max_request_pixels)
        budget.terms((q.image_b64 is not None) + (text is not None))
        image = None
        if q.image_b64 is not None:  # decoding and the header read: off the event loop, like /search
            image = await asyncio.to_thread(read_photo, q.image_b64, state.cfg.max_image_pixels, budget)
        with state.use() as use:  # the lease: a reload cannot close the store under this search
            hits = await run_search(state, use, use.engine.search, None, image=image, text=text, k=q.k,
                                    image_weight=q.image_weight, where=q.where or None)
            ident = identity(use.engine.path)  # the CLI checks it names the index it was asked for
        return {"hits": [h.to_dict() for h in hits], "snapshot": use.version, "identity": ident}

    return router
