"""Can an item be written to the item store? Checked per item before any encoding, so that one odd file
name or metadata value is skipped and reported by name instead of failing the whole run at commit time.

The check runs the conversion the store runs (``json.dumps`` of the metadata, whose keys and values
are also the filters' attribute rows) and asks SQLite's rules of it: text must be valid UTF-8 (a Latin-1 file name arrives
as a str with lone surrogates), every metadata key a string, nesting bounded.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # of a metadata object; far above real catalogs, far below Python's recursion limit


def display_name(name: str) -> str:
    """A printable, UTF-8-safe form of a file name that may hold undecodable bytes (as ``\\xe9``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
        .encode("utf-8", "backslashreplace").decode("utf-8")


def _depth(v: Any, limit: int) -> int:
    stack = [(v, 1)]
    deepest = 0
    while stack:
        x, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(x, dict):
            stack.extend((e, d + 1) for e in x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend((e, d + 1) for e in x)
    return deepest


def problem(item_id: str, path: str, title: str, text: str, metadata: Any) -> str | None:
    """Why the item cannot be stored, or None when it can."""
    for what, value in (("file name", item_id), ("path", path), ("title", title), ("text", text)):
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:
            return f"{what} is not valid UTF-8 (undecodable bytes or a lone surrogate)"
    if not isinstance(metadata, dict):
        return "metadata is not an object"
    if _depth(metadata, MAX_DEPTH) > MAX_DEPTH:
        return f"metadata is nested more than {MAX_DEPTH} levels deep"
    try:
        # the store keeps metadata as this JSON, and its filter rows hold the same keys and values
        json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8")
    except UnicodeEncodeError:
        return "metadata is not valid UTF-8 (a lone surrogate)"
    except TypeError as exc:  # a None key (csv row with extra fields), or a value JSON cannot hold
        return f"metadata cannot be stored: {exc}"
    except (ValueError, RecursionError) as exc:
        return f"metadata cannot be stored: {exc}"
    return None
