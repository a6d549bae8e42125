"""``mmsearch reindex``: rebuild the ANN index from the stored embeddings (no re-encoding)."""

from __future__ import annotations

from pathlib import Path

from .index import index_cfg
from .options import IndexOpt, IndexTypeOpt, MaxMemoryOpt, WaitOpt
from .output import out


def reindex(index: IndexOpt = Path("index"), index_type: IndexTypeOpt = None, max_memory: MaxMemoryOpt = None,
            wait: WaitOpt = 0.0) -> None:
    """Rebuild the ANN index with another type or memory budget from the stored embeddings (no re-encoding)."""
    from ..index.build import reindex as reindex_snapshot
    from ..index.options import IndexCfg
    from ..index.snapshot import read_manifest

    cfg = index_cfg(index_type, max_memory) or IndexCfg()
    m = read_manifest(reindex_snapshot(index, cfg, lock_timeout=wait))
    kinds = ", ".join(f"{n}: {c['spec']['factory']} {c['spec']['params'] or ''}".rstrip() for n, c in m["channels"].items())
    out.print(f"[bold green]Re-indexed {m['count']} items[/] ({kinds})", highlight=False)
