"""Folder backend (FAISS as mmsearch builds it) vs Milvus Lite (IVF_FLAT and HNSW), side by side in one run.

Per size: build time (insert + index); single-query QPS and p50/p99 latency (k=10) unfiltered, with
``category == 3`` (~10% of rows) and with a price range (~1%), each at MATCHED Recall@10 (nprobe / ef swept
on tuning queries until Recall@10 against exact search reaches ``--target``, then timed on other queries);
memory (RSS growth of a fresh process that opens the index and serves the queries; build peak) and disk.

Folder side: mmsearch.index.ann exactly (choose/build/tune/read; IVF-Flat is what ``auto`` picks at these
sizes, HNSW by name), filtered as SearchEngine._candidates does: an exact scan of the matches up to
``exact_filter_max``, else ``ann.filtered_search`` (cached IDSelector or over-fetch) with an exact fallback.
Milvus Lite side: pymilvus as an application uses it (insert in batches, flush, create_index, load, search
with a filter expression). Every step runs in a fresh spawned process, so memory numbers do not mix;
searches use one FAISS thread on both sides (OMP_NUM_THREADS=1, as the engine for single queries).

Data: unit float32 rows, a Gaussian mixture (1000 clusters of uneven size) in a rank-32 subspace lifted to
384-d plus noise (IVF1024 needs ~32 probes for Recall@10 0.95 at 100k, as on real embeddings); ``category``
(10 values) and ``price`` (0-100) uniform and independent of the vector.

    nice -n 5 python benchmarks/bench_milvus.py --sizes 100000,1000000 --hnsw-max 100000 --md OUT.md --out OUT.json
    python benchmarks/bench_milvus.py --quick          # 10k rows, a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmsearch.config import RankingCfg  # noqa: E402
from mmsearch.index import ann, annbuild  # noqa: E402
from mmsearch.index.options import IndexCfg  # noqa: E402

K, COLLECTION = 10, "items"
NPROBE_LADDER = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096]
EF_LADDER = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]
PRICE_RANGE = (40.0, 41.0)  # price is uniform on [0, 100): 1% of the rows
SCENARIOS = {"none": "", "category": "category == 3",
             "price": f"price >= {PRICE_RANGE[0]} and price < {PRICE_RANGE[1]}"}
LITE_TYPES = {"ivf": "IVF_FLAT", "hnsw": "HNSW"}


@dataclass
class Cfg:
    dim: int = 384  # the default model's shared embedding size (mmsearch/models/configs/default.json)
    queries: int = 200  # timed (single queries) and measured for Recall@10
    tune_queries: int = 100  # the sweep that matches recall
    target: float = 0.95
    time_budget: float = 15.0  # seconds of single queries per (index, filter) cell, at least min_timed
    min_timed: int = 20
    hnsw_m: int = 32  # IndexCfg.hnsw_m; efConstruction 40 is FAISS's default, which mmsearch keeps
    seed: int = 0


def mixture(n: int, dim: int, rng: np.random.Generator, model_seed: int = 0, clusters: int = 1000,
            rank: int = 32, spread: float = 1.0, noise: float = 0.5) -> np.ndarray:
    """(n, dim) unit float32 rows: clusters of uneven weight in a rank-``rank`` subspace, plus noise."""
    m = np.random.default_rng(model_seed)  # the mixture itself; ``rng`` draws the points
    lift = m.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    centers = m.standard_normal((clusters, rank)).astype(np.float32)
    weights = m.dirichlet(np.full(clusters, 2.0))
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        z = centers[rng.choice(clusters, e - s, p=weights)] + spread * rng.standard_normal((e - s, rank),
                                                                                             dtype=np.float32)
        x = z @ lift + noise * rng.standard_normal((e - s, dim), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def allowed_ids(category: np.ndarray, price: np.ndarray, scenario: str) -> np.ndarray | None:
    """Sorted int64 ids (= row numbers) matching ``scenario``; None when unfiltered."""
    if scenario == "none":
        return None
    mask = category == 3 if scenario == "category" else (price >= PRICE_RANGE[0]) & (price < PRICE_RANGE[1])
    return np.flatnonzero(mask).astype(np.int64)


def exact_topk(vectors: np.ndarray, q: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """(B, K) ids of the exact top K among ``allowed`` (all rows when None), by inner product."""
    i = faiss.knn(q, vectors if allowed is None else vectors[allowed], K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    return i if allowed is None else np.where(i >= 0, allowed[np.maximum(i, 0)], -1)


def make_data(work: Path, n: int, cfg: Cfg) -> None:
    """Vectors, metadata, tuning and evaluation queries and their exact answers, saved as .npy in ``work``."""
    rng = np.random.default_rng(cfg.seed)
    vectors = mixture(n, cfg.dim, rng, cfg.seed)
    category = rng.integers(0, 10, n).astype(np.int64)
    price = rng.uniform(0.0, 100.0, n).astype(np.float32)
    queries = mixture(cfg.tune_queries + cfg.queries, cfg.dim, np.random.default_rng(cfg.seed + 1), cfg.seed)
    for name, arr in (("vectors", vectors), ("category", category), ("price", price),
                      ("q_tune", queries[:cfg.tune_queries]), ("q_eval", queries[cfg.tune_queries:])):
        np.save(work / f"{name}.npy", arr)
    for scen in SCENARIOS:
        allowed = allowed_ids(category, price, scen)
        for part in ("tune", "eval"):
            q = np.load(work / f"q_{part}.npy")
            np.save(work / f"truth_{scen}_{part}.npy", exact_topk(vectors, q, allowed))


def load(work: Path, name: str, mmap: bool = False) -> np.ndarray:  # mmap: file-backed pages, as served
    return np.load(work / f"{name}.npy", mmap_mode="r" if mmap else None)


def mem() -> dict[str, float]:
    """This process's RSS, its anonymous and file-backed parts and its peak (VmHWM), in MiB."""
    fields = (line.partition(":")[::2] for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(v.split()[0]) / 1024 for k, v in fields if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def dir_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def folder_build(work: Path, kind: str, cfg: Cfg) -> dict[str, Any]:
    """choose -> build -> tune -> write, as ``mmsearch index`` does for one channel."""
    vectors = load(work, "vectors")
    ids = np.arange(len(vectors), dtype=np.int64)
    m0 = mem()
    t0 = time.perf_counter()
    spec = annbuild.choose(len(vectors), vectors.shape[1], IndexCfg(index_type=kind, hnsw_m=cfg.hnsw_m))
    index = annbuild.build(spec, vectors, ids, seed=cfg.seed)
    t1 = time.perf_counter()
    spec = annbuild.tune(index, spec, vectors, ids, cfg.target, seed=cfg.seed)
    t2 = time.perf_counter()
    path = work / f"folder_{kind}.faiss"
    faiss.write_index(index, str(path))
    (work / f"folder_{kind}.json").write_text(json.dumps(spec.to_dict()))
    t3 = time.perf_counter()
    return {"factory": spec.factory, "insert_s": 0.0, "index_s": round(t1 - t0 + t3 - t2, 2),
            "tune_s": round(t2 - t1, 2), "tuned": spec.params, "tuned_recall_heldback": spec.recall_at_10,
            "build_peak_mib": round(mem()["VmHWM"] - m0["VmRSS"], 1), "disk_mib": round(dir_bytes(path) / 2**20, 1)}


class FolderSearcher:
    """One channel of the folder backend, searched the way SearchEngine._candidates searches it."""

    def __init__(self, work: Path, kind: str):
        self.spec = ann.IndexSpec.from_dict(json.loads((work / f"folder_{kind}.json").read_text()))
        self.index = ann.read(str(work / f"folder_{kind}.faiss"), self.spec)  # mmap from 256 MB, as served
        self.vectors = load(work, "vectors", mmap=True)  # stands in for the memory-mapped embeddings
        category, price = load(work, "category"), load(work, "price")
        self.allowed = {s: allowed_ids(category, price, s) for s in SCENARIOS}
        self.ranking = RankingCfg()
        self.selectors: dict[str, Any] = {}  # built once per filter, like the engine's filter cache
        self.param = "nprobe" if "nprobe" in self.spec.params else "efSearch"

    def ladder(self) -> list[int]:
        return ladder(faiss.extract_index_ivf(self.index).nlist if self.param == "nprobe" else 0)

    def exact(self, q: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        out = np.full((len(q), K), -1, np.int64)
        vecs = np.asarray(self.vectors[allowed], np.float32)
        for b in range(len(q)):
            top = np.argsort(-(vecs @ q[b]), kind="stable")[:K]
            out[b, :len(top)] = allowed[top]
        return out

    def how(self, scenario: str) -> str:
        allowed = self.allowed[scenario]
        if allowed is None:
            return "ann"
        if len(allowed) <= self.ranking.exact_filter_max:
            return f"exact scan of {len(allowed):,} matches"
        return "overfetch" if len(allowed) >= self.ranking.overfetch_from * self.index.ntotal else "selector"

    def effective(self, scenario: str, value: int) -> int:
        allowed = self.allowed[scenario]
        if allowed is None or self.how(scenario).startswith("exact"):
            return value
        return ann.boosted_params(self.index, {self.param: value}, len(allowed) / self.index.ntotal)[self.param]

    def search(self, q: np.ndarray, scenario: str, value: int) -> np.ndarray:
        params = {self.param: int(value)}
        allowed = self.allowed[scenario]
        if allowed is None:
            ann.set_params(self.index, params)
            return self.index.search(q, K)[1]
        strategy = self.how(scenario)
        if strategy.startswith("exact"):
            return self.exact(q, allowed)
        sel = None
        if strategy == "selector":
            sel = self.selectors.get(scenario) or self.selectors.setdefault(scenario, ann.id_selector(allowed))
        ids = ann.filtered_search(self.index, q, K, allowed, params, strategy, sel)
        short = (ids >= 0).sum(axis=1) < min(K, len(allowed))
        if short.any():  # the engine then scores every match exactly
            ids[short] = self.exact(q[short], allowed)
        return ids

    def close(self) -> None:
        del self.index


def _lite_imports() -> None:
    """Import what a Lite client and its in-process server load, so memory deltas leave out code (as faiss's)."""
    import milvus_lite.adapter.grpc.server  # noqa: F401
    import pyarrow  # noqa: F401
    import pymilvus  # noqa: F401


def _client(path: Path) -> Any:
    """pymilvus pings every 10 s; Lite's server answers a long call (1M rows' index build) with GOAWAY
    too_many_pings, and pymilvus then retries create_index ("index already exists"): ping hourly."""
    from pymilvus import MilvusClient

    return MilvusClient(str(path), grpc_options={"grpc.keepalive_time_ms": 3_600_000})


def _lite_release(path: Path) -> None:
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))


