"""``mmsearch export``: ids, paths, metadata and embeddings out of an index (search/tools.py)."""

from __future__ import annotations

from pathlib import Path

from .options import ExportOutOpt, IndexOpt, WhereOpt
from .output import out


def export(out_path: ExportOutOpt, index: IndexOpt = Path("index"), where: WhereOpt = None) -> None:
    """Export ids, paths, metadata and embeddings, for pandas or another engine."""
    from ..search.tools import export_index
    from .open_index import open_index

    engine, conditions = open_index(index, where=where)
    n = len(engine) if conditions is None else len(engine.select(conditions))
    written = export_index(engine, out_path, conditions)
    out.print(f"[bold green]Exported {n} items[/] to {written}", highlight=False)
