"""Query latency per stage, and how it grows with the catalog: the real ``SearchEngine.search``.

    python benchmarks/bench_query.py                       # 10k and 100k items, 30 queries per kind
    python benchmarks/bench_query.py --sizes 10000 100000 1000000 --queries 50 --tag after

Indexes are written through the real commit path (``mmsearch.index.writer.commit``, index type chosen by
``auto``) with synthetic *clustered* unit vectors in every channel the default model has (uniform random
vectors in 384-1280 d have no neighbourhood structure at all, so an ANN index tuned to Recall@10 0.95
on them must scan most of the catalog; real embeddings are clustered). Items carry metadata
``category`` (10 values) and ``price`` (0..99) for the ``--where`` runs. Queries are real photos and
texts through the real model.

All sizes are opened at once and the queries are interleaved across them (size A, size B, size A, ...)
so ratios are taken under the same machine load. Per stage, the time spent in each engine step is
recorded by wrapping the engine's methods: decode (``_load_query_image``), image encode (the model's
image tower), preprocess (the rest of ``encode_image_channels``), tokenize, text encode, each FAISS
search (``_candidates`` per channel), re-scoring (``score``), store look-ups (``store.rows``), and the
rest (fusion, top-k, result assembly). ``--profile`` adds the cProfile top functions per configuration.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("MMSEARCH_SRC", str(ROOT)))  # MMSEARCH_SRC: another checkout (a "before")

TEXTS = [f"a photo of a {w}" for w in ("red shoe", "banana", "laptop", "bicycle", "guitar", "dress",
                                       "teddy bear", "sports car", "handbag", "umbrella")]
WHERE = ["price<30"]  # 30% of the items: FAISS searches with a filter (above exact_filter_max)


def clustered(rng: np.random.Generator, n: int, d: int, centers: int = 1000, spread: float = 0.6) -> np.ndarray:
    """(n, d) unit vectors around ``centers`` random directions (cosine to the centre ~0.8), float16 as the
    index stores them (halves the memory of a 1M-item build)."""
    c = rng.standard_normal((centers, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, d), np.float16)
    for s in range(0, n, 50_000):
        m = min(n, s + 50_000) - s
        v = c[rng.integers(0, centers, m)] + spread / np.sqrt(d) * rng.standard_normal((m, d), dtype=np.float32)
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def synthetic_index(out: Path, model, n: int, source: Callable[[int, dict[str, int]], tuple[dict, list]] | None = None,
                    ) -> Path:
    """An ``n``-item index through the real commit path. ``source(n, dims)`` -> ({channel: (n, d) unit
    vectors}, titles): the vectors (default: ``clustered``, titles ``item i``; see real_vectors.grow)."""
    from mmsearch.index.options import IndexCfg
    from mmsearch.index.writer import Change, base_manifest, channel_dims, commit

    if (out / "CURRENT").exists():
        return out
    rng = np.random.default_rng(n)
    dims = channel_dims(model)
    if source is None:
        vecs, titles = {name: clustered(rng, n, d) for name, d in dims.items()}, [f"item {i}" for i in range(n)]
    else:
        vecs, titles = source(n, dims)
    changes = [Change(row={"fid": i, "id": f"item{i}.jpg", "path": f"item{i}.jpg", "title": titles[i], "text": "",
                           "metadata": {"category": f"c{i % 10}", "price": i % 100},
                           "image_sha256": f"{i:064x}", "text_sha256": None},
                      vectors={name: v[i] for name, v in vecs.items()}) for i in range(n)]
    t0 = time.perf_counter()
    commit(out, None, base_manifest(model, model.cfg.name, "synthetic", None), changes, [], IndexCfg(), dims)
    print(f"  built {n} items in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


class StageTimer:
    """Wraps an engine's methods to add up the seconds spent in each stage of one query."""

    def __init__(self, engine):
        self.t: dict[str, float] = defaultdict(float)
        self.engine = engine
        enc = engine.encoder.open()
        self._wrap(enc, "_load_query_image", "decode")
        self._wrap(engine.retriever, "score", "rescore")
        self._wrap(engine.backend, "rows", "store")
        model = getattr(engine, "model", None)
        if model is not None and type(model).__name__ != "LazyModel" and hasattr(model, "encode_image_channels"):
            self._wrap(model, "encode_image_channels", "image_encode")
            self._wrap(model, "encode_text", "text_encode")
        tok = getattr(engine, "tokenizer", None)
        if tok is not None and callable(tok):  # the lean path's tokenizer is called inside the text stage
            enc.tokenizer = self._timed(tok, "tokenize")
        ort = enc.ort
        if ort is not None:  # onnxruntime towers (models/onnx.py)
            self._wrap(ort, "image_channels", "image_encode")
            self._wrap(ort, "text", "text_encode")
        orig = engine.backend.search

        def cand(channel, *a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(channel, *a, **kw)
            finally:
                self.t[f"faiss_{channel}"] += time.perf_counter() - t0
        engine.backend.search = cand
        for name in ("encode_image_channels", "encode_texts"):
            self._wrap(engine, name, f"_{name}")

    def _timed(self, fn, stage):
        def wrapped(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t[stage] += time.perf_counter() - t0
        return wrapped

    def _wrap(self, obj, attr, stage):
        if hasattr(obj, attr):
            setattr(obj, attr, self._timed(getattr(obj, attr), stage))

    def take(self, total: float) -> dict[str, float]:
        t = dict(self.t)
        self.t.clear()
        out = {k: v for k, v in t.items() if not k.startswith("_")}
        img = t.get("_encode_image_channels", 0.0)
        if img:
            out["preprocess"] = img - t.get("decode", 0.0) - t.get("image_encode", 0.0)
        txt = t.get("_encode_texts", 0.0)
        if txt and "text_encode" not in t and "tokenize" not in t:
            out["text_encode"] = txt
        out["other"] = total - sum(out.values()) - (0.0 if "preprocess" in out else 0.0)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MMSEARCH_BENCH_CACHE", "/tmp/mmsearch_bench")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--tag", default="before")
    ap.add_argument("--engine-kw", default="{}", help="JSON keyword arguments for SearchEngine.open")
    ap.add_argument("--runtimes", nargs="+", default=[None],
                    help="query encoder runtimes to run side by side (onnx torch); default: the engine's own")
    ap.add_argument("--no-where", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the largest size, top functions per kind")
    ap.add_argument("--vectors", nargs="+", default=["synthetic"], choices=["synthetic", "real"],
                    help="index vectors: synthetic clustered, and/or real embeddings grown by noise "
                         "(real_vectors.py); with real, the queries are real held-out photos and texts")
    ap.add_argument("--semantic-text", action="store_true",
                    help="add a kind 'text semantic': text queries with mode='semantic' (no keyword side)")
    ap.add_argument("--real-limit", type=int, default=None, help="encode only this many of the real photos")
    args = ap.parse_args()

    from mmsearch.models.factory import create_model
    from mmsearch.search.engine import SearchEngine

    sys.path.insert(1, str(ROOT / "benchmarks"))
    from bench_encode import input_set  # the deterministic photo-sized JPEGs

    photos, texts, real = input_set(8, args.cache), TEXTS, {}
    if "real" in args.vectors:
        from real_vectors import encode_corpus, grow

        vecs, titles, meta = encode_corpus(args.cache, args.real_limit)
        rng = np.random.default_rng(0)
        photos = [str(p) for p in rng.permutation(meta["query_photos"])]
        texts = [str(t) for t in rng.permutation(sorted(set(meta["query_texts"])))]
        real = {"photos_encoded": meta["n_photos"], "photos_per_s": meta["photos_per_s"],
                "items": len(titles), "query_photos": len(photos), "query_texts": len(texts)}

        def source(n: int, dims: dict[str, int]) -> tuple[dict, list]:
            g, real["copy_cosine"] = grow(vecs, n)
            return g, [titles[i % len(titles)] for i in range(n)]
    model, _, _ = create_model("default", device="cpu")
    paths = {(v, n): synthetic_index(args.cache / (f"qindex_clustered_{n}" if v == "synthetic" else
                                                   f"qindex_real_{n}_{args.real_limit or 'all'}"),
                                     model, n, None if v == "synthetic" else source)
             for v in args.vectors for n in args.sizes}
    del model
    engines, timers = {}, {}
    for rt in args.runtimes:
        for (v, n), p in paths.items():
            t0 = time.perf_counter()
            kw = {**json.loads(args.engine_kw), **({"runtime": rt} if rt else {})}
            key = (v, n, rt)
            engines[key] = SearchEngine.open(p, device="cpu", verify=False, **kw)
            timers[key] = StageTimer(engines[key])
            print(f"  opened {v} {n} {rt or ''}: {time.perf_counter() - t0:.2f} s, "
                  f"{ {c: ch.spec.factory + ' ' + str(ch.spec.params) for c, ch in engines[key].channels.items()} }")
    kinds = ["text"] + (["text semantic"] if args.semantic_text else []) + ["photo", "photo+text"]
    wheres = [None] if args.no_where else [None] + WHERE
    lat: dict[tuple, list[float]] = defaultdict(list)
    stages: dict[tuple, list[dict]] = defaultdict(list)
    load0 = os.getloadavg()
    for where in wheres:
        for kind in kinds:
            for q in range(args.queries + 2):
                kw = {"text": texts[q % len(texts)] if "text" in kind else None,
                      "image": photos[q % len(photos)] if "photo" in kind else None, "where": where,
                      **({"mode": "semantic"} if kind == "text semantic" else {})}
                for key, engine in engines.items():  # interleaved: every size and runtime sees the same load
                    t0 = time.perf_counter()
                    engine.search(k=10, **kw)
                    total = time.perf_counter() - t0
                    st = timers[key].take(total)
                    if q >= 2:  # the first two warm caches up
                        lat[(*key, kind, where)].append(total * 1e3)
                        stages[(*key, kind, where)].append(st)
    load1 = os.getloadavg()
    rows = []
    for (vs, n, rt, kind, where), v in lat.items():
        v = sorted(v)
        sts = stages[(vs, n, rt, kind, where)]
        names = sorted({s for d in sts for s in d})
        med = {s: round(statistics.median([d.get(s, 0.0) for d in sts]) * 1e3, 2) for s in names}
        rows.append({"vectors": vs, "items": n, "runtime": rt or "", "query": kind, "where": where, "n": len(v),
                     "p50_ms": round(statistics.median(v), 2),
                     "p99_ms": round(float(np.percentile(v, 99)), 2), "stages_p50_ms": med})
        print(f"  {vs:<9} {n:>8} {rt or '':<6} {kind:<11} {where or '':<9} p50 {rows[-1]['p50_ms']:8.2f}  p99 {rows[-1]['p99_ms']:8.2f}  {med}",
              flush=True)
    prof = {}
    if args.profile:
        n = max(args.sizes)
        for kind in kinds:
            pr = cProfile.Profile()
            pr.enable()
            for q in range(10):
                engines[(args.vectors[-1], n, args.runtimes[0])].search(
                    k=10, text=texts[q % len(texts)] if "text" in kind else None,
                    image=photos[q % len(photos)] if "photo" in kind else None)
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(15)
            prof[kind] = s.getvalue()
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "tag": args.tag,
           "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": load1, "queries": args.queries,
           "engine_kw": args.engine_kw, "command": " ".join(["python", "benchmarks/bench_query.py"] + sys.argv[1:]),
           "channels": {f"{vs} {n} {rt or ''}": {c: {"factory": ch.spec.factory, "params": ch.spec.params,
                                                    "recall": ch.spec.recall_at_10} for c, ch in e.channels.items()}
                        for (vs, n, rt), e in engines.items()},
           "real": real, "rows": rows}
    write(res, prof, args.out / f"query_{args.tag}")


def write(res: dict, prof: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    sizes = sorted({r["items"] for r in res["rows"]})
    lines = [f"# Query latency per stage ({res['tag']})", "",
             f"Command: `{res['command']}`  ", f"Date: {res['date']}, {res['cpus']} CPUs, load average "
             f"{[round(x, 1) for x in res['loadavg_start']]} at start, {[round(x, 1) for x in res['loadavg_end']]} "
             f"at end (a shared machine: absolute times move 3-4x with load; the sizes ran interleaved, so "
             f"compare ratios)  ", f"Engine options: {res['engine_kw']}", ""]
    if res.get("real"):
        r = res["real"]
        lines += [f"Real vectors: {r['photos_encoded']} photos encoded by the default model through build_index on "
                  f"CPU ({r['photos_per_s']} photos/s) + the sample catalog = {r['items']} real items; larger sizes "
                  f"are NOT real: copies of the real vectors plus Gaussian noise, renormalised, with cos(copy, "
                  f"source) = the median real nearest-neighbour cosine per channel {r.get('copy_cosine')} "
                  f"(benchmarks/real_vectors.py). Queries: {r['query_photos']} real photos and {r['query_texts']} "
                  f"real texts not in the index. Items are titled with their source's label words or COCO caption (few "
                  f"distinct titles, so the keyword side of a text query matches many items). Recall@10 below is "
                  f"what `auto` tuning measured at build on held-back index vectors.", ""]
    lines += ["Channels (type, tuned parameter, Recall@10 measured at build): " +
              "; ".join(f"{n}: " + ", ".join(f"{c} {v['factory']} {v['params']} R@10 {v['recall']}" for c, v in ch.items())
                        for n, ch in res["channels"].items()), "",
              "| vectors | items | runtime | query | where | p50 ms | p99 ms | p99/p50 | stages (median ms) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        st = ", ".join(f"{k} {v}" for k, v in sorted(r["stages_p50_ms"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {r.get('vectors', 'synthetic')} | {r['items']} | {r['runtime']} | {r['query']} | {r['where'] or ''} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['p99_ms'] / max(r['p50_ms'], 1e-9):.2f} | {st} |")
    by = {(r.get("vectors", "synthetic"), r["items"], r["runtime"], r["query"], r["where"]): r for r in res["rows"]}
    if len(sizes) > 1:
        lines += ["", "## Growth (p50 ratio between sizes, same run)", "", "| vectors | runtime | query | where | " +
                  " | ".join(f"{b} / {a}" for a, b in zip(sizes, sizes[1:])) + " |", "|---|---|---|---|" + "---|" * (len(sizes) - 1)]
        for (vs, n, rt, q, w), r in by.items():
            if n == sizes[0]:
                ratios = [by[(vs, b, rt, q, w)]["p50_ms"] / by[(vs, a, rt, q, w)]["p50_ms"] for a, b in zip(sizes, sizes[1:])]
                lines.append(f"| {vs} | {rt} | {q} | {w or ''} | " + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
    vss = sorted({k[0] for k in by})
    if len(vss) > 1:
        lines += ["", f"## Vectors side by side (p50 {vss[0]} / p50 {vss[1]}, same run)", "",
                  "| items | runtime | query | where | ratio |", "|---|---|---|---|---|"]
        for (vs, n, rt, q, w), r in by.items():
            if vs == vss[0]:
                lines.append(f"| {n} | {rt} | {q} | {w or ''} | {r['p50_ms'] / by[(vss[1], n, rt, q, w)]['p50_ms']:.2f}x |")
    lines += ["", "## Photo + text against photo (p50 ratio)", "", "| vectors | items | runtime | where | ratio |",
              "|---|---|---|---|---|"]
    for (vs, n, rt, q, w), r in by.items():
        if q == "photo+text":
            lines.append(f"| {vs} | {n} | {rt} | {w or ''} | {r['p50_ms'] / by[(vs, n, rt, 'photo', w)]['p50_ms']:.2f}x |")
    rts = sorted({r["runtime"] for r in res["rows"]})
    if len(rts) > 1:
        lines += ["", f"## Runtimes side by side (p50 {rts[0]} / p50 {rts[1]})", "", "| vectors | items | query | where | ratio |",
                  "|---|---|---|---|---|"]
        for (vs, n, rt, q, w), r in by.items():
            if rt == rts[0]:
                lines.append(f"| {vs} | {n} | {q} | {w or ''} | {r['p50_ms'] / by[(vs, n, rts[1], q, w)]['p50_ms']:.2f}x |")
    for kind, text in prof.items():
        lines += ["", f"## cProfile, {kind}, {max(sizes)} items, 10 queries (top by own time)", "", "```",
                  text.strip(), "```"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md", flush=True)


if __name__ == "__main__":
    main()
