"""Command-line query terms -> :class:`mmsearch.search.algebra.Term` (see algebra.py for the forms)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..catalog.scan import IMAGE_EXTENSIONS, is_image_file
from ..errors import QueryError
from ..search.algebra import Term, split_expression, split_weight


def looks_like_photo(value: str) -> bool:
    """A positional value names a photo when it is an image file name (no spaces); an existing file that
    is not an image is refused rather than silently searched as text."""
    if is_image_file(value) and not any(c.isspace() for c in value.strip()):
        if not Path(value).is_file():
            raise QueryError(f"query image {value} does not exist (to search for this text, pass --text)")
        return True
    if not any(c.isspace() for c in value) and Path(value).is_file():
        raise QueryError(f"{value} is a file but not an image (known: {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                         f"to search for this text, pass --text")
    return False


def photo(value: str) -> str:
    if not Path(value).is_file():
        raise QueryError(f"query image {value} does not exist")
    return value


def query_terms(args: Sequence[str], images: Sequence[str], texts: Sequence[str], nots: Sequence[str]) -> list[Term]:
    """Positional values (photos or texts, ``W:`` weights, rclip-style ``a + b - c``), ``--image``,
    ``--text`` and ``--not`` (a photo or a text to move away from) -> terms, in that order."""
    terms: list[Term] = []

    def add(kind: str | None, raw: str, sign: int, expression: bool) -> None:
        for sub_sign, part in (split_expression(raw) if expression else [(1, raw)]):
            weight, value = split_weight(part)
            if weight == 0:
                continue
            k = kind or ("image" if looks_like_photo(value) else "text")
            if k == "image":
                value = photo(value)
            elif not value.strip():
                continue
            terms.append(Term(k, value, sign * sub_sign * (abs(weight) if sign < 0 else weight)))

    for raw in args:
        add(None, raw, 1, True)
    for raw in images:
        add("image", raw, 1, False)
    for raw in texts:
        add("text", raw, 1, False)
    for raw in nots:
        add(None, raw, -1, False)
    return terms


def describe(terms: Sequence[Term]) -> str:
    """``photo a.jpg + "red" - "high heel"``: how the query was read (shown with --verbose)."""
    out = []
    for i, t in enumerate(terms):
        sign = "-" if t.negative else ("+" if i else "")
        w = abs(t.weight)
        val = f"photo {t.value}" if t.kind == "image" else repr(t.value)
        out.append(f"{sign} {'' if w == 1 else f'{w:g}:'}{val}".strip())
    return " ".join(out)
