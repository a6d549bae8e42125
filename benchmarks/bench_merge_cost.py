"""Per-vector cost of rank 0's serial merge at scale: FAISS IVF training and adding, one thread.

The distributed index job's serial part is rank 0 building the ANN index from every rank's vectors
(mmsearch/dist/runner.py -> index.writer.commit -> index.ann.build). This measures, on random unit vectors (cost
does not depend on the values), the time to train the coarse quantizer (+ PQ) on a sample and to add
vectors, for the index types a 100M catalog would use, so the README's scaling plan can do its
arithmetic from measured numbers:

    nice -n 10 python benchmarks/bench_merge_cost.py --n 100000 --dim 384

Writes benchmarks/results/merge_cost.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="vectors added")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--factories", default="IVF1024,Flat;IVF4096,Flat;IVF4096,PQ48;IVF4096_HNSW32,PQ48")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "merge_cost")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    train, data = unit(rng, args.train, args.dim), unit(rng, args.n, args.dim)
    rows = []
    for factory in args.factories.split(";"):
        index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        index.train(train)
        t1 = time.perf_counter()
        index.add_with_ids(data, np.arange(args.n, dtype=np.int64))
        t2 = time.perf_counter()
        size = faiss.serialize_index(index).nbytes
        rows.append({"factory": factory, "train_s": round(t1 - t0, 2), "add_us_per_vector": round((t2 - t1) / args.n * 1e6, 1),
                     "index_bytes_per_vector": round(size / args.n, 1)})
        print(rows[-1], flush=True)
    cmd = " ".join(["nice -n 10 python benchmarks/bench_merge_cost.py"] + sys.argv[1:])
    meta = {"command": cmd, "n": args.n, "dim": args.dim, "train_sample": args.train, "threads": 1,
            "load_average_at_end": os.getloadavg()}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Rank-0 merge cost per vector (FAISS, 1 thread)", "", f"`{cmd}`", "",
             f"{args.n} random unit vectors of {args.dim} dims added after training on {args.train}; "
             f"2-core machine shared with other jobs.", "",
             "| factory | train s | add µs / vector | index bytes / vector |", "|---|---|---|---|"]
    lines += [f"| {r['factory']} | {r['train_s']} | {r['add_us_per_vector']} | {r['index_bytes_per_vector']} |"
              for r in rows]
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
