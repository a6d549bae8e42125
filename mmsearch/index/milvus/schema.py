"""The Milvus collection of an index: its fields, the vector index mmsearch creates, one item as a row.

One row per item (``fid``, the int64 id mmsearch assigns once, is the primary key)::

    fid INT64 (primary)   id, path VARCHAR(4096)   title, text, metadata VARCHAR(65535) (metadata: JSON text)
    image_sha256, text_sha256 VARCHAR(256) ("" = no text)   has_text BOOL
    eq_tokens ARRAY<INT64>[3800], eq_text VARCHAR, dynamic m<hash>_lo/_hi/_slo/_shi   (filterdata.py)
    words VARCHAR(65535) (analyzed: keyword search) -> words_bm25 SPARSE_FLOAT_VECTOR (Milvus' BM25 function)
    v_image FLOAT_VECTOR(D)   v_visual FLOAT_VECTOR(Dv) (models with a photo-only channel)   v_text FLOAT_VECTOR(D)

An item without text keeps a zero ``v_text`` vector and ``has_text`` false; text-channel searches filter on
``has_text``. Lengths are in UTF-8 bytes (Milvus' unit); a longer value is refused by :func:`check_row`
with the item and the field named (truncating would make every later update see a change). ``words`` is
the exception: it is derived, and cut to its first 65535 bytes (keyword search sees that much).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import MMSearchError
from ..annbuild import FLAT_MAX, nlist_for, pq_m_for
from ..options import IndexCfg
from ..store import keyword_text
from .filterdata import FilterData, filter_data
from .location import pymilvus

ID_MAX = 4096
TEXT_MAX = 65535
SHA_MAX = 256
MAX_TOKENS = 3800  # distinct (field, value) facts per item: ARRAY capacity, and eq_text fits 65535 bytes
SCALARS = ("fid", "id", "path", "title", "text", "metadata", "image_sha256", "text_sha256")
CHANNELS = ("image", "visual", "text")


def vector_field(channel: str) -> str:
    """The vector field of a channel (``v_image``, ``v_visual``, ``v_text``: ``text`` is the item's text)."""
    return f"v_{channel}"
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase", "asciifolding", {"type": "stemmer", "language": "english"}]}
LIMITS = {"id": ID_MAX, "path": ID_MAX, "title": TEXT_MAX, "text": TEXT_MAX, "image_sha256": SHA_MAX,
          "text_sha256": SHA_MAX}


@dataclass(frozen=True)
class VectorIndex:
    """The index mmsearch creates on each vector field, and how it searches it."""

    kind: str  # flat | hnsw | ivf | ivfpq
    index_type: str  # Milvus' name
    params: dict[str, int]

    def search_params(self, n: int) -> dict[str, Any]:
        """Per-search parameters for ``n`` results: HNSW ``ef`` >= n (Milvus requires it), IVF ``nprobe``
        an eighth of the lists (at least 16); candidates are re-scored exactly above the backend."""
        if self.kind == "hnsw":
            return {"metric_type": "IP", "params": {"ef": max(128, int(n))}}
        if self.kind in ("ivf", "ivfpq"):
            nlist = self.params["nlist"]
            return {"metric_type": "IP", "params": {"nprobe": min(nlist, max(16, nlist // 8))}}
        return {"metric_type": "IP", "params": {}}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "index_type": self.index_type, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VectorIndex":
        return cls(d["kind"], d["index_type"], dict(d.get("params") or {}))


def choose_index(cfg: IndexCfg, n: int, dim: int, lite: bool) -> VectorIndex:
    """IndexCfg -> the Milvus vector index for ``n`` items: ``auto`` is FLAT (exact) up to ann.FLAT_MAX items,
    then HNSW; ``flat``, ``hnsw`` (M = hnsw_m), ``ivf`` (IVF_FLAT) and ``ivfpq`` (IVF_PQ, servers only) as
    named. IVF lists are sized for a Milvus segment (at most ~500k rows each: Milvus trains per segment)."""
    kind = cfg.index_type.strip().lower()
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX else "hnsw"
    per_segment = max(1, min(int(n), 500_000))
    if kind == "flat":
        return VectorIndex("flat", "FLAT", {})
    if kind == "hnsw":
        return VectorIndex("hnsw", "HNSW", {"M": int(cfg.hnsw_m), "efConstruction": 200})
    if kind == "ivf":
        return VectorIndex("ivf", "IVF_FLAT", {"nlist": nlist_for(per_segment)})
    if kind == "ivfpq":
        if lite:
            raise MMSearchError("index type ivfpq: Milvus Lite has no product-quantization index; use flat, hnsw, "
                                "ivf or auto (or a Milvus server)")
        return VectorIndex("ivfpq", "IVF_PQ", {"nlist": nlist_for(per_segment), "m": pq_m_for(dim, per_segment, None),
                                               "nbits": 8})
    raise MMSearchError(f"index type {cfg.index_type!r} has no Milvus equivalent (FAISS factory strings are for "
                        f"folder indexes): use auto, flat, hnsw, ivf or ivfpq")


def collection_schema(client: Any, dims: dict[str, int]) -> Any:
    """The item collection's schema for the channel dimensions ``dims`` ({"image": D, "text": D, ...})."""
    pm = pymilvus()
    dt = pm.DataType
    s = client.create_schema(auto_id=False, enable_dynamic_field=True,
                             description="mmsearch index (mmsearch/index/milvus/schema.py)")
    s.add_field("fid", dt.INT64, is_primary=True)
    for name in ("id", "path"):
        s.add_field(name, dt.VARCHAR, max_length=ID_MAX)
    for name in ("title", "text"):
        s.add_field(name, dt.VARCHAR, max_length=TEXT_MAX)
    for name in ("image_sha256", "text_sha256"):
        s.add_field(name, dt.VARCHAR, max_length=SHA_MAX)
    # JSON text, not Milvus' JSON type: that refuses integers beyond 64 bits, and filters never read it (they
    # read the columns filterdata.py derives); the text round-trips exactly, so updates compare it as stored
    s.add_field("metadata", dt.VARCHAR, max_length=TEXT_MAX)
    s.add_field("eq_tokens", dt.ARRAY, element_type=dt.INT64, max_capacity=MAX_TOKENS)
    s.add_field("eq_text", dt.VARCHAR, max_length=TEXT_MAX)
    s.add_field("has_text", dt.BOOL)
    s.add_field("words", dt.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True, enable_match=True,
                analyzer_params=ANALYZER)
    s.add_field("words_bm25", dt.SPARSE_FLOAT_VECTOR)
    s.add_function(pm.Function(name="words_bm25", function_type=pm.FunctionType.BM25, input_field_names=["words"],
                               output_field_names=["words_bm25"]))
    for name in CHANNELS:
        if name in dims:
            s.add_field(vector_field(name), dt.FLOAT_VECTOR, dim=int(dims[name]))
    return s


def index_params(client: Any, dims: dict[str, int], choice: dict[str, VectorIndex], lite: bool) -> Any:
    """Vector indexes (inner product: unit vectors) per channel, BM25's sparse index, and on a server
    INVERTED indexes for the equality tokens and ids (Milvus Lite scans those columns vectorised)."""
    ip = client.prepare_index_params()
    for name in CHANNELS:
        if name in dims:
            vi = choice[name]
            # Milvus Lite reads build parameters only nested under "params" (pymilvus sends them flat, which
            # Lite ignores without a word, building with its defaults); a server takes them flat
            params = {"params": dict(vi.params)} if lite else dict(vi.params)
            ip.add_index(vector_field(name), index_type=vi.index_type, metric_type="IP", params=params)
    ip.add_index("words_bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    if not lite:
        ip.add_index("eq_tokens", index_type="INVERTED")
        ip.add_index("id", index_type="INVERTED")
    return ip


# ----------------------------------------------------------------------------------------------- rows
def metadata_text(metadata: dict[str, Any]) -> str:
    """The stored form of an item's metadata (as ItemStore writes it)."""
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True)


def check_row(row: dict[str, Any]) -> str | None:
    """Why Milvus cannot hold this item row (a value too long, not UTF-8, too many metadata values), or None.
    Callers may skip such items with the reason, as they skip unreadable images."""
    for name, limit in LIMITS.items():
        value = row.get(name) or ""
        if not isinstance(value, str):
            return f"{name} is not text"
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"its {name} is not valid UTF-8 text"
        if size > limit:
            return f"its {name} is {size} bytes; a Milvus index holds at most {limit}"
    try:
        meta = metadata_text(row.get("metadata") or {}).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        return f"its metadata cannot be stored as JSON text ({exc})"
    if len(meta) > TEXT_MAX:
        return f"its metadata is {len(meta)} bytes as JSON; a Milvus index holds at most {TEXT_MAX}"
    n = len(filter_data(row.get("title") or "", row.get("metadata") or {}).tokens)
    if n > MAX_TOKENS:
        return f"it has {n} distinct metadata values; a Milvus index holds at most {MAX_TOKENS} per item"
    return None


def row_error(row: dict[str, Any]) -> None:
    why = check_row(row)
    if why is not None:
        raise MMSearchError(f"item {row.get('id')!r} cannot be stored in Milvus: {why}")


def _words(row: dict[str, Any]) -> str:
    data = keyword_text(row).encode("utf-8", "ignore")[:TEXT_MAX]
    return data.decode("utf-8", "ignore")


def entity(row: dict[str, Any], vectors: dict[str, np.ndarray], has_text: bool, fdata: FilterData | None = None) -> dict:
    """One Milvus row: the item's store row, its filter columns, its vectors (every channel of the schema;
    ``text`` zeros when the item has none)."""
    fdata = fdata or filter_data(row.get("title") or "", row.get("metadata") or {})
    out: dict[str, Any] = {
        "fid": int(row["fid"]), "id": row["id"], "path": row["path"], "title": row.get("title") or "",
        "text": row.get("text") or "", "metadata": metadata_text(row.get("metadata") or {}),
        "image_sha256": row.get("image_sha256") or "", "text_sha256": row.get("text_sha256") or "",
        "eq_tokens": fdata.tokens, "eq_text": fdata.token_text(), "has_text": bool(has_text), "words": _words(row),
    }
    out.update(fdata.dynamic())
    for name, vec in vectors.items():
        out[vector_field(name)] = np.asarray(vec, np.float32).reshape(-1)
    return out


def store_row(r: dict[str, Any]) -> dict[str, Any]:
    """A Milvus row -> the folder store's row shape (``text_sha256`` None when the item has no text)."""
    return {"fid": int(r["fid"]), "id": r["id"], "path": r["path"], "title": r["title"], "text": r["text"],
            "metadata": json.loads(r["metadata"] or "{}"), "image_sha256": r["image_sha256"] or None,
            "text_sha256": r["text_sha256"] or None}
