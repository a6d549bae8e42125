"""POST /cli/query: the ``mmsearch query`` command answered by a running server (see discovery.py).

Takes exactly what the CLI has (a photo's bytes, a text, ``--where`` strings) and returns full
:class:`SearchHit` rows, so the CLI prints the same output as when it searches in-process.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from .discovery import identity
from .files import UploadRejected, probe_upload
from .routes import check_query_args, run_search
from .state import ServerState


class CliQuery(BaseModel):
    image_b64: str | None = None
    text: str | None = None
    k: int = 10
    image_weight: float | None = None
    where: list[str] | None = None


def cli_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.post("/cli/query", include_in_schema=False)
    async def cli_query(q: CliQuery) -> dict[str, Any]:
        text = check_query_args(state.cfg, q.text, q.k)
        try:
            image = base64.b64decode(q.image_b64, validate=True) if q.image_b64 is not None else None
        except (binascii.Error, ValueError):
            raise HTTPException(400, "image_b64 is not base64") from None
        if image is not None:
            try:
                probe_upload(image, state.cfg.max_image_pixels)
            except UploadRejected as exc:
                raise HTTPException(exc.status, str(exc)) from None
        cur = state.current
        hits = await run_search(state, cur.engine.search, None, image=image, text=text, k=q.k,
                                image_weight=q.image_weight, where=q.where or None)
        return {"hits": [h.to_dict() for h in hits], "snapshot": cur.version,
                "identity": identity(cur.engine.path)}  # the CLI checks it names the index it was asked for

    return router
