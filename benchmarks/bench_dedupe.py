"""Duplicate grouping at scale: the all-pairs range search (before issue 23) vs ``group_duplicates``.

A synthetic index-shaped input: N byte-identical placeholders (one content hash, one vector), M
near-identical re-encodes of them (own hashes, vectors at cosine ~0.9995) and R unrelated images; 384-d
unit vectors, threshold 0.92, each method in its own process (peak RSS from ``ru_maxrss``).

    python benchmarks/bench_dedupe.py --out benchmarks/results/dedupe
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def data(n_same: int, n_near: int, n_other: int, d: int = 384) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(d).astype(np.float32)
    v /= np.linalg.norm(v)
    near = v + 0.001 * rng.standard_normal((n_near, d)).astype(np.float32)
    other = rng.standard_normal((n_other, d)).astype(np.float32)
    x = np.vstack([np.tile(v, (n_same, 1)), near, other])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return ["same"] * n_same + [f"n{i}" for i in range(n_near + n_other)], np.ascontiguousarray(x)


def all_pairs(x: np.ndarray, threshold: float) -> int:
    """The pre-#23 method: range search of every row, union-find over every pair at or above the threshold."""
    import faiss

    parent = list(range(len(x)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    for start in range(0, len(x), 4096):
        lims, _, nbrs = index.range_search(x[start:start + 4096], threshold - 1e-6)
        for q in range(len(lims) - 1):
            for j in nbrs[lims[q]:lims[q + 1]]:
                a, b = root(start + q), root(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return len({root(i) for i in range(len(x))})


def one(method: str, n_same: int, n_near: int, n_other: int) -> dict:
    from mmsearch.search.tools import group_duplicates

    hashes, x = data(n_same, n_near, n_other)
    t0 = time.perf_counter()
    if method == "all_pairs":
        groups = all_pairs(x, 0.92) - n_other  # components minus the unrelated singletons
    else:
        groups = len(group_duplicates(hashes, x, 0.92))
    return {"method": method, "seconds": round(time.perf_counter() - t0, 2), "groups": groups,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2000,10000", help="placeholder group sizes")
    ap.add_argument("--near", type=int, default=1000)
    ap.add_argument("--other", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], *map(int, a.one[1:]))))
        return
    rows = []
    for n in map(int, a.sizes.split(",")):
        for method in ("all_pairs", "group_duplicates"):
            res = subprocess.run([sys.executable, __file__, "--one", method, str(n), str(a.near), str(a.other)],
                                 capture_output=True, text=True, check=True)
            row = {"placeholders": n, "near": a.near, "other": a.other, **json.loads(res.stdout)}
            print(row, flush=True)
            rows.append(row)
    if a.out:
        a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        lines = ["# Duplicate grouping: all pairs vs k-NN links over hash representatives", "",
                 f"Command: `python benchmarks/bench_dedupe.py --sizes {a.sizes} --near {a.near} --other {a.other} "
                 f"--out {a.out}`", "",
                 "| placeholders | near | other | method | seconds | groups | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['placeholders']} | {r['near']} | {r['other']} | {r['method']} | {r['seconds']} | {r['groups']} | "
                  f"{r['peak_rss_mb']} |" for r in rows]
        a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
