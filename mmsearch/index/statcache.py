"""Content hashes of catalog files, reused while a file's size and mtime stay the same (as rclip does).

An update hashes every image to find what changed; on an unchanged catalog that is the whole cost of the
update. ``<out>/.filestat.json`` (beside the snapshots, not part of any: a cache, rebuilt when missing or
unreadable) maps each file to ``[size, mtime_ns, inode, sha256]`` from the last run; a file whose stat
still matches keeps its recorded hash, any other (new, touched, replaced) is hashed again. A touched file
with the same content hashes the same, so the plan stays a no-op.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..catalog.scan import CatalogItem
from ..fsutil import atomic_write
from .plan import hash_items

log = logging.getLogger(__name__)

FILE = ".filestat.json"
VERSION = 1


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:  # a tar member (<tar>/<member>) or a vanished file: hashed every time
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class StatCache:
    def __init__(self, path: Path, entries: dict[str, list[Any]]):
        self.path = path
        self.entries = entries  # file path -> [size, mtime_ns, inode, sha256]
        self.hashed = 0  # files hashed by the last hash_items call
        self.before: dict[str, list[int]] = {}  # file -> its stat taken before it was hashed

    @classmethod
    def open(cls, out: str | Path) -> "StatCache":
        path = Path(out) / FILE
        try:
            data = json.loads(path.read_text())
            entries = data["files"] if data.get("version") == VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def hash_items(self, items: list[CatalogItem]) -> dict[str, str]:
        """id -> image SHA-256, as :func:`mmsearch.index.plan.hash_items`, hashing only changed files."""
        known: dict[str, str] = {}
        for it in items:
            entry = self.entries.get(it.path)
            now = _stat(it.path)  # before hashing: a file changed while hashed is hashed again next time
            if now is not None:
                self.before[it.path] = now
            if now is not None and isinstance(entry, list) and len(entry) == 4 and entry[:3] == now:
                known[it.id] = entry[3]
        self.hashed = len(items) - len(known)
        log.info("hashing %d of %d files (the others are unchanged since the last run)", self.hashed, len(items))
        return hash_items(items, known)

    def save(self, items: list[CatalogItem], hashes: dict[str, str]) -> None:
        """Record the files of this run (never fatal: the cache only saves time)."""
        entries = {}
        for it in items:
            h = hashes.get(it.id, "")
            now = self.before.get(it.path)
            if now is not None and h and not h.startswith("unreadable:"):
                entries[it.path] = now + [h]
        if entries == self.entries:
            return
        try:
            atomic_write(self.path, json.dumps({"version": VERSION, "files": entries}), durable=False)
            self.entries = entries
        except OSError as exc:
            log.warning("could not write %s: %s", self.path, exc)
