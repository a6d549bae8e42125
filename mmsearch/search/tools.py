"""What an index holds, for tools: list items, export them with their embeddings, find near-duplicates.

Export formats (``export_index``):
    ``PATH.parquet``   one row per item: id, path, title, text, metadata (a JSON string), embedding
                       (float32 list, the shared-space image vector), text_embedding (null without text).
                       Needs pyarrow (``pip install 'mmsearch[export]'``).
    any other ``PATH`` a folder with ``items.jsonl`` (one item per line, in row order, ``has_text``),
                       ``embeddings.npy`` (n, D) float32 and ``text_embeddings.npy`` (n, D) float32
                       (zero rows for items without text): ``np.load`` + ``pandas.read_json(lines=True)``.
``load_export`` reads either back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ..errors import MMSearchError, disk_errors
from ..index.filters import WhereSpec

if TYPE_CHECKING:
    from .engine import SearchEngine

ITEM_FIELDS = ("id", "path", "title", "text", "metadata")


def _rows(engine: "SearchEngine", where: WhereSpec) -> list[dict[str, Any]]:
    rows = engine.items
    if where is not None:
        keep = set(engine.select(where).tolist())
        rows = [r for r in rows if r["fid"] in keep]
    return rows


def list_items(engine: "SearchEngine", where: WhereSpec = None) -> list[dict[str, Any]]:
    """Every item (id, path, title, text, metadata) in index order, or those matching ``where``."""
    return [{k: r[k] for k in ITEM_FIELDS} for r in _rows(engine, where)]


def _vectors(engine: "SearchEngine", channel: str, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of ``fids`` present in ``channel``, (n, D) float32 with zero rows where absent)."""
    ch = engine.channels.get(channel)
    dim = int(engine.manifest["dim"])
    out = np.zeros((len(fids), ch.vectors.shape[1] if ch is not None else dim), np.float32)
    if ch is None:
        return np.zeros(len(fids), bool), out
    present, vecs = ch.rows(fids)
    out[present] = vecs
    return present, out


def export_index(engine: "SearchEngine", out: str | Path, where: WhereSpec = None) -> Path:
    """Write the items (or those matching ``where``) and their embeddings to ``out`` (see module doc)."""
    out = Path(out)
    with disk_errors(f"the export {out}", "remove what was written and run the export again"):
        return _write_export(engine, out, where)


def _write_export(engine: "SearchEngine", out: Path, where: WhereSpec) -> Path:
    rows = _rows(engine, where)
    fids = np.array([r["fid"] for r in rows], np.int64)
    _, emb = _vectors(engine, "image", fids)
    has_text, text_emb = _vectors(engine, "text", fids)
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise MMSearchError("Parquet export needs pyarrow: pip install 'mmsearch[export]' (or give a folder "
                                "for .npy + JSONL)") from None
        dim = emb.shape[1]
        table = pa.table({
            **{k: [r[k] for r in rows] for k in ("id", "path", "title", "text")},
            "metadata": [json.dumps(r["metadata"], ensure_ascii=False) for r in rows],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
            "text_embedding": pa.array([text_emb[i].tolist() if has_text[i] else None for i in range(len(rows))],
                                       pa.list_(pa.float32(), dim)),
        })
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        return out
    if out.exists() and not out.is_dir():
        raise MMSearchError(f"{out} exists and is not a folder (give a folder, or a .parquet file name)")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", emb)
    np.save(out / "text_embeddings.npy", text_emb)
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for r, t in zip(rows, has_text):
            f.write(json.dumps({**{k: r[k] for k in ITEM_FIELDS}, "has_text": bool(t)}, ensure_ascii=False) + "\n")
    return out


def load_export(path: str | Path) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """(items, image embeddings (n, D), text embeddings (n, D), zero rows without text) of an export."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path).to_pylist()
        items = [{**{k: r[k] for k in ("id", "path", "title", "text")}, "metadata": json.loads(r["metadata"])}
                 for r in t]
        dim = len(t[0]["embedding"]) if t else 0
        emb = np.array([r["embedding"] for r in t], np.float32).reshape(len(t), dim)
        txt = np.array([r["text_embedding"] or [0.0] * dim for r in t], np.float32).reshape(len(t), dim)
        return items, emb, txt
    items = [json.loads(line) for line in (path / "items.jsonl").read_text(encoding="utf-8").splitlines() if line]
    for it in items:
        it.pop("has_text", None)
    return items, np.load(path / "embeddings.npy"), np.load(path / "text_embeddings.npy")


def find_duplicates(engine: "SearchEngine", threshold: float = 0.92, where: WhereSpec = None,
                    chunk: int = 4096) -> list[dict[str, Any]]:
    """Groups of items whose images are near-duplicates: cosine similarity >= ``threshold`` (exact search
    over the stored shared-space image vectors; pairs link into groups). Each group lists ``ids`` and
    ``paths``, its first item (lowest id) first, and ``scores``: each member's similarity to that first
    item (1.0 for itself). Groups come largest first, then by first id.
    """
    if not -1.0 <= threshold <= 1.0:
        raise MMSearchError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    rows = _rows(engine, where)
    fids = np.array([r["fid"] for r in rows], np.int64)
    present, x = _vectors(engine, "image", fids)
    fids, x = fids[present], np.ascontiguousarray(x[present])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # stored as float16: re-normalise
    if len(fids) < 2:
        return []
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    parent = list(range(len(fids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(fids), chunk):  # bounded memory: (chunk, n) similarities at a time
        lims, _, nbrs = index.range_search(x[start:start + chunk], float(threshold) - 1e-6)
        for q in range(len(lims) - 1):
            for j in nbrs[lims[q]:lims[q + 1]]:
                a, b = root(start + q), root(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(fids)):
        groups.setdefault(root(i), []).append(i)
    by_fid = {r["fid"]: r for r in rows}
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: by_fid[int(fids[i])]["id"])
        first = x[members[0]]
        out.append({"ids": [by_fid[int(fids[i])]["id"] for i in members],
                    "paths": [by_fid[int(fids[i])]["path"] for i in members],
                    "scores": [round(float(np.clip(x[i] @ first, -1.0, 1.0)), 6) for i in members]})
    out.sort(key=lambda g: (-len(g["ids"]), g["ids"][0]))
    return out