def lite_insert(work: Path, batch: int = 5000) -> dict[str, Any]:
    """Create the collection (no index yet: the bulk-load order) and insert every row, then flush and wait
    for Lite's background compaction, so the segment layout is final before an index is built."""
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import DataType, MilvusClient

    vectors, category, price = load(work, "vectors"), load(work, "category"), load(work, "price")
    path = work / "lite_base.db"
    shutil.rmtree(path, ignore_errors=True)
    _lite_imports()
    m0 = mem()
    t0 = time.perf_counter()
    client = _client(path)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    schema.add_field("category", DataType.INT64)
    schema.add_field("price", DataType.FLOAT)
    client.create_collection(COLLECTION, schema=schema)
    for s in range(0, len(vectors), batch):
        client.insert(COLLECTION, [{"id": i, "vec": vectors[i], "category": int(category[i]),
                                    "price": float(price[i])} for i in range(s, min(len(vectors), s + batch))])
    client.flush(COLLECTION)
    col = server_manager_instance._servers[os.path.abspath(path)][1].get_collection(COLLECTION)
    col._wait_for_bg()  # compaction runs in a background thread after each flush
    seconds = time.perf_counter() - t0
    segments = sum(len(files) for files in col._manifest.get_all_data_files().values())
    client.close()
    _lite_release(path)
    return {"insert_s": round(seconds, 2), "insert_peak_mib": round(mem()["VmHWM"] - m0["VmRSS"], 1),
            "segments": segments}


