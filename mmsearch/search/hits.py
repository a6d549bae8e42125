"""SearchHit: one ranked result, as every entrance (Python, CLI, HTTP) returns it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class SearchHit:
    rank: int
    id: str
    path: str
    score: float
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hits_of(backend: Any, ranked: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[list[SearchHit]]:
    """Per ranked list of (fids, scores), best first, its hits; every list's rows read from ``backend`` (an
    index/backend.py IndexReader) in one go."""
    fids = np.unique(np.concatenate([ids for ids, _ in ranked] + [np.zeros(0, np.int64)]))
    rows = backend.rows(fids)
    return [[hit(r, rows[int(i)], float(s)) for r, (i, s) in enumerate(zip(ids, scores), 1)] for ids, scores in ranked]


def hit(rank: int, row: dict[str, Any], score: float) -> SearchHit:
    """The hit of a backend row (``{id, path, title, metadata}``) at ``rank`` with ``score``."""
    return SearchHit(rank=rank, id=row["id"], path=row["path"], score=score, title=row.get("title", ""),
                     metadata=row.get("metadata", {}))
