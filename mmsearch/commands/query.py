"""``mmsearch query``: the command line's photos and texts -> terms (search/algebra.py parse_terms) -> hits,
from a running ``mmsearch serve`` of the same index when it can answer, else from an engine opened here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import QueryError
from .options import (
    BatchOpt,
    DescOpt,
    DeviceOpt,
    ImageOpt,
    ImageWeightOpt,
    IndexOpt,
    JsonOpt,
    MinScoreOpt,
    ModeOpt,
    NoServerOpt,
    NotOpt,
    OffsetOpt,
    PathsOpt,
    PreviewOpt,
    Print0Opt,
    QueryArgs,
    SortByOpt,
    TextOpt,
    TopKOpt,
    UpdateOpt,
    WhereOpt,
    WindowOpt,
)

log = logging.getLogger("mmsearch.cli")  # the name --verbose shows for "query: ..."


def query(
    args: QueryArgs = None,
    image: ImageOpt = None,
    text: TextOpt = None,
    not_: NotOpt = None,
    index: IndexOpt = Path("index"),
    k: TopKOpt = 10,
    image_weight: ImageWeightOpt = None,
    as_json: JsonOpt = False,
    paths: PathsOpt = False,
    print0: Print0Opt = False,
    preview: PreviewOpt = False,
    batch: BatchOpt = None,
    device: DeviceOpt = "auto",
    where: WhereOpt = None,
    no_server: NoServerOpt = False,
    min_score: MinScoreOpt = None,
    sort_by: SortByOpt = None,
    desc: DescOpt = False,
    offset: OffsetOpt = None,
    window: WindowOpt = 200,
    search_mode: ModeOpt = None,
    update: UpdateOpt = False,
) -> None:
    """Search the index by photos and texts: one of each, or any number, weighted, with --not terms (the query
    goes through a running `mmsearch serve` of the same index when there is one: no model load)."""
    from ..index.filters import parse_where
    from ..search.algebra import parse_terms
    from ..search.paging import Paging
    from ..search.query import Query
    from .output import check_modes, check_print0, print_hits
    from .queryargs import describe, photo_or_text

    mode = check_modes(as_json, check_print0(print0, paths, as_json, preview), preview)
    conditions = parse_where(where) if where else None  # malformed filters fail before any loading
    paging = Paging(offset, min_score, sort_by, desc, window)
    if update:
        from .index import update_from_catalog

        update_from_catalog(index)
    if batch is not None:
        from .batch import query_batch

        return query_batch(batch, index, device, k, image_weight, conditions, mode, paging,
                           with_terms=bool(args or image or text or not_))
    terms = parse_terms(args or [], image or [], text or [], not_ or [], kind_of=photo_or_text)
    if not terms:
        raise QueryError("give a query image, a query text, or both (e.g. mmsearch query photo.jpg \"red shoes\")")
    log.info("query: %s", describe(terms))
    query = Query(terms=terms, k=k, where=where or None, image_weight=image_weight, mode=search_mode, paging=paging)
    hits = None if no_server else ask_server(index, query)
    if hits is None:
        from ..search.engine import SearchEngine  # torch and the model: only when searching here

        hits = SearchEngine.open(index, device=device).run(query)
    print_hits(hits, mode, "No results: no item matches the --where filter." if where else "No results.",
               print0=print0)


def ask_server(index: Path, query: Any) -> list | None:
    """Hits from a running `mmsearch serve` of ``index`` (server/discovery.py), or None: no server."""
    from types import SimpleNamespace

    from ..index.backend import is_milvus
    from ..server.discovery import ask

    if is_milvus(index):  # servers advertise in an index folder; a Milvus index has none
        return None
    rows = ask(index, query)
    return None if rows is None else [SimpleNamespace(**r) for r in rows]
