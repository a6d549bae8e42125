"""The input of an index update: a catalog folder scanned, or items given as dicts, less what --exclude
patterns leave out (shared by the folder and the Milvus builds, and by torchrun)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..catalog.exclude import Excluder
from ..catalog.scan import CatalogItem, scan_catalog
from ..errors import CatalogError, MMSearchError


@dataclass
class Scanned:
    """The input of a catalog update, read before the writer lock is taken."""

    catalog: Path  # the folder (for items given in memory: the folder that holds all their images)
    items: list[CatalogItem]
    skipped: list[dict[str, str]]  # files, shards and rows the scan could not read or store, with reasons
    patterns: list[str]  # the --exclude patterns it honoured (remembered ones included)
    started: float = field(default_factory=time.perf_counter)  # the update's clock starts after the scan


def scan_update(out: Path, patterns: list[str], catalog: str | Path | None = None,
                items: Iterable[dict[str, Any]] | None = None) -> Scanned:
    """A catalog folder, or ``items`` given as dicts, less what ``patterns`` exclude; raises before
    anything is written."""
    if (catalog is None) == (items is None):
        raise CatalogError("give a catalog folder or items, not both" if items is not None else
                           "give a catalog folder or items to index")
    skipped: list[dict[str, str]] = []
    if items is not None:
        unwanted = Excluder(patterns)
        wanted = [it for it in items_from_dicts(items) if not unwanted(it.id)]
        if not wanted:
            raise CatalogError("no items given")
        folder = Path(os.path.commonpath([str(Path(it.path).parent) for it in wanted]))  # thumbnails served below
        return Scanned(folder, wanted, skipped, patterns)
    assert catalog is not None  # a folder or items: checked above
    wanted = scan_catalog(catalog, exclude=[out], skipped=skipped, exclude_globs=patterns)
    return Scanned(Path(catalog), wanted, skipped, patterns)


def items_from_dicts(given: Iterable[dict[str, Any]], previous: dict[str, dict] | None = None,
                     hashes: dict[str, str] | None = None) -> list[CatalogItem]:
    """``{"id", "image", "title", "text", "metadata"}`` dicts -> CatalogItems (checked; image paths resolved).

    With ``previous`` (id -> live row) an existing id may leave out ``image`` (its hash goes to ``hashes``)
    and the fields it does not give keep their values."""
    previous = previous or {}
    wanted = []
    for n, spec in enumerate(given, 1):
        if not isinstance(spec, dict) or not isinstance(spec.get("id"), str) or not spec["id"]:
            raise MMSearchError(f"item {n}: needs a non-empty string \"id\"")
        prev = previous.get(spec["id"])
        image = spec.get("image")
        if image is None and prev is None:
            raise MMSearchError(f"item {spec['id']!r} is new and needs an \"image\" path")
        if image is None:
            assert prev is not None  # a new item without an image was refused above
            path = prev["path"]
            if hashes is not None:
                hashes[spec["id"]] = prev["image_sha256"]
        else:
            path = str(Path(image).resolve())
            if not Path(path).is_file():
                raise MMSearchError(f"item {spec['id']!r}: image {image} does not exist")
        meta = spec.get("metadata", prev["metadata"] if prev else {})
        if not isinstance(meta, dict):
            raise MMSearchError(f"item {spec['id']!r}: \"metadata\" must be an object")
        wanted.append(CatalogItem(id=spec["id"], path=path,
                                  title=str(spec.get("title", prev["title"] if prev else "") or ""),
                                  text=str(spec.get("text", prev["text"] if prev else "") or ""), metadata=meta))
    return wanted
