"""Photo + text queries: the two towers at once (two threads) or one after the other, side by side.

    python benchmarks/bench_towers.py                 # results/query_towers.{md,json}
    python benchmarks/bench_towers.py --queries 100 --sizes 10000 100000

Runs the real ``SearchEngine.search`` on bench_query.py's synthetic clustered indexes (built there first and
cached in ``--cache``), with real photos and texts. Every round runs, for each size: a photo query, a text
query, a photo + text query with ``MMSEARCH_QUERY_CONCURRENT=1`` and one with ``0`` (same photo, same text),
so every variant sees the same machine load; ratios are taken inside the run. This is what chose the
``auto`` setting of ``mmsearch.search.runtime.concurrent_towers``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

VARIANTS = ("photo", "text", "photo+text at once", "photo+text in turn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MMSEARCH_BENCH_CACHE", "/tmp/mmsearch_bench")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "query_towers")
    args = ap.parse_args()

    from bench_encode import input_set
    from bench_query import TEXTS, synthetic_index

    from mmsearch.search.engine import SearchEngine

    photos = input_set(8, args.cache)
    missing = [n for n in args.sizes if not (args.cache / f"qindex_clustered_{n}" / "CURRENT").exists()]
    if missing:
        from mmsearch.models.factory import create_model

        model, _, _ = create_model("default", device="cpu")
        for n in missing:
            synthetic_index(args.cache / f"qindex_clustered_{n}", model, n)
        del model
    engines = {n: SearchEngine.open(args.cache / f"qindex_clustered_{n}", device="cpu", verify=False)
               for n in args.sizes}
    lat: dict[tuple[int, str], list[float]] = {}
    load0 = os.getloadavg()
    for q in range(args.queries + 3):
        for n, engine in engines.items():
            for variant in VARIANTS:
                os.environ["MMSEARCH_QUERY_CONCURRENT"] = "0" if variant.endswith("in turn") else "1"
                kw = {"image": photos[q % len(photos)] if variant != "text" else None,
                      "text": TEXTS[q % len(TEXTS)] if variant != "photo" else None}
                t0 = time.perf_counter()
                engine.search(k=10, **kw)
                if q >= 3:  # the first rounds warm caches up
                    lat.setdefault((n, variant), []).append((time.perf_counter() - t0) * 1e3)
    load1 = os.getloadavg()
    os.environ.pop("MMSEARCH_QUERY_CONCURRENT", None)
    rows = [{"items": n, "query": v, "p50_ms": round(statistics.median(x), 2),
             "p99_ms": round(float(np.percentile(x, 99)), 2)} for (n, v), x in sorted(lat.items())]
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
           "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "loadavg_start": load0, "loadavg_end": load1, "queries": args.queries,
           "command": " ".join(["python", "benchmarks/bench_towers.py"] + sys.argv[1:]), "rows": rows}
    p50 = {(r["items"], r["query"]): r["p50_ms"] for r in rows}
    lines = [f"# Photo + text: towers at once or in turn ({res['usable_cpus']} usable CPUs)", "",
             f"Command: `{res['command']}`  ",
             f"Date: {res['date']}, load average {list(load0)} at start, {list(load1)} at end; "
             f"{args.queries} queries per variant, interleaved (ratios from the same rounds)", "",
             "| items | query | p50 ms | p99 ms | p99/p50 | p50 / photo p50 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['items']} | {r['query']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['p99_ms'] / r['p50_ms']:.2f} | {r['p50_ms'] / p50[(r['items'], 'photo')]:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
