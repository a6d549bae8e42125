"""SearchHit: one ranked result, as every entrance (Python, CLI, HTTP) returns it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


def hit(rank: int, row: dict[str, Any], score: float) -> SearchHit:
    """The hit of a backend row (``{id, path, title, metadata}``) at ``rank`` with ``score``."""
    return SearchHit(rank=rank, id=row["id"], path=row["path"], score=score, title=row.get("title", ""),
                     metadata=row.get("metadata", {}))