def lite_params(kind: str, n: int, cfg: Cfg) -> dict[str, int]:
    if kind == "hnsw":
        return {"M": cfg.hnsw_m, "efConstruction": 40}
    from milvus_lite.constants import MAX_SEGMENT_ROWS

    return {"nlist": annbuild.nlist_for(min(n, MAX_SEGMENT_ROWS))}  # cells per segment, sized as mmsearch sizes them


def lite_index(work: Path, kind: str, n: int, cfg: Cfg) -> dict[str, Any]:
    """A copy of the loaded collection, indexed: create_index + load (Lite builds one FAISS index per segment)."""
    path = work / f"lite_{kind}.db"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(work / "lite_base.db", path)
    _lite_imports()
    m0 = mem()
    t0 = time.perf_counter()
    client = _client(path)
    params = client.prepare_index_params()
    # nested: Lite 3.2 reads only "params" (pymilvus 3 sends nlist/M alone); sync=False: its wait RPC is missing
    params.add_index(field_name="vec", index_type=LITE_TYPES[kind], metric_type="IP",
                     params={"params": lite_params(kind, n, cfg)})
    client.create_index(COLLECTION, params, sync=False)
    client.load_collection(COLLECTION)
    seconds = time.perf_counter() - t0
    client.close()
    _lite_release(path)
    return {"factory": f"{LITE_TYPES[kind]} {lite_params(kind, n, cfg)}", "index_s": round(seconds, 2),
            "build_peak_mib": round(mem()["VmHWM"] - m0["VmRSS"], 1), "disk_mib": round(dir_bytes(path) / 2**20, 1)}


