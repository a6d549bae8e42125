"""Building an approximate-nearest-neighbour index: choose a FAISS index type for a channel, size it,
train it, fill it, and tune its search parameter. Write time only; reading and searching: index/ann.py.

Every index searches unit vectors by inner product and stores explicit int64 item ids (IVF indexes
carry ids natively; flat, HNSW and raw factory strings without ids are wrapped in ``IndexIDMap2``).
The exact search parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is tuned on held-back queries
until Recall@10 against exact search reaches a target, and recorded with the measured recall.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from ..errors import MMSearchError
from .ann import IndexSpec, hnsw_of, ivf_of, set_params
from .options import NAMED_TYPES, IndexCfg

log = logging.getLogger(__name__)

FLAT_MAX = 20_000  # below this an exact scan is fast enough (< ~2 ms/query at 384-d) and needs no tuning
TUNE_QUERIES = 200
TUNE_K = 10
RERANK = 256  # candidates SearchEngine re-scores exactly (RankingCfg.candidates): what lossy codes must find


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
    text = cfg.index_type.strip()
    kind = text.lower()
    if kind not in NAMED_TYPES:
        return _factory_spec(text, n, dim)
    if kind == "auto":
        kind = _auto_kind(n, dim, cfg.max_memory)
    return _NAMED[_trainable(kind, n)](n, dim, cfg)


def _auto_kind(n: int, dim: int, budget: int | None) -> str:
    """``auto``: exact while small, IVF-Flat while it fits the budget, else IVF-PQ."""
    def fits(kind: str) -> bool:
        return budget is None or estimate_memory(kind, n, dim) <= budget

    if n < FLAT_MAX and fits("flat"):
        return "flat"
    # IVF-Flat over HNSW in the middle: it removes items in place (HNSW must be rebuilt on a delete),
    # serves memory-mapped, and trains in seconds; HNSW stays available by name.
    return "ivf" if fits("ivf") else "ivfpq"


def _trainable(kind: str, n: int) -> str:
    """``kind``, or the next simpler type when ``n`` items are too few to train it."""
    if kind == "ivfpq" and n < 256:
        log.warning("%d items are too few to train a product quantizer; using IVF-Flat", n)
        kind = "ivf"
    if kind == "ivf" and n < 39:
        log.warning("%d items are too few to train IVF cells; using an exact (flat) index", n)
        kind = "flat"
    return kind


def _flat_spec(n: int, dim: int, cfg: IndexCfg) -> IndexSpec:
    return IndexSpec("flat", "IDMap2,Flat")


def _hnsw_spec(n: int, dim: int, cfg: IndexCfg) -> IndexSpec:
    return IndexSpec("hnsw", f"IDMap2,HNSW{cfg.hnsw_m},Flat", {"efSearch": 64})


def _ivf_spec(n: int, dim: int, cfg: IndexCfg) -> IndexSpec:
    return IndexSpec("ivf", f"IVF{nlist_for(n)},Flat", {"nprobe": 8}, trained_on=n)


def _ivfpq_spec(n: int, dim: int, cfg: IndexCfg) -> IndexSpec:
    m = pq_m_for(dim, n, cfg.max_memory)
    nbits = 8 if n >= 256 * 39 else 4  # PQ needs ~39 points per centroid of each sub-quantizer
    # OPQ's rotation matters most when codes are short; its training is slow, so only then
    opq = f"OPQ{m}," if nbits == 8 and m <= 16 else ""
    return IndexSpec("ivfpq", f"{opq}IVF{nlist_for(n)},PQ{m}x{nbits}", {"nprobe": 8}, trained_on=n, rerank=RERANK)


_NAMED = {"flat": _flat_spec, "hnsw": _hnsw_spec, "ivf": _ivf_spec, "ivfpq": _ivfpq_spec}


def _factory_spec(factory: str, n: int, dim: int) -> IndexSpec:
    """A raw FAISS factory string (checked by building it empty), wrapped in an id map when it has no ids."""
    try:
        probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise MMSearchError(f"unknown index type {factory!r}: use one of {', '.join(NAMED_TYPES)} or a FAISS "
                            f"factory string such as IVF1024,Flat ({_faiss_message(exc, 'invalid')})") from None
    wrapped = factory if _has_ids(probe) else f"IDMap2,{factory}"
    params = {"nprobe": 8} if ivf_of(probe) is not None else {"efSearch": 64} if hnsw_of(probe) is not None else {}
    lossy = any(code in factory.upper() for code in ("PQ", "SQ", "LSH"))
    return IndexSpec("factory", wrapped, params, trained_on=n, rerank=RERANK if lossy else 0)


def _has_ids(index: faiss.Index) -> bool:
    return ivf_of(index) is not None or isinstance(faiss.downcast_index(index), (faiss.IndexIDMap, faiss.IndexIDMap2))


def _faiss_message(exc: RuntimeError, default: str) -> str:
    """The last line of a FAISS assertion, without its "Error in ..." preamble."""
    text = str(exc).strip()
    return text.splitlines()[-1].split("Error: ")[-1] if text else default


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
        ivf = ivf_of(index)
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
            raise MMSearchError(f"cannot train a {spec.factory} index on {len(sample)} vectors: "
                                f"{_faiss_message(exc, 'failed')}; choose "
                                f"a smaller index type (or --index-type auto)") from None
    return index


def add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, chunk: int = 65536) -> None:
    """Add (n, d) ``vectors`` with int64 ``ids`` in float32 chunks (float16 or memory-mapped input stays small)."""
    for s in range(0, len(vectors), chunk):
        index.add_with_ids(np.ascontiguousarray(vectors[s:s + chunk], dtype=np.float32),
                           np.ascontiguousarray(ids[s:s + chunk], dtype=np.int64))


def supports_remove(index: faiss.Index) -> bool:
    """HNSW graphs cannot delete: an update that removes items rebuilds them."""
    return hnsw_of(index) is None


def remove(index: faiss.Index, ids: np.ndarray) -> int:
    if not len(ids):
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))



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
    ivf, hnsw = ivf_of(index), hnsw_of(index)
    if (ivf is None and hnsw is None) or index.ntotal == 0:
        return spec
    rng = np.random.default_rng(seed + 1)
    n = len(vectors)
    rows = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    q = np.asarray(vectors[rows], dtype=np.float32)
    self_ids = np.asarray(ids, np.int64)[rows]
    k = min(TUNE_K + 1, index.ntotal)
    truth = _drop_self(np.asarray(ids, np.int64)[_exact_rows(vectors, q, k)], self_ids, k - 1)  # rows -> item ids
    name, values = ("nprobe", _nprobe_ladder(ivf.nlist)) if ivf is not None else ("efSearch", _EF_LADDER)
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


_EF_LADDER = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


def _nprobe_ladder(nlist: int) -> list[int]:
    return [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096,
                        8192) if v < nlist] + [nlist]


def _exact_rows(vectors: np.ndarray, q: np.ndarray, k: int, chunk: int = 262144) -> np.ndarray:
    """(B, k) rows of ``vectors`` nearest to each query by exact inner product, best first. Scans in
    chunks, so no second full float32 copy of (possibly float16 or memory-mapped) ``vectors`` is made."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    rows = np.zeros((len(q), k), np.int64)
    best = np.full((len(q), k), -np.inf, np.float32)
    for s in range(0, len(vectors), chunk):
        flat.reset()
        flat.add(np.ascontiguousarray(vectors[s:s + chunk], dtype=np.float32))
        d, i = flat.search(q, k)
        all_d, all_i = np.concatenate([best, d], 1), np.concatenate([rows, i + s], 1)
        order = np.argsort(-all_d, axis=1)[:, :k]
        best, rows = np.take_along_axis(all_d, order, 1), np.take_along_axis(all_i, order, 1)
    return rows


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
