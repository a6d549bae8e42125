"""Index benchmark: build time, memory, QPS and Recall@10 of each index type on synthetic unit vectors.

Side by side in one run (same vectors, same queries, same machine state):
  * mmsearch's index types (flat, ivf, ivfpq, hnsw) as mmsearch.index.annbuild builds and tunes them,
  * hnswlib and usearch HNSW at matched recall (smallest ef reaching Recall@10 >= 0.95),
  * incremental update (add 1% new items to a trained index) vs rebuilding,
  * filtered search at 1%, 10% and 50% selectivity: FAISS IDSelector vs adaptive over-fetching vs an
    exact scan of the matching rows,
  * the full write path (SQLite store + embeddings + FAISS + snapshot swap): update vs rebuild.

Data: a rank-16 Gaussian lifted to 384-d plus noise, normalised (see ``synthetic``); queries are
held-out points of the same distribution.
Memory is the serialized index size (what the index holds in RAM), not process RSS (too noisy here).

Usage (the committed results came from exactly these commands, see benchmarks/results/index.md):
    nice -n 10 python benchmarks/bench_index.py --n 100000 --hnsw-growth 25000,50000 --filters --write-path \
        --out benchmarks/results/index_100k.json
    nice -n 10 python benchmarks/bench_index.py --n 1000000 --types flat,ivf,ivfpq --no-libs --update \
        --out benchmarks/results/index_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsearch.index import ann, annbuild  # noqa: E402
from mmsearch.index.options import IndexCfg  # noqa: E402

K = 10
EF_LADDER = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]


def synthetic(n: int, dim: int, n_queries: int, seed: int = 0, rank: int = 16, noise: float = 0.5):
    """(n, dim) items and (n_queries, dim) held-out queries, unit rows, float32.

    A rank-16 Gaussian lifted to ``dim`` plus isotropic noise: embeddings have a low intrinsic dimension,
    and on such data IVF needs tens of probes for Recall@10 0.95, as on real embeddings. (Gaussian
    cluster mixtures in 384-d are either trivially separable or structureless.)
    """
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((rank, dim)).astype(np.float32)

    def draw(m):
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 200_000):
            e = min(m, s + 200_000)
            x = rng.standard_normal((e - s, rank)).astype(np.float32) @ lift
            x += rng.standard_normal((e - s, dim)).astype(np.float32) * noise
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(q, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return annbuild.recall_at_k(found[:, :K], truth[:, :K])


def qps(search, q: np.ndarray, batch: int, max_queries: int, min_seconds: float = 1.0) -> float:
    """Queries per second of ``search(batch_of_queries)``; at least one pass, up to min_seconds.

    Batch 1 runs single-threaded (one query per core is how a server scales; OpenMP start-up per
    one-vector search costs more than it saves on a loaded 2-core machine), batch 64 with all threads.
    """
    threads = faiss.omp_get_max_threads()
    if batch == 1:
        faiss.omp_set_num_threads(1)
    try:
        return _qps(search, q, batch, max_queries, min_seconds)
    finally:
        faiss.omp_set_num_threads(threads)


def _qps(search, q, batch, max_queries, min_seconds):
    n, done, t0 = min(len(q), max_queries), 0, time.perf_counter()
    while True:
        for s in range(0, n, batch):
            search(q[s:s + batch])
            done += len(q[s:s + batch])
        if time.perf_counter() - t0 >= min_seconds:
            break
    return done / (time.perf_counter() - t0)


def faiss_bytes(index) -> int:
    return int(len(faiss.serialize_index(index)))


def bench_mmsearch(kind: str, x, ids, q, truth, max_q: int):
    cfg = IndexCfg(index_type=kind)
    t0 = time.perf_counter()
    spec = annbuild.choose(len(x), x.shape[1], cfg)
    index = annbuild.build(spec, x, ids, seed=0)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    spec = annbuild.tune(index, spec, x, ids, cfg.target_recall)
    tune_s = time.perf_counter() - t1
    if spec.rerank:  # lossy codes are served with exact re-scoring of the top candidates (as SearchEngine does)
        def search(b):
            return annbuild.rerank(index.search(b, spec.rerank)[1], b, x, ids, K)
    else:
        def search(b):
            return index.search(b, K)[1]
    found = search(q)
    size = faiss_bytes(index)
    row = {"lib": "mmsearch/faiss", "type": kind, "factory": spec.factory, "params": spec.params,
           "build_s": round(build_s, 2), "tune_s": round(tune_s, 2), "bytes": size,
           "bytes_per_vector": round(size / len(x), 1), "tuned_recall_heldback": spec.recall_at_10,
           "recall_at_10": round(recall(found, truth), 4),
           "rerank": spec.rerank, "qps_b1": round(qps(search, q, 1, max_q), 1),
           "qps_b64": round(qps(search, q, 64, 8 * max_q), 1)}
    return row, index, spec


def ef_matched(search_at, q, truth):
    """Smallest ef of the ladder whose Recall@10 on the bench queries reaches 0.95 -> (ef, recall)."""
    r = 0.0
    for ef in EF_LADDER:
        r = recall(search_at(ef, q), truth)
        if r >= 0.95:
            return ef, r
    return EF_LADDER[-1], r


def bench_hnswlib(x, q, truth, max_q: int):
    import hnswlib

    t0 = time.perf_counter()
    p = hnswlib.Index(space="ip", dim=x.shape[1])
    p.init_index(max_elements=len(x), M=32, ef_construction=40, random_seed=0)
    p.set_num_threads(faiss.omp_get_max_threads())
    p.add_items(x, np.arange(len(x)))
    build_s = time.perf_counter() - t0

    def at(ef, qq):
        p.set_ef(max(ef, K))
        return p.knn_query(qq, k=K)[0].astype(np.int64)

    ef, r = ef_matched(at, q, truth)
    p.set_ef(ef)
    with tempfile.TemporaryDirectory() as d:
        p.save_index(f"{d}/h.bin")
        size = os.path.getsize(f"{d}/h.bin")
    return {"lib": "hnswlib", "type": "hnsw", "factory": "M=32,efC=40", "params": {"ef": ef},
            "build_s": round(build_s, 2), "bytes": size, "bytes_per_vector": round(size / len(x), 1),
            "recall_at_10": round(r, 4), "qps_b1": round(qps(lambda b: p.knn_query(b, k=K), q, 1, max_q), 1),
            "qps_b64": round(qps(lambda b: p.knn_query(b, k=K), q, 64, 8 * max_q), 1)}


def bench_usearch(x, q, truth, max_q: int):
    from usearch.index import Index

    t0 = time.perf_counter()
    u = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_add=40)
    u.add(np.arange(len(x)), x, threads=faiss.omp_get_max_threads())
    build_s = time.perf_counter() - t0

    def at(ef, qq):
        u.expansion_search = max(ef, K)
        return np.asarray(u.search(qq, K).keys, np.int64).reshape(len(qq), -1)

    ef, r = ef_matched(at, q, truth)
    u.expansion_search = ef
    size = int(u.memory_usage)
    return {"lib": "usearch", "type": "hnsw", "factory": "connectivity=32,expansion_add=40", "params": {"ef": ef},
            "build_s": round(build_s, 2), "bytes": size, "bytes_per_vector": round(size / len(x), 1),
            "recall_at_10": round(r, 4), "qps_b1": round(qps(lambda b: u.search(b, K), q, 1, max_q), 1),
            "qps_b64": round(qps(lambda b: u.search(b, K), q, 64, 8 * max_q), 1)}


def bench_update(kind: str, x, ids, q, frac: float = 0.01):
    """Add ``frac`` new items to a trained index vs build from scratch over all items (then tune both)."""
    n_new = int(len(x) * frac)
    base_x, new_x = x[:-n_new], x[-n_new:]
    cfg = IndexCfg(index_type=kind)
    spec = annbuild.choose(len(base_x), x.shape[1], cfg)
    index = annbuild.build(spec, base_x, ids[:-n_new])
    t0 = time.perf_counter()
    annbuild.add(index, new_x, ids[-n_new:])
    annbuild.tune(index, spec, x, ids, cfg.target_recall)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec2 = annbuild.choose(len(x), x.shape[1], cfg)
    index2 = annbuild.build(spec2, x, ids)
    annbuild.tune(index2, spec2, x, ids, cfg.target_recall)
    rebuild_s = time.perf_counter() - t0
    return {"type": kind, "n": len(x), "added": n_new, "update_s": round(add_s, 2), "rebuild_s": round(rebuild_s, 2),
            "speedup": round(rebuild_s / add_s, 1)}


def bench_filters(index, spec, x, ids, q, max_q: int, seed: int = 0):
    """ms/query of filtered top-10 at several selectivities, three strategies, with recall vs exact."""
    rng = np.random.default_rng(seed)
    rows = []
    qq = q[:max_q]
    for sel in (0.01, 0.10, 0.50):
        allowed = np.sort(rng.choice(ids, int(len(ids) * sel), replace=False))
        xa = x[np.searchsorted(ids, allowed)]
        truth = allowed[exact_topk(xa, qq)]
        strategies = {
            "selector": lambda b: ann.filtered_search(index, b, K, allowed, spec.params, "selector"),
            "overfetch": lambda b: ann.filtered_search(index, b, K, allowed, spec.params, "overfetch"),
            "exact_scan": lambda b: allowed[np.argsort(-(b @ xa.T), axis=1)[:, :K]],
        }
        for name, fn in strategies.items():
            t0 = time.perf_counter()
            found = np.concatenate([fn(qq[i:i + 1]) for i in range(len(qq))])
            ms = (time.perf_counter() - t0) / len(qq) * 1000
            ok = bool(np.isin(found[found >= 0], allowed).all())
            rows.append({"selectivity": sel, "strategy": name, "index": spec.factory, "ms_per_query": round(ms, 3),
                         "recall_at_10": round(recall(found, truth), 4), "all_hits_match": ok,
                         "hits_per_query": round(float((found >= 0).sum(1).mean()), 2)})
    return rows


def bench_write_path(x, n_update_frac: float = 0.01):
    """The real write path (mmsearch.index.writer.commit): full build of a store vs an update adding 1% items."""
    from mmsearch.index.snapshot import load_state
    from mmsearch.index.writer import Change, commit

    rng = np.random.default_rng(1)
    cats = [f"c{i}" for i in range(50)]
    n = len(x)
    n_new = int(n * n_update_frac)

    def change(i):
        return Change(row={"fid": i, "id": f"img/{i}.jpg", "path": f"/data/img/{i}.jpg", "title": f"item {i}",
                           "text": "", "metadata": {"category": cats[i % 50], "price": float(rng.integers(1, 500))},
                           "image_sha256": f"{i:064x}", "text_sha256": None},
                      vectors={"image": x[i]})

    cfg = IndexCfg()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "idx"
        base = [change(i) for i in range(n - n_new)]
        manifest = {"format": "mmsearch-index", "format_version": 2, "model": {}, "dim": x.shape[1]}
        t0 = time.perf_counter()
        commit(out, None, dict(manifest), base, [], cfg, {"image": x.shape[1]})
        build_s = time.perf_counter() - t0
        state = load_state(out)
        new = [change(i) for i in range(n - n_new, n)]
        t0 = time.perf_counter()
        commit(out, state, dict(manifest), new, [], cfg, {"image": x.shape[1]})
        update_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        commit(Path(d) / "idx2", None, dict(manifest), base + new, [], cfg, {"image": x.shape[1]})
        rebuild_s = time.perf_counter() - t0
        spec = load_state(out).manifest["channels"]["image"]["spec"]
    return {"n": n, "added": n_new, "index": spec["factory"], "first_build_s": round(build_s, 2),
            "update_s": round(update_s, 2), "rebuild_s": round(rebuild_s, 2),
            "speedup": round(rebuild_s / update_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--max-b1-queries", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--types", default="flat,ivf,ivfpq,hnsw")
    ap.add_argument("--no-libs", action="store_true", help="skip hnswlib and usearch")
    ap.add_argument("--hnsw-growth", default="", help="extra sizes at which to time HNSW builds, e.g. 25000,50000")
    ap.add_argument("--update", action="store_true", help="incremental add of 1%% vs rebuild (ivf, ivfpq)")
    ap.add_argument("--filters", action="store_true", help="filtered search at 1/10/50%% selectivity")
    ap.add_argument("--write-path", action="store_true", help="full commit path: update vs rebuild")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)

    t_all = time.perf_counter()
    x, q = synthetic(args.n, args.dim, args.queries)
    ids = np.arange(len(x), dtype=np.int64)
    t0 = time.perf_counter()
    truth = exact_topk(x, q)
    print(f"data: {args.n} x {args.dim}, {args.queries} queries; exact ground truth in {time.perf_counter() - t0:.1f} s",
          flush=True)
    result = {"command": "python " + " ".join(sys.argv), "n": args.n, "dim": args.dim, "queries": args.queries,
              "threads": args.threads, "faiss": faiss.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "rows": [], "hnsw_growth": [], "update": [], "filters": [], "write_path": None}
    indexes = {}
    for kind in [t for t in args.types.split(",") if t]:
        row, index, spec = bench_mmsearch(kind, x, ids, q, truth, args.max_b1_queries)
        indexes[kind] = (index, spec)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if not args.no_libs:
        for fn in (bench_hnswlib, bench_usearch):
            row = fn(x, q, truth, args.max_b1_queries)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    for m in [int(s) for s in args.hnsw_growth.split(",") if s]:
        t0 = time.perf_counter()
        annbuild.build(annbuild.choose(m, args.dim, IndexCfg(index_type="hnsw")), x[:m], ids[:m])
        row = {"n": m, "build_s": round(time.perf_counter() - t0, 2)}
        result["hnsw_growth"].append(row)
        print("hnsw growth", json.dumps(row), flush=True)
    if args.filters:
        for kind in ("ivf", "hnsw"):
            if kind in indexes:
                rows = bench_filters(*indexes[kind], x, ids, q, 100)
                result["filters"].extend(rows)
                for r in rows:
                    print("filter", json.dumps(r), flush=True)
    if args.update:
        for kind in [t for t in ("ivf", "ivfpq") if t in args.types.split(",")]:
            row = bench_update(kind, x, ids, q)
            result["update"].append(row)
            print("update", json.dumps(row), flush=True)
    if args.write_path:
        result["write_path"] = bench_write_path(x)
        print("write path", json.dumps(result["write_path"]), flush=True)
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    print(f"total {result['total_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