class LiteSearcher:
    """A Milvus Lite collection searched through pymilvus, as an application (or a Milvus backend) would."""

    def __init__(self, work: Path, kind: str):
        self.path = work / f"lite_{kind}.db"
        self.client = _client(self.path)
        self.client.load_collection(COLLECTION)
        self.param = "nprobe" if kind == "ivf" else "ef"
        n = len(load(work, "category"))
        self.nlist = lite_params(kind, n, Cfg())["nlist"] if kind == "ivf" else 0

    def ladder(self) -> list[int]:
        return ladder(self.nlist)

    def how(self, scenario: str) -> str:
        return "filter expression" if SCENARIOS[scenario] else "ann"

    def search(self, q: np.ndarray, scenario: str, value: int) -> np.ndarray:
        res = self.client.search(COLLECTION, data=[row for row in q], limit=K, filter=SCENARIOS[scenario],
                                 search_params={"metric_type": "IP", "params": {self.param: int(value)}},
                                 output_fields=["id"])
        out = np.full((len(q), K), -1, np.int64)
        for b, hits in enumerate(res):
            found = [int(h["id"]) for h in hits][:K]
            out[b, :len(found)] = found
        return out

    def close(self) -> None:
        self.client.close()
        _lite_release(self.path)


def ladder(nlist: int) -> list[int]:
    """nprobe values up to ``nlist`` for IVF; efSearch / ef values for HNSW (``nlist`` 0)."""
    return [v for v in NPROBE_LADDER if v < nlist] + [nlist] if nlist else EF_LADDER


def match_recall(searcher: Any, q: np.ndarray, truth: np.ndarray, scenario: str, target: float) -> tuple[int, float]:
    """The smallest ladder value whose Recall@10 on the tuning queries reaches ``target`` (else the last)."""
    value, r = 0, 0.0
    for value in searcher.ladder():
        r = annbuild.recall_at_k(searcher.search(q, scenario, value), truth)
        if r >= target or searcher.how(scenario).startswith("exact"):
            break
    return value, r


