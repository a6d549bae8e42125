"""Cut, order and page a ranked result list: a score cut-off, sorting by a field, stable pages.

A query's *window* is its best ``window`` hits by score (default 200). ``--min-score`` drops the hits
below a score, ``--sort-by FIELD`` orders what is left by ``score``, ``id``, ``title`` or a metadata field
(``taken_at``, ``price``, ``a.b`` for nested metadata), and ``--offset``/``k`` cut one page out of it. Every
page of one query is a slice of the same ordered window, so pages never repeat or drop an item (sorting
each page's own hits, as some tools do, would). Pure: unit-tested in tests/test_paging.py.

Sort order: items that lack the field come last in either direction; numbers before strings (a field
holding both, e.g. a price typed once as "n/a"); ties keep score order (best first), then id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, TypeVar

from ..errors import QueryError

MAX_WINDOW = 10_000


class Hit(Protocol):
    rank: int
    id: str
    score: float
    title: str
    metadata: dict[str, Any]


H = TypeVar("H", bound=Hit)


@dataclass(frozen=True)
class Paging:
    """How a query's hits are cut and ordered (see the module doc). ``offset=None``, no ``sort_by``: a
    plain top-k query, answered without a window."""

    offset: int | None = None
    min_score: float | None = None
    sort_by: str | None = None
    descending: bool = False
    window: int = 200

    def __post_init__(self) -> None:
        if self.offset is not None and self.offset < 0:
            raise QueryError(f"offset must be 0 or more, got {self.offset}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise QueryError(f"min score must be a finite number, got {self.min_score}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise QueryError(f"window must be between 1 and {MAX_WINDOW}, got {self.window}")
        if self.sort_by is not None and not self.sort_by.strip():
            raise QueryError("sort field is empty")

    @property
    def windowed(self) -> bool:
        """Whether hits come from the fixed window (paging or sorting) rather than a plain top k."""
        return self.offset is not None or self.sort_by is not None

    def fetch(self, k: int) -> int:
        """How many hits by score the search must produce for a page of ``k``."""
        if not self.windowed:
            return k
        if (self.offset or 0) >= self.window:
            raise QueryError(f"offset {self.offset} is past the window of the best {self.window} hits "
                             f"(raise the window, at most {MAX_WINDOW})")
        return self.window


def field_value(hit: Hit, name: str) -> Any:
    """``score``, ``id``, ``title``, or a metadata field (dots reach into nested objects); None if absent."""
    if name in ("score", "id", "title", "rank"):
        return getattr(hit, name)
    value: Any = hit.metadata
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _key(value: Any, descending: bool) -> tuple:
    """Sort key: (missing, kind, value), with the value negated for numbers when descending so one stable
    ascending sort does both directions while missing values stay last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0, 0)
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)):
        return (0, 0, -value if descending else value)
    text = value if isinstance(value, str) else str(value)
    return (0, 1, _Reversed(text) if descending else text)


class _Reversed:
    """A string that sorts in reverse (descending order for text without a second sort pass)."""

    __slots__ = ("s",)

    def __init__(self, s: str):
        self.s = s

    def __lt__(self, other: "_Reversed") -> bool:
        return self.s > other.s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.s == other.s


def arrange(hits: Sequence[H], k: int, paging: Paging) -> list[H]:
    """The page of ``hits`` (best first by score) that ``paging`` asks for, ranks renumbered from the
    page's place in the ordered window (page 2 of 10 starts at rank 11)."""
    kept = [h for h in hits if paging.min_score is None or h.score >= paging.min_score]
    if paging.sort_by is not None:
        name, desc = paging.sort_by, paging.descending
        order = sorted(range(len(kept)), key=lambda i: (_key(field_value(kept[i], name), desc), i))
        kept = [kept[i] for i in order]
    start = paging.offset or 0
    page = kept[start:start + k]
    for n, h in enumerate(page, start + 1):
        h.rank = n
    return page
