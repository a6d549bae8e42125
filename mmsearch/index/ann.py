"""Reading and searching an approximate-nearest-neighbour index: open a FAISS file, set its tuned search
parameter, and search it, with or without a filter of allowed ids. What the query path needs.

Every index searches unit vectors by inner product and stores explicit int64 item ids. The choice of an
index and its tuning are done when it is built (index/annbuild.py) and recorded as an :class:`IndexSpec`
in the manifest; the reader applies that record.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import IndexIncompatibleError

# cli.py still imports IndexCfg and parse_memory from here (its owner moves that import to index/options.py)
from .quiet import quiet_stdout

MMAP_MIN_BYTES = 256 << 20  # IVF index files larger than this open memory-mapped


@dataclass
class IndexSpec:
    """What was built for a channel, as the manifest records it: the factory string, its kind and the tuned
    search parameter (made by ``annbuild.choose`` + ``annbuild.tune``, applied by :func:`read`)."""

    kind: str  # flat | hnsw | ivf | ivfpq | factory
    factory: str
    params: dict[str, int] = field(default_factory=dict)  # {"nprobe": 16} or {"efSearch": 64}
    recall_at_10: float | None = None  # measured on held-back queries; None for exact (flat)
    rerank: int = 0  # lossy codes (PQ): recall is measured after exact re-scoring of this many candidates
    trained_on: int = 0  # item count the trained part (IVF centroids, PQ codebooks) was fitted to
    # IVF only: file name (beside the .faiss file) of the inverted lists when they live on disk
    # (faiss OnDiskInvertedLists, see index/ondisk.py); None: the lists are inside the .faiss file
    ondisk: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexSpec":
        return cls(kind=d["kind"], factory=d["factory"], params=dict(d.get("params", {})),
                   recall_at_10=d.get("recall_at_10"), trained_on=int(d.get("trained_on", 0)),
                   rerank=int(d.get("rerank", 0)), ondisk=d.get("ondisk"))


def ivf_of(index: faiss.Index):
    """The IVF part of ``index`` (through wrappers and pre-transforms), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index: faiss.Index):
    """The HNSW part of ``index`` (through an id map), or None."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        idx = faiss.downcast_index(idx.index)
    return idx if isinstance(idx, faiss.IndexHNSW) else None


# ------------------------------------------------------------------------------------------- opening
def read_ondisk(path: str | Path, lists_name: str, writable: bool = False) -> faiss.Index:
    """Open ``path`` with its lists from ``lists_name`` in the same folder (wherever that folder is now)."""
    path = Path(path)
    if not (path.parent / lists_name).is_file():
        raise OSError(f"its inverted lists file {path.parent / lists_name} is missing")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | (0 if writable else faiss.IO_FLAG_READ_ONLY)
    with quiet_stdout():
        return faiss.read_index(str(path), flags)


def read(path: str, spec: IndexSpec | None, mmap: bool | None = None) -> faiss.Index:
    """Open an index file; IVF files above MMAP_MIN_BYTES (or ``mmap=True``) are memory-mapped, and
    on-disk inverted lists (``spec.ondisk``) always are (read-only unless ``mmap=False``)."""
    try:
        if spec is not None and spec.ondisk:  # lists in a file beside this one; mmap=False: writable
            index = read_ondisk(path, spec.ondisk, writable=mmap is False)
        else:
            size = os.path.getsize(path)
            want_mmap = mmap if mmap is not None else size >= MMAP_MIN_BYTES
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if want_mmap else 0
            index = faiss.read_index(path, flags)
    except (RuntimeError, OSError) as exc:
        raise IndexIncompatibleError(f"cannot read index file {path} ({str(exc).strip().splitlines()[-1]}); "
                                     f"rebuild the index with `mmsearch index`") from None
    if spec is not None:
        set_params(index, spec.params)
    return index


# ---------------------------------------------------------------------------------------- parameters
def set_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set the index's own search parameter (``nprobe`` / ``efSearch``) from a spec's ``params``."""
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
    if hnsw is not None and "efSearch" in params:
        hnsw.hnsw.efSearch = int(params["efSearch"])


