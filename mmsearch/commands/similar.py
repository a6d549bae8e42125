"""``mmsearch similar``: more like this (or these) indexed item(s)."""

from __future__ import annotations

from pathlib import Path

from .options import (
    DeviceOpt,
    IndexOpt,
    ItemIdsArg,
    JsonOpt,
    NotIdOpt,
    PathsOpt,
    PreviewOpt,
    Print0Opt,
    SteerTextOpt,
    TopKOpt,
    WhereOpt,
)


def similar(
    item_ids: ItemIdsArg,
    not_ids: NotIdOpt = None,
    index: IndexOpt = Path("index"),
    k: TopKOpt = 10,
    text: SteerTextOpt = None,
    as_json: JsonOpt = False,
    paths: PathsOpt = False,
    print0: Print0Opt = False,
    preview: PreviewOpt = False,
    where: WhereOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """More like this (or these): items whose images resemble every ID and none of --not (given ids left out)."""
    from .open_index import open_index
    from .output import check_modes, check_print0, print_hits

    mode = check_modes(as_json, check_print0(print0, paths, as_json, preview), preview)
    engine, conditions = open_index(index, device, where)
    hits = engine.search_similar(item_ids[0] if len(item_ids) == 1 else item_ids, text=text, k=k,
                                 where=conditions, not_ids=not_ids or ())
    print_hits(hits, mode, print0=print0)
