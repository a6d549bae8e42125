"""What an index holds, for tools: list items, export them with their embeddings, find copies (exact and near).

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
    present, vecs = engine.backend.vectors(channel, fids)
    out = np.zeros((len(fids), vecs.shape[1]), np.float32)
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


def group_duplicates(hashes: list[str | None], x: np.ndarray, threshold: float,  # noqa: C901  (exact copies, then kNN links, union-find: one pass each)
                     neighbours: int = 32) -> list[list[tuple[int, str]]]:
    """Connected groups of rows that are copies: the same content hash (``exact``) or unit vectors with
    cosine similarity >= ``threshold`` (``near``). Pure; rows are positions into ``hashes`` / ``x``.

    Linear in group size: rows with one hash are collapsed to one representative before the vector
    search, and each representative links to at most ``neighbours`` nearest others at or above the
    threshold (a k-NN graph, not every pair: 10k near-identical images make 10k x ``neighbours`` links,
    not 10^8). Components of that graph are the groups. Returns, per group of 2+ rows, ``(row, kind)``
    pairs in row order, ``kind`` "exact" when the row has the content hash of the group's first row,
    else "near" (the first row itself is "exact").
    """
    n = len(hashes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(a: int, b: int) -> None:
        a, b = root(a), root(b)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_of: dict[str, int] = {}
    reps = []
    for i, h in enumerate(hashes):
        if h is not None and h in first_of:
            link(first_of[h], i)
        else:
            if h is not None:
                first_of[h] = i
            reps.append(i)
    if len(reps) > 1:
        rx = np.ascontiguousarray(x[reps], dtype=np.float32)
        index = faiss.IndexFlatIP(rx.shape[1])
        index.add(rx)
        k = min(len(reps), neighbours + 1)  # + 1: a row finds itself
        for start in range(0, len(reps), 4096):  # bounded memory: (4096, k) results at a time
            sims, nbrs = index.search(rx[start:start + 4096], k)
            for q, (srow, nrow) in enumerate(zip(sims, nbrs)):
                for s, j in zip(srow, nrow):
                    if j >= 0 and s >= threshold - 1e-6:
                        link(reps[start + q], reps[int(j)])
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) > 1:
            h0 = hashes[members[0]]
            out.append([(i, "exact" if i == members[0] or (h0 is not None and hashes[i] == h0) else "near")
                        for i in members])
    return out


KINDS = ("all", "exact", "near")


def find_duplicates(engine: "SearchEngine", threshold: float = 0.92, where: WhereSpec = None,
                    kind: str = "all") -> list[dict[str, Any]]:
    """Groups of copies among the indexed images: exact copies (the same content hash) and near-duplicates
    (shared-space image vectors with cosine similarity >= ``threshold``), linked into groups (see
    :func:`group_duplicates`). Each group lists ``ids`` and ``paths``, its first item (lowest id) first,
    ``scores`` (each member's similarity to that first item, 1.0 for itself), ``kinds`` (per member:
    "exact" for a byte-identical copy of the first item, else "near") and ``kind``: "exact" when every
    member is an exact copy of the first, else "near". ``kind="exact"`` / ``"near"`` keeps only the groups
    of that kind. Groups come largest first, then by first id.
    """
    if not -1.0 <= threshold <= 1.0:
        raise MMSearchError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    if kind not in KINDS:
        raise MMSearchError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rows = sorted(engine.backend.all_rows().values(), key=lambda r: r["id"])  # a group's first: its lowest id
    if where is not None:
        keep = set(engine.select(where).tolist())
        rows = [r for r in rows if r["fid"] in keep]
    fids = np.array([r["fid"] for r in rows], np.int64)
    present, x = _vectors(engine, "image", fids)
    rows = [r for r, p in zip(rows, present) if p]
    x = np.ascontiguousarray(x[present])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # stored as float16: re-normalise
    if len(rows) < 2:
        return []
    out = []
    for members in group_duplicates([r["image_sha256"] for r in rows], x, threshold):
        first = x[members[0][0]]
        kinds = [k for _, k in members]
        group = {"ids": [rows[i]["id"] for i, _ in members], "paths": [rows[i]["path"] for i, _ in members],
                 "scores": [1.0 if k == "exact" else round(float(np.clip(x[i] @ first, -1.0, 1.0)), 6)
                            for i, k in members],
                 "kinds": kinds, "kind": "exact" if all(k == "exact" for k in kinds) else "near"}
        if kind in ("all", group["kind"]):
            out.append(group)
    out.sort(key=lambda g: (-len(g["ids"]), g["ids"][0]))
    return out