def search_params(index: faiss.Index, spec_params: dict[str, int], selector=None, plain: bool = False):
    """FAISS SearchParameters carrying the tuned parameter and an optional IDSelector (or None).

    Without a selector it returns None (the index's own settings apply) unless ``plain`` asks for the
    parameters anyway.
    """
    if selector is None and not plain:
        return None
    if ivf_of(index) is not None and not isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(spec_params.get("nprobe", 1)))  # type: ignore[call-arg]
    if hnsw_of(index) is not None:
        return faiss.SearchParametersHNSW(sel=selector,  # type: ignore[attr-defined]
                                          efSearch=int(spec_params.get("efSearch", 16)))
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return None  # selectors do not pass through pre-transforms; caller over-fetches instead
    return faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]


def filter_boost(selectivity: float, graph: bool = False) -> int:
    """How much wider to search (nprobe / efSearch) when a filter keeps ``selectivity`` of the items.

    The k nearest *allowed* items sit about 1/selectivity deeper in the ranking than the k nearest overall,
    so the unfiltered tuning misses some. Smallest multiple measured to reach Recall@10 >= 0.95:
    IVF (50k x 384, nprobe 64): 4 at 2%, 2 at 10%, 2 at 30%; (4k x 32, nprobe 4): 8 at 5%. HNSW, whose
    walk must also pass through disallowed nodes (efSearch 16): 8 at 2%, 4 at 10%, 2 at 30% (50k x 384);
    16 at 5% (4k x 32). So IVF takes 1/sqrt(selectivity) and a graph 1/(2 selectivity), each rounded up to a
    power of two, at most 32.
    """
    if selectivity >= 1.0:
        return 1
    need = 0.5 / max(selectivity, 1e-9) if graph else 1.0 / math.sqrt(max(selectivity, 1e-9))
    return int(min(32, max(2, 2 ** math.ceil(math.log2(need)))))


def boosted_params(index: faiss.Index, params: dict[str, int], selectivity: float) -> dict[str, int]:
    """``params`` with nprobe (capped at the list count) and efSearch widened by :func:`filter_boost`."""
    out = dict(params)
    boost = filter_boost(selectivity, graph="efSearch" in out)
    if "nprobe" in out:
        ivf = ivf_of(index)
        widened = int(out["nprobe"]) * boost
        out["nprobe"] = min(widened, ivf.nlist) if ivf is not None else widened
    if "efSearch" in out:
        out["efSearch"] = int(out["efSearch"]) * boost
    return out


# -------------------------------------------------------------------------------------- filtered search
def id_selector(allowed: np.ndarray) -> faiss.IDSelector:
    """A FAISS IDSelector of the sorted int64 ids ``allowed``. Building it hashes every id (a few ms at
    300k ids), so callers that repeat a filter keep it (search/filtercache.py); FAISS only reads it."""
    return faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))


def filtered_search(index: faiss.Index, queries: np.ndarray, n: int, allowed: np.ndarray,
                    params: dict[str, int], strategy: str = "selector",
                    selector: faiss.IDSelector | None = None) -> np.ndarray:
    """(B, n) ids of the best items among ``allowed`` (sorted int64 ids); -1 where fewer were found.

    ``selector`` passes a FAISS IDSelector so only allowed ids are scored (``selector=``: one already
    built by :func:`id_selector` for these ids); ``overfetch`` asks for n / selectivity results and
    filters them, doubling until n are found or the index is exhausted. Approximate indexes may still
    find fewer than n: the caller falls back to an exact scan of ``allowed``.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = max(1, min(n, len(allowed)))
    total = max(1, index.ntotal)
    params = boosted_params(index, params, len(allowed) / total)  # selective filters search wider
    if strategy == "selector":
        sp = search_params(index, params, selector if selector is not None else id_selector(allowed))
        if sp is not None:
            return index.search(q, n, params=sp)[1]
    fetch = min(total, int(n * total / max(1, len(allowed)) * 1.5) + 16)
    plain = search_params(index, params, plain=True)
    while True:
        ids = index.search(q, fetch, params=plain)[1]
        ok = np.isin(ids, allowed) & (ids >= 0)
        if ok.sum(axis=1).min() >= n or fetch >= total or (ids < 0).any(axis=1).all():
            break
        fetch = min(total, fetch * 2)
    out = np.full((len(q), n), -1, np.int64)
    for b in range(len(q)):
        found = ids[b][ok[b]][:n]
        out[b, :len(found)] = found
    return out
