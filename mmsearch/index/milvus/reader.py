"""The Milvus backend's read side: an index in a Milvus collection behind index.backend.IndexReader.

Milvus proposes candidates (``search``) and returns stored rows and vectors; the engine re-scores them
exactly, as it does for FAISS. Unlike a folder snapshot, the rows are live: a write shows as soon as it
lands (each item whole). The manifest (meta.py) changes once per update, at its end: ``version`` is its
generation and ``changed()`` polls it, so a reader reloads after a commit and sees the new counts.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any, Iterator, Sequence

import numpy as np

from ...config import RankingCfg
from ...errors import IndexIncompatibleError, IndexNotFoundError, QueryError
from ..filters import Condition, as_number, text_bound_error, unknown_fields_error
from ..store import PhraseMatches
from .expr import both, int_list, str_list, where_expr
from .keywords import MAX_TOPK, Keywords
from .location import MilvusLocation, as_location, connect, is_lite
from .meta import MetaStore, ensure_loaded
from .scan import scan
from .schema import SCALARS, VectorIndex, store_row, vector_field

log = logging.getLogger(__name__)

BATCH = 1000  # ids per query (an ``fid in [...]`` expression)
ALLOWED_IN = 10_000  # ``allowed`` fids written into a search expression; more: over-fetch and intersect
FORMAT = "mmsearch-milvus"


class MilvusReader:
    """One Milvus index (``location``: ``milvus-lite:FILE.db`` or ``milvus://HOST:PORT/COLLECTION``).

    ``dialect``: how filters test equality (expr.py): ``lite`` for Milvus Lite, ``server`` otherwise.
    ``keywords``: ``local`` (Milvus Lite) or ``milvus`` (servers): how keyword search runs (keywords.py).
    """

    def __init__(self, location: "str | MilvusLocation", verify: bool = True, ranking: RankingCfg | None = None,
                 dialect: str | None = None, keywords: str | None = None):
        self.loc = as_location(location)
        self.location = self.loc.text
        self.ranking = ranking or RankingCfg()
        self.client = connect(self.loc)
        self.lite = is_lite(self.client, self.loc)
        self.collection = self.loc.collection
        self.meta = MetaStore(self.client, self.loc.meta_collection, self.lite)
        self.dialect = dialect or ("lite" if self.lite else "server")
        if not self.client.has_collection(self.collection) or not self.meta.exists():
            raise IndexNotFoundError(f"no index at {self.loc}: build one with `mmsearch index CATALOG --out {self.loc}`")
        ensure_loaded(self.client, self.meta.name)
        manifest = self.meta.read()
        if manifest is None:
            raise IndexNotFoundError(f"{self.loc} holds no built index yet (its first build has not finished): "
                                     f"run `mmsearch index CATALOG --out {self.loc}`")
        if manifest.get("format") != FORMAT:
            raise IndexIncompatibleError(f"{self.loc} is not an mmsearch index; rebuild it with `mmsearch index`")
        self.manifest: dict[str, Any] = manifest
        self.generation = int(manifest["generation"])
        self.indexes = {name: VectorIndex.from_dict(ch["milvus_index"]) for name, ch in manifest["channels"].items()}
        if verify:
            self._verify()
        ensure_loaded(self.client, self.collection)
        self._lock = threading.Lock()
        self._selects: OrderedDict[tuple, np.ndarray] = OrderedDict()  # (conditions, limit) -> fids
        self._stats: dict[str, dict[str, Any]] | None = None
        self.keywords = Keywords(self.client, self.collection, keywords or ("local" if self.lite else "milvus"),
                                 self.count(), lambda: self._words(self._scan("", ["fid", "words"])),
                                 lambda fids: self._words(self._query_ids(fids, ["fid", "words"])))

    def _verify(self) -> None:
        """The collection's vector fields have the manifest's dimensions."""
        fields = {f["name"]: f for f in self.client.describe_collection(self.collection)["fields"]}
        for name, ch in self.manifest["channels"].items():
            dim = int((fields.get(vector_field(name)) or {}).get("params", {}).get("dim", -1))
            if dim != int(ch["dim"]):
                raise IndexIncompatibleError(f"{self.loc}: the {name} vectors in Milvus are {dim}-d but the manifest "
                                             f"says {ch['dim']}-d; rebuild the index (mmsearch index --rebuild)")

    @property
    def version(self) -> str:
        return str(self.generation)

    def latest_version(self) -> str:
        return str(self.meta.generation())

    def changed(self) -> bool:
        try:
            return self.meta.generation() != self.generation
        except Exception:  # the collection was dropped (a rebuild) or the server is gone: let a reload say why
            log.debug("polling %s failed", self.loc, exc_info=True)
            return True

    def close(self) -> None:
        """Releases the local keyword index; the client stays (shared by the process: location.connect)."""
        self.keywords.close()

    @staticmethod
    def _words(rows: Iterator[dict]) -> Iterator[tuple[int, str]]:
        return ((int(r["fid"]), r["words"]) for r in rows)

    # --------------------------------------------------------------------------------- vectors
    def channel_names(self) -> list[str]:
        return [n for n, ch in self.manifest["channels"].items() if ch.get("count", 0) > 0]

    def channel_count(self, channel: str) -> int:
        return int(self.manifest["channels"].get(channel, {}).get("count", 0))

    def _channel_expr(self, channel: str) -> str:
        return "has_text == true" if channel == "text" else ""

    def search(self, channel: str, queries: np.ndarray, n: int, where: Sequence[Condition] | None = None,
               allowed: np.ndarray | None = None) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(len(queries), -1)
        total = self.channel_count(channel)
        if total == 0 or n < 1 or len(q) == 0:
            return np.full((len(q), 0), -1, np.int64)
        if n > MAX_TOPK:
            raise QueryError(f"a Milvus index returns at most {MAX_TOPK} candidates per search; {n} were asked for "
                             f"(ask for fewer results)")
        expr = both(self._channel_expr(channel), where_expr(where or [], self.dialect))
        post = None
        if allowed is not None and not where:
            if len(allowed) == 0:
                return np.full((len(q), 0), -1, np.int64)
            if len(allowed) <= ALLOWED_IN:
                expr = both(expr, int_list("fid", allowed))
            else:  # too many ids for one expression: fetch more and keep the allowed ones
                post = np.asarray(allowed, np.int64)
        n = min(n, total)
        fetch = n if post is None else min(MAX_TOPK, total, int(n * total / max(1, len(post)) * 1.5) + 16)
        res = self.client.search(self.collection, data=list(q), anns_field=vector_field(channel), limit=fetch, filter=expr,
                                 output_fields=["fid"], search_params=self.indexes[channel].search_params(fetch))
        out = np.full((len(q), n), -1, np.int64)
        for b, hits in enumerate(res):
            ids = np.array([int(h["fid"]) for h in hits], np.int64)
            if post is not None:
                ids = ids[np.isin(ids, post)]
            ids = ids[:n]
            out[b, :len(ids)] = ids
        return out

    def _scan(self, expr: str, fields: list[str]) -> Iterator[dict]:
        """Every committed row matching ``expr`` (fids below the manifest's ``next_fid``)."""
        return scan(self.client, self.collection, expr, fields, self.lite, int(self.manifest["next_fid"]))

    def _query_ids(self, fids: Sequence[int] | np.ndarray, fields: list[str], expr: str = "") -> Iterator[dict]:
        uniq = sorted({int(f) for f in fids})
        for s in range(0, len(uniq), BATCH):
            yield from self.client.query(self.collection, filter=both(expr, int_list("fid", uniq[s:s + BATCH])),
                                         output_fields=fields)

    def vectors(self, channel: str, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fids = np.asarray(fids, np.int64)
        dim = int(self.manifest["channels"].get(channel, {}).get("dim", self.manifest["dim"]))
        if channel not in self.indexes or not len(fids):
            return np.zeros(len(fids), bool), np.zeros((0, dim), np.float32)
        vf = vector_field(channel)
        found = {int(r["fid"]): r[vf] for r in self._query_ids(fids, ["fid", vf], self._channel_expr(channel))}
        present = np.array([int(f) in found for f in fids], bool)
        vecs = [found[int(f)] for f in fids[present]]
        return present, (np.asarray(vecs, np.float32).reshape(-1, dim) if vecs else np.zeros((0, dim), np.float32))

    def all_vectors(self, channel: str) -> tuple[np.ndarray, np.ndarray]:
        dim = int(self.manifest["channels"].get(channel, {}).get("dim", self.manifest["dim"]))
        if channel not in self.indexes:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        vf = vector_field(channel)
        rows = sorted(((int(r["fid"]), r[vf]) for r in self._scan(self._channel_expr(channel), ["fid", vf])),
                      key=lambda t: t[0])
        ids = np.array([f for f, _ in rows], np.int64)
        vecs = np.asarray([v for _, v in rows], np.float32).reshape(-1, dim) if rows else np.zeros((0, dim), np.float32)
        return ids, vecs

    # ----------------------------------------------------------------------------------- items
    def count(self) -> int:
        return int(self.manifest["count"])

    def rows(self, fids: Sequence[int] | np.ndarray) -> dict[int, dict[str, Any]]:
        return {int(r["fid"]): {"id": r["id"], "path": r["path"], "title": r["title"],
                                "metadata": json.loads(r["metadata"] or "{}")}
                for r in self._query_ids(fids, ["fid", "id", "path", "title", "metadata"])}

    def all_rows(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: store_row(r) for r in self._scan("", list(SCALARS))}

    def fids_of(self, ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        ids = list(dict.fromkeys(ids))
        for s in range(0, len(ids), BATCH):
            for r in self.client.query(self.collection, filter=str_list("id", ids[s:s + BATCH]),
                                       output_fields=["fid", "id"]):
                out[r["id"]] = int(r["fid"])
        return out

    def _field_stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._stats is None:
                self._stats = self.meta.stats()
            return self._stats

    def fields(self) -> list[str]:
        return sorted(self._field_stats())

    def check_fields(self, conditions: Sequence[Condition]) -> None:
        """The folder store's checks (ItemStore.check_fields), with the same messages, from the statistics."""
        stats = self._field_stats()
        unknown = sorted(f for f in {c.field for c in conditions} if f not in stats)
        if unknown:
            raise unknown_fields_error(unknown, self.fields())
        for c in conditions:  # a text bound on a field of numbers would silently match nothing
            if c.op in ("<", "<=", ">", ">=") and as_number(c.values[0]) is None and stats[c.field]["t"] == 0:
                raise text_bound_error(c, stats[c.field].get("x"))

    def select(self, conditions: Sequence[Condition], limit: int | None = None) -> np.ndarray:
        """Sorted fids matching every condition; with ``limit``, at most ``limit + 1`` are read. Results are
        remembered per (conditions, limit) for this generation."""
        key = (tuple(conditions), limit)
        with self._lock:
            hit = self._selects.get(key)
            if hit is not None:
                self._selects.move_to_end(key)
                return hit
        expr = where_expr(conditions, self.dialect)
        if limit is not None and limit + 1 <= MAX_TOPK:
            rows = self.client.query(self.collection, filter=expr or "fid >= 0", output_fields=["fid"],
                                     limit=int(limit) + 1)
            fids = np.array(sorted(int(r["fid"]) for r in rows), np.int64)
        else:
            got: list[int] = []
            for r in scan(self.client, self.collection, expr, ["fid"], self.lite, batch=10_000):
                got.append(int(r["fid"]))
                if limit is not None and len(got) > limit:
                    break
            fids = np.array(sorted(got), np.int64)
        with self._lock:
            self._selects[key] = fids
            while len(self._selects) > 64:
                self._selects.popitem(last=False)
        return fids

    # -------------------------------------------------------------------------------- keywords
    def keyword_search(self, text: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.keywords.search(text, n)

    def keyword_matches(self, text: str, fids: np.ndarray) -> PhraseMatches:
        return self.keywords.matches(text, fids)

