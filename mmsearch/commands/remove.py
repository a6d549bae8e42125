"""``mmsearch remove``: take items out of an index by id."""

from __future__ import annotations

from pathlib import Path

from .options import IndexOpt, RemoveIdsArg, WaitOpt
from .output import out


def remove(ids: RemoveIdsArg, index: IndexOpt = Path("index"), wait: WaitOpt = 0.0) -> None:
    """Remove items from the index by id (all must exist, else nothing is removed)."""
    from ..index.build import remove_items

    report = remove_items(index, ids, lock_timeout=wait)
    out.print(f"[bold green]Removed {report.removed} items[/]; {report.indexed} left in {report.out}")
