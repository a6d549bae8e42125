"""Query algebra: any number of photos and texts, each weighted, positive or negative, as one query.

A query is a list of :class:`Term` (a photo or a text, and a weight; a negative weight means "not").
Its embedding is the weighted sum of the terms' unit embeddings, re-normalised::

    q = normalize(sum_j w_j * e_j)          e_j unit vectors in the shared space, w_j < 0 for "not"

and an item scores ``sum_j w_j * s_j(item) / |sum_j w_j * e_j|``, with ``s_j`` the term's own score
(ranking.py: the image part I for a photo, the text part T for a text). Scores are linear in the
query vector, so on the shared-space image channel this is exactly ``cos(q, item)``; the item-text and
visual channels then count for each term as they do in a one-photo or one-text query.

Command-line forms (:func:`parse_terms`; HTTP sends weights as form fields and the Python API as
``(weight, value)`` pairs: :func:`terms_of`):
    ``2:shoe.jpg``        weight 2 (any number before the first colon; ``1:10:30 train`` for a text
                          that itself starts with a number and a colon)
    ``"cat + a.jpg - blurry"``   rclip-style: terms joined by `` + `` / `` - `` (spaces around them)

Everything here is pure (no model, no index) and unit-tested in tests/test_algebra.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import QueryError

_WEIGHT = re.compile(r"^(?P<w>[+-]?(?:\d+(?:\.\d*)?|\.\d+)):(?P<rest>.+)$", re.S)
_JOIN = re.compile(r"\s+([+-])\s+")


MAX_WEIGHT = 100.0  # weights are relative: past 100:1 a term drowns the others anyway, and far beyond
MIN_WEIGHT = 0.001  # the weighted sum overflows (1e308) or underflows to nothing (1e-300): a garbage ranking


@dataclass(frozen=True)
class Term:
    """One part of a query: ``kind`` "image" (a path, bytes or PIL image) or "text", and its weight
    (0, or between :data:`MIN_WEIGHT` and :data:`MAX_WEIGHT` in size; negative means "not")."""

    kind: str
    value: Any
    weight: float = 1.0

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise QueryError(f"term weight {w!r} is not a finite number")
        if w != 0 and not MIN_WEIGHT <= abs(w) <= MAX_WEIGHT:
            raise QueryError(f"term weight {w:g} is out of range: give 0, or a weight between {MIN_WEIGHT:g} and "
                             f"{MAX_WEIGHT:g} in size (weights are relative: 2:a.jpg counts twice as much)")

    @property
    def negative(self) -> bool:
        return self.weight < 0


def split_weight(arg: str) -> tuple[float, str]:
    """``"2:b.jpg"`` -> (2.0, "b.jpg"); ``"red"`` -> (1.0, "red")."""
    m = _WEIGHT.match(arg)
    if not m:
        return 1.0, arg
    return float(m.group("w")), m.group("rest")


def split_expression(arg: str) -> list[tuple[int, str]]:
    """rclip-style ``"cat + a.jpg - blurry"`` -> [(1, "cat"), (1, "a.jpg"), (-1, "blurry")].

    Only `` + `` and `` - `` with spaces on both sides join terms, so "t-shirt" or "x+y" stay one text.
    """
    parts = _JOIN.split(arg)
    out, sign = [], 1
    for i, part in enumerate(parts):
        if i % 2 == 1:
            sign = 1 if part == "+" else -1
            continue
        if part.strip():
            out.append((sign, part.strip()))
        elif i:
            raise QueryError(f"query {arg!r} has an empty term around a + or -")
    return out


def text_kind(value: str, given: str | None) -> str:
    """The default ``kind_of`` of :func:`parse_terms`: a value is a photo only where its option says so."""
    return given or "text"


def parse_terms(args: Sequence[str] = (), images: Sequence[str] = (), texts: Sequence[str] = (),
                nots: Sequence[str] = (), kind_of: Callable[[str, str | None], str] = text_kind) -> list[Term]:
    """The query strings -> terms, in this order: ``args`` (photos or texts, ``W:`` weights, rclip-style
    ``"a + b - c"``), ``images``, ``texts`` and ``nots`` (a photo or a text to move away from; a weight
    given there counts negatively too). A term weighted 0 and an empty text count as nothing.

    kind_of(value, given): "image" or "text" for one value; ``given`` is what its option says ("image"
    for ``images``, "text" for ``texts``, None for ``args`` and ``nots``). It may refuse a value with a
    QueryError: the CLI's (commands/queryargs.py) tells photos from texts by file name and checks that a
    photo exists. The default reads every untyped value as a text.
    """
    terms: list[Term] = []

    def add(raw: str, given: str | None, sign: int, expression: bool) -> None:
        for sub_sign, part in (split_expression(raw) if expression else [(1, raw)]):
            weight, value = split_weight(part)
            if weight == 0:
                continue  # a term weighted 0 does not count
            kind = kind_of(value, given)
            if kind == "text" and not value.strip():
                continue
            terms.append(Term(kind, value, sign * sub_sign * (abs(weight) if sign < 0 else weight)))

    for raw in args:
        add(raw, None, 1, True)
    for raw in images:
        add(raw, "image", 1, False)
    for raw in texts:
        add(raw, "text", 1, False)
    for raw in nots:
        add(raw, None, -1, False)
    return terms


def terms_of(image: Any = None, text: Any = None, not_image: Any = None, not_text: Any = None) -> list[Term]:
    """The Python API's keyword form -> terms.

    Each argument is one value or a list; a value may be ``(weight, value)`` to weight it. ``not_*``
    values count negatively (their weight is negated).
    """
    terms = []
    for kind, values, sign in (("image", image, 1), ("text", text, 1), ("image", not_image, -1),
                               ("text", not_text, -1)):
        if values is None:
            continue
        for v in values if isinstance(values, (list, tuple)) and not _is_weighted(values) else [values]:
            weight, value = (_as_float(v[0]), v[1]) if _is_weighted(v) else (1.0, v)
            if kind == "text" and not (isinstance(value, str) and value.strip()):
                if value is None or isinstance(value, str):
                    continue  # empty text counts as no text, as in a plain query
                raise QueryError(f"a query text must be a string, got {type(value).__name__}")
            terms.append(Term(kind, value, sign * abs(weight) if sign < 0 else weight))
    return terms


def _as_float(w: int | float) -> float:
    try:
        return float(w)
    except OverflowError:  # an int past float range (10**400)
        raise QueryError(f"term weight {w} is out of range: at most {MAX_WEIGHT:g} in size") from None


def _is_weighted(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], (int, float)) and not isinstance(v[0], bool)


def check_terms(terms: Sequence[Term]) -> None:
    """A query needs something to look for: at least one term with a positive weight."""
    if not terms:
        raise QueryError("the query has neither an image nor a text: give a photo, a text, or both")
    if not any(t.weight > 0 for t in terms):
        raise QueryError("a query needs at least one photo or text to look for (not only --not terms)")


def fuse(vectors: np.ndarray, weights: Sequence[float]) -> tuple[np.ndarray, float]:
    """(normalize(sum_j w_j * e_j), |sum_j w_j * e_j|) for unit rows ``vectors`` (n, D).

    Raises QueryError when the terms cancel out (e.g. the same text asked for and excluded).
    """
    w = np.asarray(weights, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(w):
        raise ValueError(f"need one weight per vector, got {vectors.shape} vectors and {len(w)} weights")
    mix = (w[:, None] * vectors.astype(np.float64)).sum(axis=0)  # (D,)
    norm = float(np.linalg.norm(mix))
    if norm < 1e-6:
        raise QueryError("the query's terms cancel out (the same thing wanted and excluded?)")
    return (mix / norm).astype(np.float32), norm


def combine_terms(part_scores: np.ndarray, weights: Sequence[float], norm: float) -> np.ndarray:
    """Item scores from per-term scores (n_terms, n_items): ``sum_j w_j * s_j / norm``."""
    return (np.asarray(weights, dtype=np.float64) @ part_scores.astype(np.float64) / norm).astype(np.float32)


def plain_form(terms: Sequence[Term]) -> tuple[Any, Any, float | None] | None:
    """(image, text, image weight) when ``terms`` is a query the plain path answers: one positive photo
    and/or one positive text, nothing negative (so the model's learned fusion applies); else None.
    The image weight is None when both terms weigh the same (the engine's default then applies)."""
    if any(t.negative for t in terms):
        return None
    images = [t for t in terms if t.kind == "image"]
    texts = [t for t in terms if t.kind == "text"]
    if len(images) > 1 or len(texts) > 1 or not terms:
        return None
    image, text = (images[0] if images else None), (texts[0] if texts else None)
    w = None
    if image is not None and text is not None and image.weight != text.weight:
        w = image.weight / (image.weight + text.weight)
    return (image.value if image else None), (text.value if text else None), w
