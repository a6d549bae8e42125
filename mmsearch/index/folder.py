"""The folder backend's read side: one snapshot (FAISS per channel + SQLite items) behind IndexReader.

A :class:`FolderReader` holds one immutable snapshot; a newer one is picked up by opening another
reader (``changed()`` tells when). Filtered searches use the settings in :class:`RankingCfg`:
``filter_strategy`` (selector, overfetch or auto by ``overfetch_from``) and the matching ids are
remembered per filter (filtercache.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from ..config import RankingCfg
from . import ann
from .ann import IndexSpec
from .filtercache import FilterCache
from .filters import Condition
from .snapshot import read_manifest, resolve_snapshot, verify_snapshot
from .store import ItemStore, PhraseMatches


@dataclass
class Channel:
    index: faiss.Index
    ids: np.ndarray  # (n,) item ids (fids) of the rows of ``vectors``, ascending
    vectors: np.ndarray  # (n, dim) float16, memory-mapped
    spec: IndexSpec

    def rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of item_ids present in this channel, their vectors as float32 (m, dim))."""
        item_ids = np.asarray(item_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, item_ids), max(0, len(self.ids) - 1))
        present = (self.ids[pos] == item_ids) if len(self.ids) else np.zeros(len(item_ids), bool)
        return present, np.asarray(self.vectors[pos[present]], dtype=np.float32)


class FolderReader:
    """One snapshot of a folder index (``path``: the index folder or a snapshot folder)."""

    def __init__(self, path: str | Path, verify: bool = True, ranking: RankingCfg | None = None):
        self.location = str(path)
        self.path = Path(path)
        self.ranking = ranking or RankingCfg()
        manifest = read_manifest(self.path)
        snap = Path(manifest["_snapshot"])
        if verify:
            verify_snapshot(snap, manifest)
        channels: dict[str, Channel] = {}
        for name, meta in manifest["channels"].items():
            spec = IndexSpec.from_dict(meta["spec"])
            channels[name] = Channel(index=ann.read(str(snap / meta["faiss"]), spec), ids=np.load(snap / meta["ids"]),
                                     vectors=np.load(snap / meta["embeddings"], mmap_mode="r"), spec=spec)
        self.manifest, self.snapshot, self.channels = manifest, snap, channels
        self.store = ItemStore.open(snap / "items.sqlite")
        self._filters = FilterCache()  # ids matching recent --where filters (this snapshot only)

    @property
    def version(self) -> str:
        return self.snapshot.name

    def latest_version(self) -> str:
        return resolve_snapshot(self.path).name

    def changed(self) -> bool:
        return self.latest_version() != self.version

    def close(self) -> None:
        self.store.close()

    # --------------------------------------------------------------------------------- vectors
    def channel_names(self) -> list[str]:
        return list(self.channels)

    def channel_count(self, channel: str) -> int:
        ch = self.channels.get(channel)
        return 0 if ch is None else int(ch.index.ntotal)

    def search(self, channel: str, queries: np.ndarray, n: int, where: Sequence[Condition] | None = None,
               allowed: np.ndarray | None = None) -> np.ndarray:
        ch = self.channels.get(channel)
        if ch is None or ch.index.ntotal == 0:
            return np.full((len(queries), 0), -1, np.int64)
        if where is None and allowed is None:
            _, ids = ch.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, ch.index.ntotal))
            return ids
        allowed = self.select(where or []) if allowed is None else allowed
        allowed = self._filters.in_channel(channel, allowed, ch.ids)
        if not len(allowed):
            return np.full((len(queries), 0), -1, np.int64)
        strategy = self.ranking.filter_strategy
        if strategy == "auto":
            strategy = "overfetch" if len(allowed) >= self.ranking.overfetch_from * ch.index.ntotal else "selector"
        selector = None
        if strategy == "selector":  # built once per filter and channel, not per query
            ids = allowed
            selector = self._filters.attached(ids, f"channel:{channel}", f"selector:{channel}",
                                              lambda: ann.id_selector(ids))
        return ann.filtered_search(ch.index, queries, n, allowed, ch.spec.params, strategy, selector)

    def vectors(self, channel: str, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ch = self.channels.get(channel)
        if ch is None:
            return np.zeros(len(fids), bool), np.zeros((0, int(self.manifest["dim"])), np.float32)
        return ch.rows(fids)

    def all_vectors(self, channel: str) -> tuple[np.ndarray, np.ndarray]:
        ch = self.channels.get(channel)
        if ch is None:
            return np.zeros(0, np.int64), np.zeros((0, int(self.manifest["dim"])), np.float32)
        return ch.ids, np.asarray(ch.vectors, np.float32)

    # ----------------------------------------------------------------------------------- items
    def count(self) -> int:
        return int(self.manifest["count"])

    def rows(self, fids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        return self.store.rows(fids)

    def all_rows(self) -> dict[str, dict[str, Any]]:
        return self.store.all_rows()

    def fids_of(self, ids: Sequence[str]) -> dict[str, int]:
        return self.store.fids_of(ids)

    def fields(self) -> list[str]:
        return self.store.fields()

    def check_fields(self, conditions: Sequence[Condition]) -> None:
        self.store.check_fields(conditions)

    def select(self, conditions: Sequence[Condition], limit: int | None = None) -> np.ndarray:
        """Every match, whatever ``limit`` (SQLite reads them in one scan, and the result is remembered)."""
        return self._filters.allowed(self.version, list(conditions), lambda c: self.store.select(c))

    # -------------------------------------------------------------------------------- keywords
    def keyword_search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.keyword_search(text, n)

    def keyword_matches(self, text: str, fids: np.ndarray) -> PhraseMatches:
        return self.store.keyword_matches(text, fids)
