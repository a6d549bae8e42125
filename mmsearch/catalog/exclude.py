"""``--exclude`` patterns: files and folders of a catalog that are never indexed.

Patterns are globs on paths relative to the catalog root with ``/`` separators (an item's id), case-
sensitive, in the spirit of ``.gitignore``:

  ``*`` ``?`` ``[abc]``  any run of characters / one character / one of a set, never across a ``/``;
  ``**``              any number of folders: ``**/raw/*.dng``, ``private/**``;
  no ``/`` inside     matches a file or folder *name* at any depth: ``*.tmp.jpg``, ``.thumbnails``, ``drafts``;
  a ``/`` inside      anchored at the catalog root: ``private/**``, ``2019/holiday``, ``/top.jpg``;
  trailing ``/``      folders only: ``cache/``.

A pattern that matches a folder excludes everything below it (the scan does not even enter it), and a
tar shard's members go with the shard (``shards/a.tar``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import CatalogError


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern
    anchored: bool  # matched against the whole relative path, not a name
    dirs_only: bool


def _translate(p: str) -> str:
    out, i = [], 0
    while i < len(p):
        if p.startswith("**/", i):
            out.append("(?:[^/]*/)*")  # zero or more folders
            i += 3
        elif p.startswith("/**", i) and i + 3 == len(p):
            out.append("(?:/.*)?")  # the folder itself and everything below it
            i += 3
        elif p.startswith("**", i):
            out.append(".*")
            i += 2
        elif p[i] == "*":
            out.append("[^/]*")
            i += 1
        elif p[i] == "?":
            out.append("[^/]")
            i += 1
        elif p[i] == "[" and (j := p.find("]", i + 2)) != -1:
            body = p[i + 1:j]
            body = ("^" + body[1:]) if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(p[i]))
            i += 1
    return "".join(out)


def _rule(pattern: str) -> _Rule:
    if not isinstance(pattern, str):
        raise CatalogError(f"exclude pattern must be a string, got {type(pattern).__name__}")
    p = pattern.strip()
    anchored = p.startswith("/")
    p = p.lstrip("/")
    dirs_only = p.endswith("/")
    p = p.rstrip("/")
    if not p:
        raise CatalogError(f"exclude pattern {pattern!r} is empty; write e.g. --exclude 'private/**'")
    if any(part in ("..", ".") for part in p.split("/")):
        raise CatalogError(f"exclude pattern {pattern!r}: patterns are relative to the catalog root, "
                           f"without . or .. parts")
    try:
        regex = re.compile(_translate(p))
    except re.error as exc:
        raise CatalogError(f"exclude pattern {pattern!r} is not a valid glob ({exc})") from None
    return _Rule(pattern, regex, anchored or "/" in p, dirs_only)


class Excluder:
    """Compiled exclude patterns; call it with a relative path: ``excluder("private/a.jpg") -> True``."""

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = normalise(patterns)
        self._rules = [_rule(p) for p in self.patterns]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __call__(self, rel: str, is_dir: bool = False) -> bool:
        """True when ``rel`` (or a folder above it) matches a pattern; ``is_dir``: ``rel`` is a folder."""
        if not self._rules:
            return False
        parts = rel.split("/")
        for i, name in enumerate(parts):
            path = "/".join(parts[:i + 1])
            folder = is_dir or i < len(parts) - 1
            for r in self._rules:
                if (folder or not r.dirs_only) and r.regex.fullmatch(path if r.anchored else name):
                    return True
        return False


def normalise(patterns: Iterable[str]) -> list[str]:
    """Patterns checked, stripped and de-duplicated, in their order (what a manifest records)."""
    seen: list[str] = []
    for p in patterns:
        _rule(p)  # raises on a bad one
        if p.strip() not in seen:
            seen.append(p.strip())
    return seen
