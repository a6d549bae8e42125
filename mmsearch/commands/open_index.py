"""The engine that ``similar``, ``list``, ``export`` and ``dedupe`` read an index through."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def open_index(index: Path, device: str = "cpu", where: Optional[list[str]] = None) -> tuple[Any, Any]:
    """(engine, parsed --where conditions or None); the model is loaded only if a query needs it."""
    from ..index.filters import parse_where
    from ..search.engine import SearchEngine

    conditions = parse_where(where) if where else None
    return SearchEngine.open(index, device=device, lazy_model=True), conditions
