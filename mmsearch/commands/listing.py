"""``mmsearch list``: the indexed items with their metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from .options import IndexOpt, ItemsJsonOpt, PathsOpt, Print0Opt, WhereOpt
from .output import out


def list_items(index: IndexOpt = Path("index"), where: WhereOpt = None, as_json: ItemsJsonOpt = False,
               paths: PathsOpt = False, print0: Print0Opt = False) -> None:
    """List the indexed items with their metadata (all, or those matching --where)."""
    from ..search.tools import list_items as items_of
    from .open_index import open_index
    from .output import check_print0, print_paths

    paths = check_print0(print0, paths, as_json)
    engine, conditions = open_index(index, where=where)
    items = items_of(engine, conditions)
    if as_json:
        print(json.dumps(items, ensure_ascii=False))
    elif paths:
        print_paths([it["path"] for it in items], print0)
    else:
        table = Table(title=f"{len(items)} items", title_justify="left")
        for col in ("id", "title", "metadata"):
            table.add_column(col, overflow="fold")
        for it in items:
            meta = ", ".join(f"{k}={short(v)}" for k, v in it["metadata"].items())
            table.add_row(it["id"], it["title"], meta)
        out.print(table)


def short(v: Any, width: int = 40) -> str:
    """A metadata value in one table cell: a list joined by commas, cut to ``width`` characters."""
    s = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return s if len(s) <= width else s[: width - 1] + "…"
