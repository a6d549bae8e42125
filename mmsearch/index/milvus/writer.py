"""The Milvus backend's write side: create an index's collections, apply an update, drop it (--rebuild).

An update (:meth:`MilvusWriter.apply`) takes what index.plan.resolve produced (writer.Change rows with
their new vectors, the fids to remove) and writes, in this order:

1. the ``dirty`` mark (meta.py): statistics may be off until the commit;
2. removals, then the changed and new items as whole rows (upserts of 1000): a metadata-only change has no
   new vectors, so its stored ones are read back and written again with it. (Milvus' partial upsert would
   spare that read, but it merges dynamic fields, and stale range columns of a removed field would
   then still match filters.) Every row is written whole: a reader never sees half an item;
3. the field statistics (added up, or recounted from every item after an interrupted update);
4. the manifest with generation + 1 (one row: the commit), then the ``dirty`` mark goes.

A run killed in between leaves every item either old or new; the manifest, counts and generation are the
previous ones until the next run, which plans from the rows' stored content hashes (items already
written count as unchanged), recounts the statistics and commits.

The steps are methods of their own for a build whose processes write rows side by side (a torchrun job,
dist/milvus.py): one process calls ``begin`` (1), every process ``write_rows`` for its items (2), and the
process that began calls ``remove`` and ``commit`` (2-4) with the sum of what every writer reported
(:class:`Written`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..._version import __version__
from ...errors import IndexIncompatibleError, MMSearchError
from ..options import IndexCfg
from ..writer import Change
from .expr import str_list
from .filterdata import filter_data
from .location import MilvusLocation, as_location, connect, is_lite
from .meta import MetaStore, create_indexes, ensure_loaded
from .reader import BATCH, FORMAT
from .scan import scan
from .schema import (
    SCALARS,
    VectorIndex,
    choose_index,
    collection_schema,
    entity,
    index_params,
    row_error,
    store_row,
    vector_field,
)

log = logging.getLogger(__name__)

WRITE_BATCH = 1000


@dataclass
class Pending:
    """An update :meth:`MilvusWriter.begin` started (the dirty mark is set): what its commit needs."""

    generation: int  # the one the commit writes
    recount: bool  # an earlier update stopped half-way: the commit recounts the statistics and counts
    indexes: dict[str, VectorIndex]
    dims: dict[str, int]


@dataclass
class Written:
    """What rows an update wrote or removed, as its commit adds them up (summed over every writer)."""

    added: int = 0  # items added (negative: removed)
    texts: int = 0  # change in the number of items with a text
    top_fid: int = 0  # one past the largest fid written
    delta: dict[str, dict[str, Any]] = field(default_factory=dict)  # field statistics: key -> {n, t, x}

    def merge(self, other: Written) -> None:
        self.added += other.added
        self.texts += other.texts
        self.top_fid = max(self.top_fid, other.top_fid)
        for key, d in other.delta.items():
            mine = self.delta.setdefault(key, {"n": 0, "t": 0, "x": None})
            mine["n"] += d["n"]
            mine["t"] += d["t"]
            if mine["x"] is None:
                mine["x"] = d["x"]


class MilvusWriter:
    """Writes one Milvus index. ``dims``: the model's channel dimensions ({"image": D, "text": D[, "visual":
    Dv]}, writer.channel_dims), needed to create the collection; ``cfg``: the vector index to create
    (None: the one the index has, else IndexCfg()). One writer at a time per index (as for a folder index,
    the caller serialises updates; Milvus has no lock to take)."""

    def __init__(self, location: "str | MilvusLocation", dims: dict[str, int] | None = None,
                 cfg: IndexCfg | None = None):
        self.loc = as_location(location)
        self.client = connect(self.loc, create=True)
        self.lite = is_lite(self.client, self.loc)
        self.collection = self.loc.collection
        self.meta = MetaStore(self.client, self.loc.meta_collection, self.lite)
        self.dims = dict(dims) if dims else None
        self.cfg = cfg
        for name in (self.collection, self.meta.name):
            if self.client.has_collection(name):
                ensure_loaded(self.client, name)
        self.manifest: dict[str, Any] | None = self.meta.read() if self.meta.exists() else None
        if self.manifest is not None and self.dims is not None:
            self.check_dims(self.dims)

    # ------------------------------------------------------------------------------------- reading
    @property
    def exists(self) -> bool:
        """The index has committed at least once."""
        return self.manifest is not None

    def check_dims(self, dims: dict[str, int]) -> None:
        """IndexIncompatibleError when the stored channels have other dimensions than the model's."""
        have = {n: int(ch["dim"]) for n, ch in (self.manifest or {}).get("channels", {}).items()}
        want = {n: int(d) for n, d in dims.items()}
        if have and have != want:
            raise IndexIncompatibleError(f"{self.loc} holds vectors of {have}, the model makes {want}: rebuild the "
                                         f"index (mmsearch index --rebuild)")

    def previous(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """id -> stored row (fid, id, path, title, text, metadata, image_sha256, text_sha256): what an update
        is planned against (index.plan.plan_update's ``previous``). ``ids``: only the rows of these items."""
        if not self.client.has_collection(self.collection):
            return {}
        if ids is not None:
            rows = (r for s in range(0, len(ids), 500) for r in self.client.query(
                self.collection, filter=str_list("id", ids[s:s + 500]), output_fields=list(SCALARS)))
            return {r["id"]: store_row(r) for r in rows}
        upper = int(self.manifest["next_fid"]) if self.manifest and self.meta.dirty() is None else None
        return {r["id"]: store_row(r) for r in scan(self.client, self.collection, "", list(SCALARS), self.lite, upper)}

    def next_fid(self, previous: dict[str, dict[str, Any]] | None = None) -> int:
        """The first fid never used: the manifest's ``next_fid``, past every stored row's."""
        top = max((r["fid"] + 1 for r in (previous or {}).values()), default=0)
        return max(top, int((self.manifest or {}).get("next_fid", 0)))

    # ------------------------------------------------------------------------------------- writing
    def _create(self, n: int) -> dict[str, VectorIndex]:
        if self.dims is None:
            raise MMSearchError(f"creating {self.loc} needs the model's channel dimensions (MilvusWriter(dims=...))")
        cfg = self.cfg or IndexCfg()
        choice = {name: choose_index(cfg, n, dim, self.lite) for name, dim in self.dims.items()}
        if not self.client.has_collection(self.collection):
            log.info("creating Milvus collection %s (%s)", self.collection,
                     ", ".join(f"{k}: {v.index_type}" for k, v in choice.items()))
            self.client.create_collection(self.collection, schema=collection_schema(self.client, self.dims),
                                          consistency_level="Strong")
            create_indexes(self.client, self.collection, index_params(self.client, self.dims, choice, self.lite))
        if not self.meta.exists():
            self.meta.create()
        return choice

    def _indexes(self, n: int) -> dict[str, VectorIndex]:
        """The vector index of each channel: the committed ones, or the new collection's."""
        if self.manifest is None or not self.client.has_collection(self.collection):
            return self._create(n)
        stored = {name: VectorIndex.from_dict(ch["milvus_index"]) for name, ch in self.manifest["channels"].items()}
        if self.cfg is not None and self.cfg.index_type != self.manifest.get("index_cfg", {}).get("index_type"):
            want = {name: choose_index(self.cfg, n, int(ch["dim"]), self.lite).kind
                    for name, ch in self.manifest["channels"].items()}
            if any(want[k] != v.kind for k, v in stored.items()):
                raise MMSearchError(f"{self.loc} has {next(iter(stored.values())).kind} indexes; changing the index "
                                    f"type of a Milvus index needs a rebuild (mmsearch index --rebuild)")
        return stored

    def apply(self, changes: Sequence[Change], removed: Sequence[int], manifest: dict[str, Any],
              next_fid: int | None = None) -> dict[str, Any]:
        """Write ``changes`` (new or changed items) and remove the items ``removed`` (fids), then commit
        ``manifest`` (model, catalog, skipped, ... as the folder writer's) with this index's channels, counts,
        ``next_fid`` and generation + 1. Returns the committed manifest.

        Every row is checked before anything is written (schema.check_row: a value too long for Milvus
        fails the update with the item named; callers may skip such items first). The steps, for writers
        in several processes (dist/milvus.py): :meth:`begin` once, :meth:`write_rows` in any process,
        :meth:`remove` and :meth:`commit` once, in the process that began.
        """
        for c in changes:
            row_error(c.row)
        pending = self.begin(len(changes))
        written = self.remove(set(removed) - {int(c.row["fid"]) for c in changes})
        written.merge(self.write_rows(changes))
        return self.commit(pending, written, manifest, next_fid)

    def begin(self, n: int) -> Pending:
        """Start an update of about ``n`` new items: create the collections of a new index, set the dirty mark.
        Rows may be written (by any process) from now until :meth:`commit`."""
        old_count = int(self.manifest["count"]) if self.manifest else 0
        indexes = self._indexes(old_count + n)
        generation = (int(self.manifest["generation"]) if self.manifest else 0) + 1
        recount = self.meta.dirty() is not None  # an earlier update stopped half-way
        self.meta.set_dirty(generation)
        return Pending(generation=generation, recount=recount, indexes=indexes, dims=self.channel_dims())

    def channel_dims(self) -> dict[str, int]:
        """The stored channels' dimensions (those of the model for a new index)."""
        if self.manifest:
            return {name: int(ch["dim"]) for name, ch in self.manifest["channels"].items()}
        return dict(self.dims or {})

    def abandon(self, pending: Pending) -> None:
        """End a begun update that wrote nothing: the dirty mark goes (unless an earlier update left it)."""
        if not pending.recount:
            self.meta.clear_dirty()

    def remove(self, fids: Iterable[int]) -> Written:
        """Delete the items ``fids`` (of a begun update) -> what the commit subtracts."""
        gone = sorted({int(f) for f in fids})
        old = {int(r["fid"]): r for r in self._rows(gone, ["fid", "title", "metadata", "has_text"])}
        out = Written()
        _count_facts(out.delta, old.values(), -1)
        for s in range(0, len(gone), BATCH):
            self.client.delete(self.collection, ids=gone[s:s + BATCH])
        out.added = -len(old)
        out.texts = -sum(1 for r in old.values() if r["has_text"])
        return out

    def write_rows(self, changes: Sequence[Change]) -> Written:
        """Upsert ``changes`` as whole rows (of a begun update; any process may write its share) -> what the
        commit adds up. Every row is checked first: a value Milvus cannot hold writes nothing."""
        for c in changes:
            row_error(c.row)
        dims = self.channel_dims()
        out = Written(top_fid=max((int(c.row["fid"]) + 1 for c in changes), default=0))
        old = {int(r["fid"]): r for r in self._rows([c.row["fid"] for c in changes],
                                                    ["fid", "title", "metadata", "has_text"])}
        for s in range(0, len(changes), WRITE_BATCH):
            batch = list(changes[s:s + WRITE_BATCH])
            rows, a, t = self._entities(batch, old, dims, out.delta)
            self.client.upsert(self.collection, rows)
            out.added, out.texts = out.added + a, out.texts + t
        return out

    def commit(self, pending: Pending, written: Written, manifest: dict[str, Any],
               next_fid: int | None = None) -> dict[str, Any]:
        """Commit a begun update: the field statistics (added up, or recounted after an interrupted update),
        then ``manifest`` with the counts, channels and generation + 1; the dirty mark goes."""
        generation = pending.generation
        self._commit_stats(written.delta, generation, pending.recount)
        if pending.recount:  # after an interrupted update the committed counts may be off: count what is there
            count = self._count("")
            text_count = self._count("has_text == true")
        else:
            count = (int(self.manifest["count"]) if self.manifest else 0) + written.added
            text_count = int((self.manifest or {}).get("channels", {}).get("text", {}).get("count", 0)) + written.texts
        if self.lite:
            self.client.flush(self.collection)  # Milvus Lite scans unflushed rows in Python; segments are indexed
        top = max(written.top_fid, int(next_fid or 0))
        committed = self._manifest(manifest, pending.dims, pending.indexes, count, text_count, top)
        self.meta.write(committed, generation)
        self.meta.clear_dirty()
        committed["generation"] = generation
        self.manifest = committed
        return committed

    def _rows(self, fids: Sequence[int], fields: list[str]) -> list[dict]:
        out: list[dict] = []
        if not self.client.has_collection(self.collection):
            return out
        uniq = sorted({int(f) for f in fids})
        for s in range(0, len(uniq), BATCH):
            out.extend(self.client.query(self.collection, ids=uniq[s:s + BATCH], output_fields=fields))
        return out

    def _entities(self, batch: list[Change], old: dict[int, dict], dims: dict[str, int],
                  delta: dict[str, dict[str, Any]]) -> tuple[list[dict], int, int]:
        """Whole rows for ``batch`` (stored vectors read back where the change has none) -> (rows, items
        added, change in the number of items with text)."""
        missing: set[str] = set()
        for c in batch:
            fid = int(c.row["fid"])
            lack = {n for n in dims if n not in c.vectors and not (n == "text" and c.drop_text)}
            if fid in old:
                missing |= lack
            elif lack - {"text"}:
                raise MMSearchError(f"item {c.row['id']!r} is new but has no {sorted(lack - {'text'})[0]} vector")
        stored = {int(r["fid"]): r for r in self._rows([c.row["fid"] for c in batch if int(c.row["fid"]) in old],
                                                        ["fid", *sorted(vector_field(n) for n in missing)])} if missing else {}
        rows, added, texts = [], 0, 0
        for c in batch:
            fid = int(c.row["fid"])
            prev = old.get(fid)
            vecs = {}
            for name, dim in dims.items():
                if name in c.vectors:
                    vecs[name] = c.vectors[name]
                elif name == "text" and (c.drop_text or prev is None or not prev["has_text"]):
                    vecs[name] = np.zeros(dim, np.float32)
                else:
                    vecs[name] = stored[fid][vector_field(name)]
            has_text = "text" in c.vectors or (prev is not None and bool(prev["has_text"]) and not c.drop_text)
            fdata = filter_data(c.row.get("title") or "", c.row.get("metadata") or {})
            row = entity(c.row, vecs, has_text, fdata)
            if prev is not None:
                before = _facts(prev)
                _add(delta, before, -1)
                # Milvus Lite's upsert keeps dynamic fields the new row lacks (a server replaces the row): a
                # field the item lost is written as null, so its range columns stop matching
                row.update({name: None for name in before.dynamic() if name not in row})
            rows.append(row)
            _add(delta, fdata, +1)
            added += prev is None
            texts += int(has_text) - int(bool(prev is not None and prev["has_text"]))
        return rows, added, texts

    def _commit_stats(self, delta: dict[str, dict[str, Any]], generation: int, recount: bool) -> None:
        if not recount:
            self.meta.add_stats(delta, generation)
            return
        total: dict[str, dict[str, Any]] = {}
        _count_facts(total, scan(self.client, self.collection, "", ["fid", "title", "metadata"], self.lite), +1)
        self.meta.replace_stats(total, generation)

    def _count(self, expr: str) -> int:
        rows = self.client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _manifest(self, manifest: dict[str, Any], dims: dict[str, int], indexes: dict[str, VectorIndex], count: int,
                  text_count: int, next_fid: int) -> dict[str, Any]:
        out = {k: v for k, v in manifest.items() if k not in ("generation", "_snapshot")}
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        top = max(next_fid, int((self.manifest or {}).get("next_fid", 0)))
        out.update({
            "format": FORMAT, "mmsearch_version": __version__, "metric": "inner_product",
            "created": (self.manifest or {}).get("created", manifest.get("created", now)), "updated": now,
            "backend": "milvus", "collection": self.collection, "count": int(count), "next_fid": top,
            "index_cfg": (self.cfg or IndexCfg(**(self.manifest or {}).get("index_cfg", {}))).to_dict(),
            "channels": {name: {"dim": int(dim), "count": int(text_count if name == "text" else count),
                                "milvus_index": indexes[name].to_dict()} for name, dim in dims.items()},
        })
        out.setdefault("dim", int(dims.get("image", 0)))
        return out

    def drop(self) -> None:
        """Remove the index (both collections): ``--rebuild`` starts from nothing."""
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
        self.meta.drop()
        self.manifest = None


def _add(delta: dict[str, dict[str, Any]], fdata: Any, sign: int) -> None:
    for key, f in fdata.facts.items():
        d = delta.setdefault(key, {"n": 0, "t": 0, "x": None})
        d["n"] += sign
        d["t"] += sign * int(f.text_only)
        if sign > 0 and d["x"] is None and f.example is not None:
            d["x"] = f.example


def _facts(r: dict[str, Any]) -> Any:
    """The filter data of a stored row (title and metadata JSON text)."""
    return filter_data(r.get("title") or "", json.loads(r.get("metadata") or "{}"))


def _count_facts(delta: dict[str, dict[str, Any]], rows: Any, sign: int) -> None:
    for r in rows:
        _add(delta, _facts(r), sign)

