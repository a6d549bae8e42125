"""Query: one search request, built the same way by the Python API, the CLI and every HTTP route, and
answered by :meth:`SearchEngine.run` (the one entrance to a query).

A query looks for weighted *terms* (photos and texts, negative weights meaning "not": algebra.py) or
for items like stored ones (``like`` / ``not_like`` item ids: "more like this / these"), optionally
steered by a text; ``where`` filters, ``mode`` chooses keyword / semantic / hybrid (hybrid.py) and
``paging`` cuts and orders the ranked list (paging.py). Whether the plain path (one photo and/or one
text, the learned fusion) or the algebra answers is decided in one place, :func:`algebra.plain_form`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import QueryError
from ..index.filters import WhereSpec
from .algebra import Term, terms_of
from .paging import Paging


@dataclass
class Query:
    """One search request (see the module doc)."""

    terms: list[Term] = field(default_factory=list)
    k: int = 10
    where: WhereSpec = None
    image_weight: float | None = None  # the photo's weight in a one-photo + one-text query (default 0.5)
    mode: str | None = None  # auto | hybrid | semantic | keyword
    paging: Paging = field(default_factory=Paging)
    like: list[str] = field(default_factory=list)  # item ids the results should resemble
    not_like: list[str] = field(default_factory=list)  # item ids they should not

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be at least 1, got {self.k}")
        if self.image_weight is not None and not 0.0 <= float(self.image_weight) <= 1.0:
            raise QueryError(f"image weight must be between 0 and 1, got {self.image_weight}")

    @classmethod
    def of(cls, image: Any = None, text: Any = None, *, not_image: Any = None, not_text: Any = None,
           k: int = 10, where: WhereSpec = None, image_weight: float | None = None, mode: str | None = None,
           min_score: float | None = None, sort_by: str | None = None, descending: bool = False,
           offset: int | None = None, window: int = 200) -> "Query":
        """The Python API's keyword form (:meth:`SearchEngine.search`'s arguments) -> a query."""
        return cls(terms=terms_of(image, text, not_image, not_text), k=k, where=where, image_weight=image_weight,
                   mode=mode, paging=Paging(offset, min_score, sort_by, descending, window))

    @classmethod
    def similar(cls, like: str | Sequence[str], not_like: Sequence[str] = (), text: str | None = None, *,
                k: int = 10, where: WhereSpec = None, image_weight: float | None = None) -> "Query":
        """"More like this / these": items resembling ``like`` and unlike ``not_like``, steered by ``text``."""
        like = [like] if isinstance(like, str) else list(like)
        if not like:
            raise QueryError("give at least one item to find similar items to")
        terms = [Term("text", text)] if text is not None and text.strip() else []
        return cls(terms=terms, k=k, where=where, image_weight=image_weight, like=like, not_like=list(not_like))

    @property
    def text(self) -> str | None:
        """The one positive text of a "more like" query (it steers the stored items' neighbours)."""
        texts = [t.value for t in self.terms if t.kind == "text" and t.weight > 0]
        return texts[0] if texts else None