def time_single(searcher: Any, q: np.ndarray, scenario: str, value: int, cfg: Cfg) -> dict[str, Any]:
    """One query at a time (k=10), until ``cfg.time_budget`` is spent (at least ``cfg.min_timed`` queries)."""
    for b in range(min(3, len(q))):  # warm-up: lazy loads, caches, first-call costs
        searcher.search(q[b:b + 1], scenario, value)
    lat = []
    start = time.perf_counter()
    for b in range(len(q)):
        t = time.perf_counter()
        searcher.search(q[b:b + 1], scenario, value)
        lat.append(time.perf_counter() - t)
        if len(lat) >= cfg.min_timed and time.perf_counter() - start > cfg.time_budget:
            break
    ms = np.array(lat) * 1000
    return {"timed": len(lat), "qps": round(len(lat) / (time.perf_counter() - start), 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def serve(backend: str, work: Path, kind: str, cfg: Cfg) -> dict[str, Any]:
    """Open the index in this (fresh) process, match recall per filter, time single queries; memory."""
    q_tune, q_eval = load(work, "q_tune"), load(work, "q_eval")
    truths = {(s, p): load(work, f"truth_{s}_{p}") for s in SCENARIOS for p in ("tune", "eval")}
    if backend == "lite":
        _lite_imports()
    m0 = mem()
    t0 = time.perf_counter()
    searcher = FolderSearcher(work, kind) if backend == "folder" else LiteSearcher(work, kind)
    open_s = time.perf_counter() - t0
    m_open = mem()
    cells = []
    for scen in SCENARIOS:
        value, r_tune = match_recall(searcher, q_tune, truths[scen, "tune"], scen, cfg.target)
        r_eval = annbuild.recall_at_k(searcher.search(q_eval, scen, value), truths[scen, "eval"])
        how = searcher.how(scen)
        eff = searcher.effective(scen, value) if isinstance(searcher, FolderSearcher) else value
        param = "-" if how.startswith("exact") else f"{searcher.param} {value}" + (f" ({eff})" if eff != value else "")
        cells.append({"scenario": scen, "param": param, "path": how, "recall_tune": round(r_tune, 3),
                      "recall": round(r_eval, 3), **time_single(searcher, q_eval, scen, value, cfg)})
    m_end = mem()
    searcher.close()
    return {"open_s": round(open_s, 2), "rss_open_mib": round(m_open["VmRSS"] - m0["VmRSS"], 1),
            "rss_served_mib": round(m_end["VmRSS"] - m0["VmRSS"], 1),
            "rss_served_file_mib": round(m_end["RssFile"] - m0["RssFile"], 1), "cells": cells}


def isolated(fn: Callable[..., dict[str, Any]], *args: Any, threads: int | None = None) -> dict[str, Any]:
    """``fn(*args)`` in a fresh spawned process: its own RSS, and its own FAISS thread count (read at load)."""
    os.environ["OMP_NUM_THREADS"] = str(threads or os.cpu_count())  # this process's OpenMP has read it already
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run_size(n: int, cfg: Cfg, root: Path, hnsw_max: int, kinds: list[str]) -> list[dict[str, Any]]:
    work = root / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    make_data(work, n, cfg)
    print(f"[{n:,}] data + exact answers: {time.perf_counter() - t:.1f}s")
    rows = []
    todo = [k for k in kinds if k != "hnsw" or n <= hnsw_max]
    for kind in todo:
        build = isolated(folder_build, work, kind, cfg)
        print(f"[{n:,}] folder {kind} built: {build}")
        rows.append({"n": n, "backend": "folder (FAISS)", "kind": kind, **build,
                     **isolated(serve, "folder", work, kind, cfg, threads=1)})
        print(f"[{n:,}] folder {kind} served")
        (work / f"folder_{kind}.faiss").unlink()
    ins = isolated(lite_insert, work)
    print(f"[{n:,}] Milvus Lite insert: {ins}")
    for kind in todo:
        build = isolated(lite_index, work, kind, n, cfg)
        print(f"[{n:,}] Milvus Lite {kind} indexed: {build}")
        rows.append({"n": n, "backend": "Milvus Lite", "kind": kind, **ins, **build,
                     **isolated(serve, "lite", work, kind, cfg, threads=1)})
        print(f"[{n:,}] Milvus Lite {kind} served")
        shutil.rmtree(work / f"lite_{kind}.db", ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def _loadavg() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Folder backend (FAISS) vs Milvus Lite (benchmarks/bench_milvus.py)", "", "Command:", "", "```",
             res["command"], "```", "",
             f"Machine: {m['cpus']} CPU cores ({m['machine']}), load average {m['load_before']} before and "
             f"{m['load_after']} after; faiss {m['faiss']}, pymilvus {m['pymilvus']}, milvus-lite "
             f"{m['milvus_lite']}; {res['total_s']:.0f} s in all. Settings: {json.dumps(res['cfg'])}.", "",
             "## Build and memory", "",
             "| rows | backend | index | insert s | index s | build total s | (+ tune s) | segments | build peak "
             "MiB | open s | RSS MiB after open / after the queries (of it file-backed) | on disk MiB |",
             "|---" * 12 + "|"]
    for r in res["rows"]:
        lines.append(f"| {r['n']:,} | {r['backend']} | `{r['factory']}` | {r.get('insert_s') or '-'} | {r['index_s']} | "
                     f"{r.get('insert_s', 0) + r['index_s']:.1f} | {r.get('tune_s', '-')} | {r.get('segments', 1)} | "
                     f"{max(r['build_peak_mib'], r.get('insert_peak_mib', 0))} | {r['open_s']} | {r['rss_open_mib']} / "
                     f"{r['rss_served_mib']} ({r['rss_served_file_mib']}) | {r['disk_mib']} |")
    lines += ["", "## Single queries at matched Recall@10 (k=10, one FAISS thread)", "",
              "| rows | filter | backend | index | param (after the filter boost) | how | Recall@10 tune / eval | QPS "
              "| p50 ms | p99 ms | timed |", "|---" * 11 + "|"]
    for scen in SCENARIOS:
        for r in res["rows"]:
            c = next(c for c in r["cells"] if c["scenario"] == scen)
            lines.append(f"| {r['n']:,} | {SCENARIOS[scen] or 'none'} | {r['backend']} | {r['kind']} | "
                         f"{c['param']} | {c['path']} | {c['recall_tune']} / {c['recall']} | {c['qps']} | "
                         f"{c['p50_ms']} | {c['p99_ms']} | {c['timed']} |")
    for note in res["skipped"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    ap.add_argument("--quick", action="store_true", help="10k rows, few queries: a smoke run")
    ap.add_argument("--kinds", default="ivf,hnsw", help="index kinds on both sides: ivf, hnsw")
    ap.add_argument("--hnsw-max", type=int, default=10**9, help="skip HNSW above this many rows (build time)")
    ap.add_argument("--queries", type=int, default=Cfg.queries)
    ap.add_argument("--target", type=float, default=Cfg.target, help="Recall@10 every index is matched to")
    ap.add_argument("--time-budget", type=float, default=Cfg.time_budget, help="seconds of timing per cell")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="raw results (JSON)")
    ap.add_argument("--md", default=None, help="tables as Markdown")
    a = ap.parse_args(argv)
    cfg = Cfg(queries=a.queries, target=a.target, time_budget=a.time_budget)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    if a.quick:
        sizes, cfg.queries, cfg.tune_queries, cfg.time_budget = [10_000], 50, 50, 2.0
    t0 = time.perf_counter()
    load_before = _loadavg()
    res: dict[str, Any] = {"command": "python " + " ".join([f"benchmarks/{Path(__file__).name}"] + sys.argv[1:]),
                           "cfg": asdict(cfg), "rows": [], "skipped": []}
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        for n in sizes:
            res["rows"] += run_size(n, cfg, Path(tmp), a.hnsw_max, kinds)
            if "hnsw" in kinds and n > a.hnsw_max:
                res["skipped"].append(f"HNSW at {n:,} rows was not run (--hnsw-max {a.hnsw_max:,}): see the notes.")
            if a.out:  # after every size: a late failure keeps what was measured
                Path(a.out).write_text(json.dumps(res, indent=1))
    res["total_s"] = time.perf_counter() - t0
    res["machine"] = {"cpus": os.cpu_count(), "machine": platform.machine(), "load_before": load_before,
                      "load_after": _loadavg(), "faiss": faiss.__version__,
                      "pymilvus": version("pymilvus"), "milvus_lite": version("milvus-lite")}
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    md = to_markdown(res)
    if a.md:
        Path(a.md).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
