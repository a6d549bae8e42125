"""Approximate-nearest-neighbour indexes: choose a FAISS index type, build it, tune it, open it.

Every index searches unit vectors by inner product and stores explicit int64 item ids (IVF indexes
carry ids natively; flat, HNSW and raw factory strings without ids are wrapped in ``IndexIDMap2``).
The exact search parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is tuned on held-back queries
until Recall@10 against exact search reaches a target, and recorded with the measured recall.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import re
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from ..errors import IndexIncompatibleError, MMSearchError

log = logging.getLogger(__name__)

NAMED_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_MAX = 20_000  # below this an exact scan is fast enough (< ~2 ms/query at 384-d) and needs no tuning
TUNE_QUERIES = 200
TUNE_K = 10
RERANK = 256  # candidates SearchEngine re-scores exactly (RankingCfg.candidates): what lossy codes must find
MMAP_MIN_BYTES = 256 << 20  # IVF index files larger than this open memory-mapped


@dataclass
class IndexCfg:
    """How a channel's FAISS index is chosen and tuned.

    index_type: ``auto`` | ``flat`` | ``hnsw`` | ``ivf`` | ``ivfpq``, or a raw FAISS factory string
        (e.g. ``"OPQ32,IVF1024,PQ32"``) for experts.
    max_memory: RAM budget in bytes for one channel's index (None: no budget). ``auto`` picks the most
        accurate type that fits; the float16 embeddings kept for re-scoring are memory-mapped and not counted.
    target_recall: Recall@10 against exact search that tuning must reach on held-back queries.
    """

    index_type: str = "auto"
    max_memory: int | None = None
    target_recall: float = 0.95
    hnsw_m: int = 32
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IndexSpec:
    """A concrete choice: the factory string, its kind and the tuned search parameter."""

    kind: str  # flat | hnsw | ivf | ivfpq | factory
    factory: str
    params: dict[str, int] = field(default_factory=dict)  # {"nprobe": 16} or {"efSearch": 64}
    recall_at_10: float | None = None  # measured on held-back queries; None for exact (flat)
    rerank: int = 0  # lossy codes (PQ): recall is measured after exact re-scoring of this many candidates
    trained_on: int = 0  # item count the trained part (IVF centroids, PQ codebooks) was fitted to
    # IVF only: file name (beside the .faiss file) of the inverted lists when they live on disk
    # (faiss OnDiskInvertedLists, see mmsearch/ondisk.py); None: the lists are inside the .faiss file
    ondisk: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexSpec":
        return cls(kind=d["kind"], factory=d["factory"], params=dict(d.get("params", {})),
                   recall_at_10=d.get("recall_at_10"), trained_on=int(d.get("trained_on", 0)),
                   rerank=int(d.get("rerank", 0)), ondisk=d.get("ondisk"))


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40}


def parse_memory(text: str | int | None) -> int | None:
    """'512MB', '2G', '1.5GB', '1000000' -> bytes (binary units); None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper().replace("IB", "B") if m else ""
    if not m or unit not in _UNITS:
        raise MMSearchError(f"cannot read memory size {text!r}: use e.g. 512MB, 2GB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[unit])


# ------------------------------------------------------------------------------------------ choosing
def nlist_for(n: int) -> int:
    """IVF cells: ~4 sqrt(n), a power of two, with >= 39 training points per cell (FAISS's own floor)."""
    return int(max(1, min(2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))), n // 39)))


def pq_m_for(dim: int, n: int, budget: int | None) -> int:
    """PQ sub-quantizers (bytes per code): the largest divisor of dim that fits the budget, at most dim/4."""
    cands = [m for m in (64, 48, 32, 24, 16, 12, 8, 4) if dim % m == 0 and m <= max(4, dim // 4)]
    if not cands:
        cands = [m for m in range(min(64, dim), 0, -1) if dim % m == 0][:1]
    for m in cands:
        if budget is None or n * (m + 8) * 1.1 <= budget:
            return m
    return cands[-1]


def estimate_memory(kind: str, n: int, dim: int, m: int = 32, pq_m: int = 32) -> float:
    """Rough RAM of an index (bytes): vectors/codes + ids + graph links; used by ``auto``."""
    if kind == "flat":
        return n * (4 * dim + 8)
    if kind == "ivf":
        return n * (4 * dim + 8) + nlist_for(n) * 4 * dim
    if kind == "hnsw":
        return n * (4 * dim + 8 + m * 2 * 4 * 1.05)  # level-0 has 2M links, upper levels add ~5%
    if kind == "ivfpq":
        return n * (pq_m + 8) + nlist_for(n) * 4 * dim + dim * dim * 4
    return n * (4 * dim + 8)


def choose(n: int, dim: int, cfg: IndexCfg) -> IndexSpec:
    """Pick a concrete index for ``n`` vectors of ``dim`` under ``cfg`` (type and memory budget)."""
    t = cfg.index_type.strip()
    budget = cfg.max_memory
    kind = t.lower()
    if kind == "auto":
        fits = lambda k: budget is None or estimate_memory(k, n, dim) <= budget  # noqa: E731
        if n < FLAT_MAX and fits("flat"):
            kind = "flat"
        elif fits("ivf"):
            # IVF-Flat over HNSW in the middle: it removes items in place (HNSW must be rebuilt on a
            # delete), serves memory-mapped, and trains in seconds; HNSW stays available by name.
            kind = "ivf"
        else:
            kind = "ivfpq"
    if kind == "ivfpq" and n < 256:
        log.warning("%d items are too few to train a product quantizer; using IVF-Flat", n)
        kind = "ivf"
    if kind == "ivf" and n < 39:
        log.warning("%d items are too few to train IVF cells; using an exact (flat) index", n)
        kind = "flat"
    if kind == "flat":
        return IndexSpec("flat", "IDMap2,Flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", f"IDMap2,HNSW{cfg.hnsw_m},Flat", {"efSearch": 64})
    if kind == "ivf":
        return IndexSpec("ivf", f"IVF{nlist_for(n)},Flat", {"nprobe": 8}, trained_on=n)
    if kind == "ivfpq":
        m = pq_m_for(dim, n, budget)
        nbits = 8 if n >= 256 * 39 else 4  # PQ needs ~39 points per centroid of each sub-quantizer
        # OPQ's rotation matters most when codes are short; its training is slow, so only then
        opq = f"OPQ{m}," if nbits == 8 and m <= 16 else ""
        return IndexSpec("ivfpq", f"{opq}IVF{nlist_for(n)},PQ{m}x{nbits}", {"nprobe": 8}, trained_on=n,
                         rerank=RERANK)
    try:  # a raw factory string
        probe = faiss.index_factory(dim, t, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].split("Error: ")[-1] if str(exc).strip() else "invalid"
        raise MMSearchError(f"unknown index type {t!r}: use one of {', '.join(NAMED_TYPES)} or a FAISS factory "
                            f"string such as IVF1024,Flat ({first})") from None
    factory = t if _has_ids(probe) else f"IDMap2,{t}"
    params = {"nprobe": 8} if _ivf(probe) is not None else {"efSearch": 64} if _hnsw(probe) is not None else {}
    lossy = "PQ" in t.upper() or "SQ" in t.upper() or "LSH" in t.upper()
    return IndexSpec("factory", factory, params, trained_on=n, rerank=RERANK if lossy else 0)


def _has_ids(index: faiss.Index) -> bool:
    return _ivf(index) is not None or isinstance(faiss.downcast_index(index), (faiss.IndexIDMap, faiss.IndexIDMap2))


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index: faiss.Index):
    idx = faiss.downcast_index(index)
    if isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        idx = faiss.downcast_index(idx.index)
    return idx if isinstance(idx, faiss.IndexHNSW) else None


# ------------------------------------------------------------------------------------------ building
def build(spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, seed: int = 0,
          train_sample: int = 100_000) -> faiss.Index:
    """A new index of ``spec`` over (n, d) unit ``vectors`` with int64 ``ids``; trained on a sample."""
    index = train_index(spec, vectors, seed, train_sample)
    add(index, vectors, ids)
    set_params(index, spec.params)
    return index


def training_sample(vectors: np.ndarray, seed: int = 0, train_sample: int = 100_000) -> np.ndarray:
    """The rows an index is trained on: all of them, or ``train_sample`` rows drawn with ``seed``.
    Deterministic, so one process and rank 0 of a distributed job train on the same rows."""
    n = len(vectors)
    rows = slice(None) if n <= train_sample else np.sort(np.random.default_rng(seed).choice(n, train_sample,
                                                                                            replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def train_index(spec: IndexSpec, vectors: np.ndarray, seed: int = 0, train_sample: int = 100_000) -> faiss.Index:
    """An empty index of ``spec``, trained (IVF centroids, PQ codebooks) on :func:`training_sample`."""
    dim = vectors.shape[1]
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = training_sample(vectors, seed, train_sample)
        ivf = _ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
            ivf.cp.min_points_per_centroid = 1  # nlist_for already keeps >= 39 per cell; silence the warning
            concrete = faiss.downcast_index(ivf)
            if hasattr(concrete, "do_polysemous_training"):
                # polysemous training reorders PQ centroids for Hamming pre-filtering, which search never
                # enables (polysemous_ht = 0): it cost most of an IVF-PQ training and changes no result
                concrete.do_polysemous_training = False
            pq = getattr(concrete, "pq", None)
            if pq is not None:
                # 256 centroids per sub-quantizer in 8-16 dims converge on far fewer points than the
                # default 65k; this makes PQ training several times faster for no measurable recall loss
                pq.cp.max_points_per_centroid = 40  # 10,240 points: just above FAISS's warning floor
                pq.cp.niter = 10
        try:
            index.train(sample)
        except RuntimeError as exc:  # e.g. IVF99999,Flat on 40 items: FAISS's assertion, as one line
            first = str(exc).strip().splitlines()[-1].split("Error: ")[-1] if str(exc).strip() else "failed"
            raise MMSearchError(f"cannot train a {spec.factory} index on {len(sample)} vectors: {first}; choose "
                                f"a smaller index type (or --index-type auto)") from None
    return index


def add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, chunk: int = 65536) -> None:
    for s in range(0, len(vectors), chunk):
        index.add_with_ids(np.ascontiguousarray(vectors[s:s + chunk], dtype=np.float32),
                           np.ascontiguousarray(ids[s:s + chunk], dtype=np.int64))


def supports_remove(index: faiss.Index) -> bool:
    return _hnsw(index) is None


def remove(index: faiss.Index, ids: np.ndarray) -> int:
    if not len(ids):
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def set_params(index: faiss.Index, params: dict[str, int]) -> None:
    ivf, hnsw = _ivf(index), _hnsw(index)
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
    if _ivf(index) is not None and not isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(spec_params.get("nprobe", 1)))  # type: ignore[call-arg]
    if _hnsw(index) is not None:
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
        ivf = _ivf(index)
        widened = int(out["nprobe"]) * boost
        out["nprobe"] = min(widened, ivf.nlist) if ivf is not None else widened
    if "efSearch" in out:
        out["efSearch"] = int(out["efSearch"]) * boost
    return out


# -------------------------------------------------------------------------------------------- tuning
def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (B, k) present in the same row of ``found`` (B, k')."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    total = sum(int((t >= 0).sum()) for t in truth)
    return hits / total if total else 1.0


def tune(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, target: float = 0.95,
         seed: int = 0, n_queries: int = TUNE_QUERIES) -> IndexSpec:
    """Raise nprobe / efSearch until Recall@10 against exact search reaches ``target``.

    Queries are held-back items: a sample of the stored vectors, each searched for its 10 nearest
    *other* items (its own entry is dropped from both the result and the exact ground truth), so the
    queries follow the catalog's distribution without being trivially found. A lightly perturbed item
    is not enough: on clustered data it tunes nprobe far too low for fresh queries (tests/test_ann.py).
    Returns ``spec`` with params and recall filled in.
    """
    ivf, hnsw = _ivf(index), _hnsw(index)
    if (ivf is None and hnsw is None) or index.ntotal == 0:
        return spec
    rng = np.random.default_rng(seed + 1)
    n, dim = vectors.shape
    rows = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    q = np.asarray(vectors[rows], dtype=np.float32)
    self_ids = np.asarray(ids, np.int64)[rows]
    k = min(TUNE_K + 1, index.ntotal)
    flat = faiss.IndexFlatIP(dim)
    truth = np.zeros((len(q), k), np.int64)
    best = np.full((len(q), k), -np.inf, np.float32)
    for s in range(0, n, 262144):  # exact scan in chunks so no second full float32 copy is made
        flat.reset()
        flat.add(np.ascontiguousarray(vectors[s:s + 262144], dtype=np.float32))
        d, i = flat.search(q, k)
        allD = np.concatenate([best, d], 1)
        allI = np.concatenate([truth, i + s], 1)
        order = np.argsort(-allD, axis=1)[:, :k]
        best, truth = np.take_along_axis(allD, order, 1), np.take_along_axis(allI, order, 1)
    truth = _drop_self(np.asarray(ids, np.int64)[truth], self_ids, k - 1)  # rows -> item ids
    if ivf is not None:
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                                               768, 1024, 2048, 4096, 8192) if v < ivf.nlist] + [ivf.nlist]
    else:
        name, values = "efSearch", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    r = 0.0
    for v in values:
        set_params(index, {name: v})
        if spec.rerank:
            found = rerank(index.search(q, max(k, spec.rerank))[1], q, vectors, ids, k)
        else:
            found = index.search(q, k)[1]
        r = recall_at_k(_drop_self(found, self_ids, k - 1), truth)
        if r >= target:
            break
    log.info("tuned %s=%d: Recall@%d %.3f on %d held-back queries", name, v, k - 1, r, len(q))
    spec.params = {name: int(v)}
    spec.recall_at_10 = round(float(r), 4)
    return spec


def _drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """(B, k): each row of ``found`` without the query's own id (or without its last entry)."""
    out = np.full((len(found), k), -1, np.int64)
    for b, row in enumerate(found):
        row = row[row != self_ids[b]][:k]
        out[b, :len(row)] = row
    return out


def rerank(found: np.ndarray, q: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """(B, k) ids: the candidates ``found`` (B, C) re-scored exactly against ``vectors`` (rows sorted by ``ids``)."""
    out = np.full((len(q), k), -1, np.int64)
    for b in range(len(q)):
        cand = found[b][found[b] >= 0]
        rows = np.searchsorted(ids, cand)
        scores = np.asarray(vectors[rows], np.float32) @ q[b]
        out[b, :min(k, len(cand))] = cand[np.argsort(-scores, kind="stable")[:k]]
    return out


def build_tuned(cfg: IndexCfg, vectors: np.ndarray, ids: np.ndarray) -> tuple[faiss.Index, IndexSpec]:
    """choose -> build -> tune, for one channel."""
    spec = choose(len(vectors), vectors.shape[1], cfg)
    index = build(spec, vectors, ids, seed=cfg.seed)
    spec = tune(index, spec, vectors, ids, cfg.target_recall, seed=cfg.seed)
    return index, spec


# ------------------------------------------------------------------------------------------- opening
_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Drop what C code prints to stdout meanwhile: OnDiskInvertedLists printf()s every file resize and
    relocation, which would end up in the middle of the CLI's output (``--json`` included)."""
    with _STDOUT_LOCK:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        libc = ctypes.CDLL(None)
        libc.fflush(None)
        saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            yield
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


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
    import os

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
