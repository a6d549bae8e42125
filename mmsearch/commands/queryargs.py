"""What the command line's query values name: a photo (an existing image file) or a text. The strings
themselves (``W:`` weights, ``a + b - c``) are parsed by :func:`mmsearch.search.algebra.parse_terms`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..catalog.scan import IMAGE_EXTENSIONS, is_image_file
from ..errors import QueryError
from ..search.algebra import Term


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


def photo_or_text(value: str, given: str | None) -> str:
    """``parse_terms``' ``kind_of`` for the command line: ``--text`` is a text, ``--image`` a photo that must
    exist, and a positional or ``--not`` value a photo when it names an image file (looks_like_photo)."""
    if given == "text":
        return "text"
    if given == "image" or looks_like_photo(value):
        if not Path(value).is_file():
            raise QueryError(f"query image {value} does not exist")
        return "image"
    return "text"


def describe(terms: Sequence[Term]) -> str:
    """``photo a.jpg + "red" - "high heel"``: how the query was read (shown with --verbose)."""
    out = []
    for i, t in enumerate(terms):
        sign = "-" if t.negative else ("+" if i else "")
        w = abs(t.weight)
        val = f"photo {t.value}" if t.kind == "image" else repr(t.value)
        out.append(f"{sign} {'' if w == 1 else f'{w:g}:'}{val}".strip())
    return " ".join(out)
